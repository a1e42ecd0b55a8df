"""What Verda would refuse is refused before the deploy writes anything to the operator's account."""

from __future__ import annotations

import pytest

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

from ..conftest import edited_spec

NAME = "comfyui-worker-serverless"


def writes(fake: FakeVerda) -> list[str]:
    return [f"{request.method} {request.path}" for request in fake.requests
            if request.method in ("POST", "PATCH", "DELETE") and request.path != "/oauth2/token"]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("VERDA_COMPUTE", "H10", "VERDA_COMPUTE: Verda offers no compute 'H10'; the names it offers: A100, "
                                 "General Compute, H100, H200, L40S"),
        ("VERDA_COMPUTE_SIZE", "2", "VERDA_COMPUTE_SIZE: Verda offers H100 with 1 GPUs per replica, not 2"),
    ],
)
async def test_a_compute_verda_does_not_offer_is_refused_naming_the_variable_before_any_write(
    fake: FakeVerda, deploy_env, variable: str, value: str, message: str, capsys
) -> None:
    """Before: VERDA_COMPUTE=H10 created the secret (1 write), then Verda refused the create 400, exit 1. Now:
    refused from GET /serverless-compute-resources, 0 writes."""
    assert await deploy_main([], {**deploy_env, variable: value}) == 1
    assert message in capsys.readouterr().err
    assert writes(fake) == []
    assert fake.secrets == {} and fake.deployments == {}


async def test_a_compute_from_the_spec_is_refused_naming_its_field(fake: FakeVerda, deploy_env, tmp_path, capsys):
    spec = edited_spec(tmp_path, 'name = "H100"', 'name = "H100 SXM5"')
    assert await deploy_main(["--spec", str(spec)], deploy_env) == 1
    assert "compute.name: Verda offers no compute 'H100 SXM5'" in capsys.readouterr().err
    assert writes(fake) == []


async def test_a_change_of_compute_to_one_verda_does_not_offer_writes_nothing(fake: FakeVerda, deploy_env, capsys):
    assert await deploy_main([], deploy_env) == 0
    fake.requests.clear()
    assert await deploy_main([], {**deploy_env, "VERDA_COMPUTE": "H10"}) == 1
    assert "VERDA_COMPUTE: Verda offers no compute 'H10'" in capsys.readouterr().err
    assert writes(fake) == []
    assert fake.deployments[NAME].body["compute"] == {"name": "H100", "size": 1}


async def test_a_deployment_on_a_compute_verda_no_longer_lists_is_still_updated(fake: FakeVerda, deploy_env, capsys):
    """The check is of a compute the deploy would send: one left as it is goes unchecked."""
    assert await deploy_main([], deploy_env) == 0
    fake.deployments[NAME].body["compute"] = {"name": "H100-retired", "size": 1}
    image = "ghcr.io/acme/comfyui-worker-serverless:0.2.0"
    spec_env = {**deploy_env, "VERDA_COMPUTE": "H100-retired", "VERDA_IMAGE": image}
    assert await deploy_main([], spec_env) == 0, capsys.readouterr().err
    assert fake.deployments[NAME].body["containers"][0]["image"] == image


@pytest.mark.parametrize("answer", [{"name": "H100"}, [{"name": "H100", "size": "1"}], [{"size": 1}]])
async def test_a_compute_list_of_the_wrong_shape_exits_1_naming_the_call_before_any_write(
    fake: FakeVerda, deploy_env, answer, capsys
) -> None:
    fake.fail_next("/serverless-compute-resources", 200, method="GET", body=answer)
    assert await deploy_main([], deploy_env) == 1
    assert "GET /serverless-compute-resources: expected" in capsys.readouterr().err
    assert writes(fake) == []


async def test_secrets_with_no_value_are_all_named_before_any_secret_is_created(
    fake: FakeVerda, deploy_env, tmp_path, capsys
) -> None:
    """Before: with QUEUE_MANAGER_TOKEN set and HF_TOKEN (listed after it) unset, the token's secret was created
    (1 write, a value Verda can never update), then the deploy stopped naming HF_TOKEN. Now: 0 writes, and every
    secret without a value is named at once."""
    token = 'QUEUE_MANAGER_TOKEN = "comfyui-worker-queue-manager-token"\n'
    spec = edited_spec(tmp_path, token, token + 'HF_TOKEN = "hf-token"\nCIVITAI_TOKEN = "civitai-token"\n')
    assert await deploy_main(["--spec", str(spec)], deploy_env) == 1
    err = capsys.readouterr().err
    assert "secrets.HF_TOKEN: Verda secret 'hf-token' does not exist; set HF_TOKEN to create it" in err
    assert "secrets.CIVITAI_TOKEN: Verda secret 'civitai-token' does not exist" in err
    assert writes(fake) == []
    assert fake.secrets == {}


async def test_a_deployment_the_spec_cannot_update_is_refused_before_any_secret_is_created(
    fake: FakeVerda, deploy_env, tmp_path, capsys
) -> None:
    """A token rotated as docs/deploy-verda.md says (a new secret name) on a deployment given a second container
    in the console. Before: the new secret was created (1 write), then the deploy stopped: 'has 2 containers, the
    spec 1'. Now: 0 writes."""
    assert await deploy_main([], deploy_env) == 0
    containers = fake.deployments[NAME].body["containers"]
    containers.append({**containers[0], "name": f"{NAME}-sidecar"})
    fake.requests.clear()
    rotated = edited_spec(tmp_path, '"comfyui-worker-queue-manager-token"', '"comfyui-worker-queue-manager-token-2"')
    assert await deploy_main(["--spec", str(rotated)], deploy_env) == 1
    assert f"deployment {NAME} has 2 containers, the spec 1; delete and recreate it" in capsys.readouterr().err
    assert writes(fake) == []
    assert list(fake.secrets) == ["comfyui-worker-queue-manager-token"]


async def test_a_create_verda_refuses_after_the_secrets_says_what_stays_and_how_to_finish(
    fake: FakeVerda, deploy_env, capsys
) -> None:
    """What Verda alone checks (here a volume its list held, refused all the same) is refused at the create, the
    secret made by then. Before: the error was Verda's alone, no word of the secret left behind or how to go on. Now it
    says both, and the run the operator makes after fixing it creates the deployment, the secret reused."""
    refusal = {"code": "invalid_request", "message": "volume sfs-models-typo not found"}
    fake.fail_next("/container-deployments", 400, method="POST", body=refusal)
    assert await deploy_main([], deploy_env) == 1
    out, err = capsys.readouterr()
    assert "secret comfyui-worker-queue-manager-token: created from $QUEUE_MANAGER_TOKEN" in out
    assert "volume sfs-models-typo not found; what is printed above was done and stays" in err, err
    assert "fix what Verda names and run the same command again" in err
    assert await deploy_main([], deploy_env) == 0, capsys.readouterr().err
    assert NAME in fake.deployments
    assert len(fake.requests_to("/secrets", "POST")) == 1
