"""`status` and `delete --yes` need only the deployment's name: a spec file they cannot read says that
VERDA_DEPLOYMENT_NAME names it without the file, and with that set they run."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

NAME = "comfyui-worker-serverless"


@pytest.mark.parametrize("action", [["status"], ["delete", "--yes"]])
async def test_a_spec_with_a_toml_error_names_the_variable_that_bypasses_it(
    fake: FakeVerda, deploy_env, tmp_path: Path, capsys, action: list[str]
) -> None:
    """Before: `…/deployment.toml: Expected '=' after a key…`, exit 2, and no word of VERDA_DEPLOYMENT_NAME, the
    way to stop a billed deployment while the file is being fixed."""
    assert await deploy_main([], deploy_env) == 0
    broken = tmp_path / "deployment.toml"
    broken.write_text('[deployment]\nname = "comfyui-worker-serverless"\nimage\n')
    capsys.readouterr()
    fake.requests.clear()

    assert await deploy_main([*action, "--spec", str(broken)], deploy_env) == 2
    err = capsys.readouterr().err
    assert "--spec '/" in err and "deployment.toml': " in err and "set VERDA_DEPLOYMENT_NAME" in err, err
    assert fake.requests == []

    named = {**deploy_env, "VERDA_DEPLOYMENT_NAME": NAME}
    assert await deploy_main([*action, "--spec", str(broken)], named) == 0, capsys.readouterr().err
