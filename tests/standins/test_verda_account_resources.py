"""The fake Verda refuses a deployment that mounts a volume or names a registry credential the account lacks, or
mounts a block volume as shared, with Verda's 400 naming it: at create and at update."""

from __future__ import annotations

import aiohttp
import pytest

from standins.verda import FakeVerda

from .test_provider_fakes import VERDA_DEPLOYMENT, verda_headers

SFS = "sfs-models-1"


def _mounting(volume_id: str) -> dict:
    mount = {"type": "shared", "mount_path": "/models", "volume_id": volume_id}
    return {"containers": [{**VERDA_DEPLOYMENT["containers"][0], "volume_mounts": [mount]}]}


def _pulling_with(credential: str) -> dict:
    return {"container_registry_settings": {"is_private": True, "credentials": {"name": credential}}}


REFUSED = [
    (_mounting("sfs-typo"), "volume 'sfs-typo' does not exist"),
    (_mounting("block-nvme"), "volume 'block-nvme' is of type NVMe, not a shared filesystem"),
    (_mounting("block-hdd"), "volume 'block-hdd' is of type HDD, not a shared filesystem"),
    (_pulling_with("ghcr-typo"), "registry credential 'ghcr-typo' does not exist"),
]
ACCOUNT_IDS = ["unknown volume", "NVMe volume", "HDD volume", "unknown credential"]


def _seed(fake: FakeVerda) -> None:
    fake.volumes.update({SFS: "NVMe_Shared", "block-nvme": "NVMe", "block-hdd": "HDD"})
    fake.registry_credentials.add("ghcr-acme")


@pytest.mark.parametrize(("change", "message"), REFUSED, ids=ACCOUNT_IDS)
async def test_a_create_naming_what_the_account_lacks_is_verdas_400(
    change: dict, message: str, http: aiohttp.ClientSession
) -> None:
    """Before: the deployment was created (201) with a volume or credential Verda would not know."""
    async with FakeVerda() as fake:
        _seed(fake)
        headers = await verda_headers(fake, http)
        deployment = {**VERDA_DEPLOYMENT, **change}
        async with http.post(f"{fake.url}/container-deployments", json=deployment, headers=headers) as answer:
            assert answer.status == 400
            assert await answer.json() == {"code": "invalid_request", "message": message}
        assert fake.deployments == {}


@pytest.mark.parametrize(("change", "message"), REFUSED, ids=ACCOUNT_IDS)
async def test_an_update_naming_what_the_account_lacks_is_verdas_400(
    change: dict, message: str, http: aiohttp.ClientSession
) -> None:
    """Before: the update was taken (200) and the deployment read back with the unknown volume or credential."""
    async with FakeVerda() as fake:
        _seed(fake)
        headers = await verda_headers(fake, http)
        async with http.post(f"{fake.url}/container-deployments", json=VERDA_DEPLOYMENT, headers=headers) as answer:
            assert answer.status == 201
            assigned = (await answer.json())["containers"][0]["name"]
        before = fake.deployments["worker"].body
        if "containers" in change:
            change = {"containers": [{**change["containers"][0], "name": assigned}]}
        url = f"{fake.url}/container-deployments/worker"
        async with http.patch(url, json=change, headers=headers) as answer:
            assert answer.status == 400
            assert await answer.json() == {"code": "invalid_request", "message": message}
        assert fake.deployments["worker"].body == before


async def test_a_deployment_with_the_accounts_volume_and_credential_is_created(http: aiohttp.ClientSession) -> None:
    async with FakeVerda() as fake:
        _seed(fake)
        headers = await verda_headers(fake, http)
        deployment = {**VERDA_DEPLOYMENT, **_mounting(SFS), **_pulling_with("ghcr-acme")}
        async with http.post(f"{fake.url}/container-deployments", json=deployment, headers=headers) as answer:
            assert answer.status == 201, await answer.text()
        assert fake.deployments["worker"].body["container_registry_settings"]["credentials"] == {"name": "ghcr-acme"}
