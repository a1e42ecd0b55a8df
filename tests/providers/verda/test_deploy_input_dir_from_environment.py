"""COMFYUI_INPUT_DIR taken from the deploy-time environment (env_from_environment) is judged as one in [env]: on
no shared volume the spec mounts, every replica would exit 2 at start."""

from __future__ import annotations

from pathlib import Path

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

from ..conftest import edited_spec


async def test_an_uploads_folder_from_the_environment_on_no_volume_is_refused_before_anything_is_sent(
    fake: FakeVerda, spec_path: Path, deploy_env, tmp_path: Path, capsys
) -> None:
    """Before, only [env] was looked at: this spec was deployed (exit 0) and every replica exited 2 at start."""
    spec = edited_spec(tmp_path, 'names = ["QUEUE_MANAGER_URL"]', 'names = ["QUEUE_MANAGER_URL", "COMFYUI_INPUT_DIR"]')

    code = await deploy_main(["--spec", str(spec)], {**deploy_env, "COMFYUI_INPUT_DIR": "/inputs"})

    err = capsys.readouterr().err
    assert code == 2, err
    assert "env_from_environment.COMFYUI_INPUT_DIR: no shared volume is mounted at /inputs" in err, err
    assert fake.requests == []
