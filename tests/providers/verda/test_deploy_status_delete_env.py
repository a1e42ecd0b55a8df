"""`status` and `delete --yes` need the deployment's name and Verda's credentials, nothing else of the spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

from .test_deploy import edited_spec

NAME = "comfyui-worker-serverless"
CREDENTIALS = ("VERDA_CLIENT_ID", "VERDA_CLIENT_SECRET", "VERDA_API_URL")


def credentials_only(deploy_env: dict[str, str]) -> dict[str, str]:
    return {name: deploy_env[name] for name in CREDENTIALS}


async def test_status_and_delete_from_a_shell_with_only_the_credentials(fake: FakeVerda, deploy_env, capsys) -> None:
    """Before: both exit 2 (deployment.image, the volume ids, QUEUE_MANAGER_URL required), so stopping the billing
    took exporting the image, both volume ids and the queue's URL, none of which a delete sends."""
    assert await deploy_main([], deploy_env) == 0
    capsys.readouterr()
    assert await deploy_main(["status"], credentials_only(deploy_env)) == 0, capsys.readouterr().err
    assert "status: healthy" in capsys.readouterr().out
    assert await deploy_main(["delete", "--yes"], credentials_only(deploy_env)) == 0, capsys.readouterr().err
    assert fake.deployments == {}


async def test_status_and_delete_read_the_name_as_apply_does(fake: FakeVerda, deploy_env, capsys) -> None:
    env = {**deploy_env, "VERDA_DEPLOYMENT_NAME": "other-worker"}
    assert await deploy_main([], env) == 0
    named = {**credentials_only(deploy_env), "VERDA_DEPLOYMENT_NAME": "other-worker"}
    assert await deploy_main(["delete"], named) == 2
    assert "removes deployment other-worker" in capsys.readouterr().err
    assert await deploy_main(["delete", "--yes"], named) == 0, capsys.readouterr().err
    assert fake.deployments == {}


@pytest.mark.parametrize("action", [["status"], ["delete", "--yes"]])
async def test_a_name_verda_refuses_or_a_misspelt_name_variable_is_refused_before_any_call(
    fake: FakeVerda, deploy_env, tmp_path: Path, action: list[str], capsys
) -> None:
    spec = edited_spec(tmp_path, f'name = "{NAME}"', 'name = "Comfy_Worker"')
    assert await deploy_main([*action, "--spec", str(spec)], credentials_only(deploy_env)) == 2
    assert "deployment.name" in capsys.readouterr().err
    misspelt = {**credentials_only(deploy_env), "VERDA_DEPLOYMENT_NAM": "other-worker"}
    assert await deploy_main(action, misspelt) == 2
    assert "did you mean VERDA_DEPLOYMENT_NAME?" in capsys.readouterr().err
    assert fake.requests == []
