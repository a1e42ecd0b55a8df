"""An empty deploy variable (`VERDA_REGISTRY_CREDENTIALS=` in a shared env file) is unset, as the scaler reads its
own: the spec's value is deployed, never replaced by ""."""

from __future__ import annotations

import json
from pathlib import Path

from scaler.deploy.command import deploy_main
from scaler.deploy.spec import ENV_OVERRIDES, SHARED_VOLUME_ENVS
from standins.verda import FakeVerda

from .test_deploy import edited_spec

NAME = "comfyui-worker-serverless"


def private_spec(tmp_path: Path, deploy_env: dict[str, str]) -> Path:
    """The shipped spec with a registry credential and its variables' values written in, the image's and the
    volumes' ids too."""
    spec = edited_spec(tmp_path, 'registry_credentials = ""', 'registry_credentials = "ghcr-pull"')
    text = spec.read_text().replace("ghcr.io/OWNER/", "ghcr.io/acme/", 1)
    text = text.replace('volume_id = ""', f'volume_id = "{deploy_env["VERDA_MODELS_VOLUME_ID"]}"', 1)
    spec.write_text(text.replace('volume_id = ""', f'volume_id = "{deploy_env["VERDA_OUTPUTS_VOLUME_ID"]}"', 1))
    return spec


async def test_empty_overrides_deploy_the_specs_values(fake: FakeVerda, deploy_env, tmp_path: Path, capsys) -> None:
    """Before: VERDA_REGISTRY_CREDENTIALS= sent is_private false (the image never pulled), and the other empty
    variables were refused (VERDA_IS_SPOT, VERDA_COMPUTE, the volume ids) in place of the spec's good values."""
    spec = ["--spec", str(private_spec(tmp_path, deploy_env))]
    fake.registry_credentials.add("ghcr-pull")  # the account's, as the deploy checks before writing
    written_in = (*SHARED_VOLUME_ENVS.values(), "VERDA_IMAGE")
    kept = {name: value for name, value in deploy_env.items() if name not in written_in}
    assert await deploy_main(["--dry-run", *spec], kept) == 0, capsys.readouterr().err
    expected = json.loads(capsys.readouterr().out)
    assert expected["container_registry_settings"] == {"is_private": True, "credentials": {"name": "ghcr-pull"}}
    assert await deploy_main(["--dry-run", *spec], {**kept, "VERDA_REGISTRY_CREDENTIALS": ""}) == 0
    assert json.loads(capsys.readouterr().out) == expected  # before: {"is_private": false}
    empty = {**kept, **dict.fromkeys((*ENV_OVERRIDES, *SHARED_VOLUME_ENVS.values()), "")}

    assert await deploy_main(["--dry-run", *spec], empty) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out) == expected
    assert await deploy_main(spec, empty) == 0, capsys.readouterr().err
    assert fake.deployments[NAME].body["container_registry_settings"] == expected["container_registry_settings"]


async def test_status_with_an_empty_name_variable_reads_the_specs_name(fake: FakeVerda, deploy_env, capsys) -> None:
    """Before: VERDA_DEPLOYMENT_NAME= was refused (exit 2) in place of the spec's name."""
    assert await deploy_main([], deploy_env) == 0
    capsys.readouterr()
    assert await deploy_main(["status"], {**deploy_env, "VERDA_DEPLOYMENT_NAME": ""}) == 0, capsys.readouterr().err
    assert "status: healthy" in capsys.readouterr().out
