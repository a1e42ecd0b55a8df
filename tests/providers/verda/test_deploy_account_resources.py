"""A registry credential or a shared (SFS) volume the spec names and the account does not have is refused naming the
setting before anything is written: Verda's lists (GET /container-registry-credentials, GET /volumes) say so
beforehand, where Verda itself refuses them only at the deployment's create, after the secrets were made."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

from ..conftest import edited_spec
from .conftest import NAME


def writes(fake: FakeVerda) -> list[str]:
    return [f"{r.method} {r.path}" for r in fake.requests if r.method not in ("GET", "HEAD") and "oauth2" not in r.path]


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        ("VERDA_REGISTRY_CREDENTIALS", "ghcr-typo", "Verda has no registry credential 'ghcr-typo'"),
        ("VERDA_MODELS_VOLUME_ID", "sfs-models-typo", "Verda has no volume 'sfs-models-typo' (GET /volumes), for the "
                                                      "shared mount at /models"),
        ("VERDA_OUTPUTS_VOLUME_ID", "block-1", "volume 'block-1' is of type NVMe, not a shared filesystem"),
    ],
)
async def test_a_credential_or_volume_the_account_lacks_is_refused_naming_it_before_any_write(
    fake: FakeVerda, deploy_env, capsys, setting: str, value: str, said: str
) -> None:
    """Before: the secret was created, then the deployment (the fake, as Verda's list, knew neither name: a real
    Verda refuses the create, the secret left behind), exit 0 here; the typo was never named."""
    fake.registry_credentials.add("ghcr-acme")
    fake.volumes["block-1"] = "NVMe"

    code = await deploy_main([], {**deploy_env, setting: value})

    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{setting}: {said}" in err and "nothing was written" in err, err
    assert writes(fake) == [] and fake.deployments == {} and fake.secrets == {}


async def test_a_volume_id_written_in_the_spec_is_named_by_its_field(
    fake: FakeVerda, deploy_env, capsys, tmp_path: Path
) -> None:
    spec = edited_spec(tmp_path, 'volume_id = ""', 'volume_id = "sfs-models-typo"')
    environ = {name: value for name, value in deploy_env.items() if name != "VERDA_MODELS_VOLUME_ID"}

    assert await deploy_main(["--spec", str(spec)], environ) == 1

    assert "volume_mounts.0.volume_id: Verda has no volume 'sfs-models-typo'" in capsys.readouterr().err
    assert writes(fake) == []


async def test_a_credential_and_volumes_the_account_has_are_deployed(fake: FakeVerda, deploy_env, capsys) -> None:
    fake.registry_credentials.add("ghcr-acme")

    assert await deploy_main([], {**deploy_env, "VERDA_REGISTRY_CREDENTIALS": "ghcr-acme"}) == 0, capsys.readouterr()

    registry = fake.deployments[NAME].body["container_registry_settings"]
    assert registry == {"is_private": True, "credentials": {"name": "ghcr-acme"}}


@pytest.mark.parametrize(("path", "status"), [("/volumes", 403), ("/container-registry-credentials", 404)])
async def test_a_list_verda_will_not_give_skips_its_check_with_a_warning(
    fake: FakeVerda, deploy_env, capsys, path: str, status: int
) -> None:
    """Credentials scoped to containers (403) or an API without the list (404) must not stop every deploy: Verda's
    create remains the check, as before the lists were read."""
    fake.registry_credentials.add("ghcr-acme")
    fake.fail_next(path, status, method="GET")

    assert await deploy_main([], {**deploy_env, "VERDA_REGISTRY_CREDENTIALS": "ghcr-acme"}) == 0, capsys.readouterr()

    assert "warning: cannot check the" in capsys.readouterr().err
    assert NAME in fake.deployments


async def test_a_volume_type_verda_adds_later_is_not_refused_on_a_guess(fake: FakeVerda, deploy_env, capsys) -> None:
    fake.volumes["sfs-new"] = "NVMe_Shared_v2"

    assert await deploy_main([], {**deploy_env, "VERDA_MODELS_VOLUME_ID": "sfs-new"}) == 0, capsys.readouterr()
    assert NAME in fake.deployments
