"""What the deploy makes of Verda's list of serverless computes (GET /serverless-compute-resources)."""

from __future__ import annotations

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

COMPUTE_LIST = "/serverless-compute-resources"


async def test_an_empty_compute_list_says_verda_lists_none_and_what_to_check(fake: FakeVerda, deploy_env, capsys):
    """Before: "VERDA_COMPUTE: Verda offers no compute 'H100'; the names it offers: " with nothing after it. Now it
    says Verda lists no compute for serverless containers and what to check; nothing is written."""
    fake.fail_next(COMPUTE_LIST, 200, method="GET", body=[])
    assert await deploy_main([], {**deploy_env, "VERDA_COMPUTE": "H100"}) == 1
    err = capsys.readouterr().err
    assert "VERDA_COMPUTE: Verda lists no compute for serverless containers" in err
    assert "the account can run serverless containers" in err
    assert "the names it offers" not in err
    assert fake.secrets == {} and fake.deployments == {}


def catalogue(h100_available: object) -> list[dict[str, object]]:
    return [{"name": "H100", "size": 1, "is_available": h100_available},
            {"name": "A100", "size": 1, "is_available": True}]


async def test_a_compute_listed_unavailable_is_deployed_with_a_warning(
    fake: FakeVerda, deploy_env, capsys
) -> None:
    """Before: is_available false was ignored, the deployment created without a word. Now a warning on stderr says
    replicas may not start until Verda lists it available, and the deployment is still created."""
    fake.fail_next(COMPUTE_LIST, 200, method="GET", body=catalogue(False))
    assert await deploy_main([], deploy_env) == 0
    out, err = capsys.readouterr()
    assert ("warning: Verda lists H100 with 1 GPUs per replica as not available now: replicas may not start until "
            "it is") in err
    assert "comfyui-worker-serverless" in fake.deployments
    assert "deployment comfyui-worker-serverless: created" in out


async def test_an_available_compute_is_deployed_without_a_warning(fake: FakeVerda, deploy_env, capsys) -> None:
    fake.fail_next(COMPUTE_LIST, 200, method="GET", body=catalogue(True))
    assert await deploy_main([], deploy_env) == 0
    assert "warning" not in capsys.readouterr().err
