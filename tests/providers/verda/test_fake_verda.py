"""The fake Verda API refuses what Verda refuses, so tests against it can fail the way production would."""

from __future__ import annotations

import copy

import httpx
import pytest
from verda.containers import (
    ContainerRegistryCredentials,
    ContainerRegistrySettings,
    Deployment,
    EntrypointOverridesSettings,
    EnvVar,
    EnvVarType,
    HealthcheckSettings,
)

from scaler.providers.verda.client import VerdaAPIError, VerdaClient, container_image
from standins.verda import FakeVerda

from .conftest import NAME, h100_deployment


def valid_body() -> dict:
    return h100_deployment(
        {
            "image": "ghcr.io/acme/worker:1.0.0",
            "exposed_port": 8000,
            "env": [{"name": "QUEUE_MANAGER_TOKEN", "value_or_reference_to_secret": "qm-token", "type": "secret"}],
            "volume_mounts": [
                {"type": "shared", "mount_path": "/models", "volume_id": "sfs-models-1"},
                {"type": "memory", "mount_path": "/dev/shm", "size_in_mb": 1024},
            ],
        }
    )


def _set(body: dict, path: str, value: object) -> dict:
    target = body
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    target[keys[-1]] = value
    return body


INVALID_CREATES = {
    "uppercase name": ("name", "Comfy"),
    "name too long": ("name", "a" * 64),
    "underscore name": ("name", "comfy_worker"),
    "leading hyphen": ("name", "-comfy"),
    "trailing hyphen": ("name", "comfy-"),
    "env name": ("containers.0.env", [{"name": "queue-url", "value_or_reference_to_secret": "x", "type": "plain"}]),
    "missing secret": (
        "containers.0.env",
        [{"name": "TOKEN", "value_or_reference_to_secret": "nope", "type": "secret"}],
    ),
    "threshold below 1": ("scaling.scaling_triggers.queue_load.threshold", 0.5),
    "min above max": ("scaling.min_replica_count", 6),
    "volume type": ("containers.0.volume_mounts", [{"type": "nfs", "mount_path": "/models"}]),
    "memory path": ("containers.0.volume_mounts", [{"type": "memory", "mount_path": "/shm", "size_in_mb": 1}]),
    "shared without id": ("containers.0.volume_mounts", [{"type": "shared", "mount_path": "/models"}]),
    "unknown compute": ("compute", {"name": "TPU", "size": 1}),
    # Wrong JSON types: Verda's 400, not a 500 a client would retry.
    "container not an object": ("containers", ["ghcr.io/acme/worker:1.0.0"]),
    "env not a list": ("containers.0.env", {"TOKEN": "x"}),
    "env entry not an object": ("containers.0.env", ["TOKEN=x"]),
    "secret reference not a string": (
        "containers.0.env",
        [{"name": "TOKEN", "value_or_reference_to_secret": ["qm-token"], "type": "secret"}],
    ),
    "mounts not a list": ("containers.0.volume_mounts", {"type": "scratch"}),
    "boolean port": ("containers.0.exposed_port", True),
    "boolean replica count": ("scaling.max_replica_count", True),
    "triggers not an object": ("scaling.scaling_triggers", ["queue_load"]),
    "queue_load not an object": ("scaling.scaling_triggers.queue_load", [1]),
    "policy not an object": ("scaling.scale_down_policy", 300),
    "delay not an integer": ("scaling.scale_up_policy", {"delay_seconds": "0"}),
    "delay missing": ("scaling.scale_down_policy", {}),
    "ttl not an integer": ("scaling.queue_message_ttl_seconds", "300"),
    "boolean concurrency": ("scaling.concurrent_requests_per_replica", True),
    "utilization not an object": ("scaling.scaling_triggers.cpu_utilization", False),
    "utilization enabled not a boolean": ("scaling.scaling_triggers.gpu_utilization", {"enabled": "false"}),
    "compute name not a string": ("compute", {"name": ["H100"], "size": 1}),
    "boolean compute size": ("compute", {"name": "H100", "size": True}),
    # The types the official `verda` SDK sends (verda.containers): EnvVar, HealthcheckSettings,
    # EntrypointOverridesSettings, ContainerRegistrySettings, Deployment.is_spot.
    "plain value not a string": (
        "containers.0.env",
        [{"name": "RETRIES", "value_or_reference_to_secret": 5, "type": "plain"}],
    ),
    "plain value missing": ("containers.0.env", [{"name": "RETRIES", "type": "plain"}]),
    "healthcheck not an object": ("containers.0.healthcheck", True),
    "healthcheck enabled not a boolean": ("containers.0.healthcheck", {"enabled": "true"}),
    "healthcheck port not an integer": ("containers.0.healthcheck", {"enabled": True, "port": "8000"}),
    "boolean healthcheck port": ("containers.0.healthcheck", {"enabled": True, "port": True}),
    "healthcheck path not a string": ("containers.0.healthcheck", {"enabled": True, "path": ["/health"]}),
    "entrypoint_overrides not an object": ("containers.0.entrypoint_overrides", False),
    "entrypoint_overrides enabled not a boolean": ("containers.0.entrypoint_overrides", {"enabled": 0}),
    "entrypoint not a list": ("containers.0.entrypoint_overrides", {"enabled": True, "entrypoint": "python"}),
    "cmd not strings": ("containers.0.entrypoint_overrides", {"enabled": True, "cmd": ["-m", 1]}),
    "is_spot not a boolean": ("is_spot", "false"),
    "registry settings not an object": ("container_registry_settings", "public"),
    "is_private not a boolean": ("container_registry_settings", {"is_private": "false"}),
    "credentials not an object": ("container_registry_settings", {"is_private": True, "credentials": "ghcr"}),
    "credentials without a name": ("container_registry_settings", {"is_private": True, "credentials": {}}),
}


@pytest.fixture
async def with_secret(verda: VerdaClient) -> VerdaClient:
    await verda.create_secret("qm-token", "value")
    return verda


@pytest.mark.parametrize(("path", "value"), INVALID_CREATES.values(), ids=INVALID_CREATES.keys())
async def test_create_rejects_what_verda_rejects(with_secret: VerdaClient, fake: FakeVerda, path, value) -> None:
    with pytest.raises(VerdaAPIError) as caught:
        await with_secret.create_deployment(_set(valid_body(), path, value))
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    assert fake.deployments == {}


async def test_a_body_not_an_object_is_verdas_400(with_secret: VerdaClient, fake: FakeVerda) -> None:
    token = await with_secret._access_token()
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
    async with httpx.AsyncClient(base_url=fake.url, headers=headers) as http:
        await http.post("/container-deployments", json=valid_body())
        answers = [
            await http.post("/oauth2/token", json=[]),
            await http.post("/container-deployments", json=[valid_body()]),
            await http.patch(f"/container-deployments/{NAME}", json=["scaling"]),
            await http.post("/secrets", json="qm-token"),
        ]
    assert [(a.status_code, a.json()["code"]) for a in answers] == [(400, "invalid_request")] * 4


async def test_a_post_or_patch_without_a_body_is_verdas_400(with_secret: VerdaClient, fake: FakeVerda) -> None:
    await with_secret.create_deployment(valid_body())
    token = await with_secret._access_token()
    headers = {"Authorization": f"Bearer {token.get_secret_value()}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=fake.url, headers=headers) as http:
        answers = [
            await http.post("/oauth2/token"),
            await http.post("/container-deployments"),
            await http.patch(f"/container-deployments/{NAME}"),
            await http.patch(f"/container-deployments/{NAME}/scaling"),
            await http.post("/secrets"),
        ]
    assert [(a.status_code, a.json()) for a in answers] == [
        (400, {"code": "invalid_request", "message": "body is required"})
    ] * 5


async def test_valid_body_is_accepted(with_secret: VerdaClient, fake: FakeVerda) -> None:
    created = await with_secret.create_deployment(valid_body())
    assert created["containers"][0]["name"].startswith(NAME)
    assert NAME in fake.deployments


@pytest.mark.parametrize(
    "registry",
    [ContainerRegistrySettings(False), ContainerRegistrySettings(True, ContainerRegistryCredentials("ghcr"))],
)
async def test_the_sdks_settings_are_accepted(with_secret: VerdaClient, fake: FakeVerda, registry) -> None:
    """What the SDK sends for the settings it types, null for each optional field left unset."""
    fake.registry_credentials.add("ghcr")
    body = valid_body()
    body["container_registry_settings"] = registry.to_dict()
    body["containers"][0]["healthcheck"] = HealthcheckSettings(enabled=True, port=8000).to_dict()
    body["containers"][0]["entrypoint_overrides"] = EntrypointOverridesSettings(enabled=False).to_dict()
    body["containers"][0]["env"].append(EnvVar("RETRIES", "5", EnvVarType.PLAIN).to_dict(encode_json=True))
    await with_secret.create_deployment(body)
    assert fake.deployments[NAME].body["containers"][0]["healthcheck"] == {"enabled": True, "port": 8000, "path": None}


async def test_update_requires_assigned_container_names(with_secret: VerdaClient) -> None:
    created = await with_secret.create_deployment(valid_body())
    update = valid_body()
    with pytest.raises(VerdaAPIError, match="carry their name"):
        await with_secret.update_deployment(NAME, update)
    update["containers"][0]["name"] = created["containers"][0]["name"]
    update["containers"][0]["image"] = "ghcr.io/acme/worker:1.0.1"
    updated = await with_secret.update_deployment(NAME, update)
    assert container_image(updated["containers"][0]).endswith(":1.0.1")


@pytest.mark.parametrize(
    "update",
    [
        {"is_spot": 1},
        {"container_registry_settings": {"is_private": "true"}},
        {"containers": [{"healthcheck": {"enabled": True, "port": "8000"}}]},
    ],
    ids=["is_spot", "registry", "container"],
)
async def test_an_update_of_the_wrong_type_is_refused(with_secret: VerdaClient, fake: FakeVerda, update) -> None:
    created = await with_secret.create_deployment(valid_body())
    for container in update.get("containers", []):
        container.update({**created["containers"][0], **container, "image": "ghcr.io/acme/worker:1.0.0"})
    before = copy.deepcopy(fake.deployments[NAME].body)
    with pytest.raises(VerdaAPIError) as caught:
        await with_secret.update_deployment(NAME, update)
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    assert fake.deployments[NAME].body == before


async def test_a_deployment_read_has_no_scaling_and_image_objects(with_secret: VerdaClient) -> None:
    """As Verda's Go SDK types it (ContainerDeployment: no scaling; DeploymentContainer.image: ContainerImage)."""
    created = await with_secret.create_deployment(valid_body())
    for answer in (created, await with_secret.get_deployment(NAME), (await with_secret.list_deployments())[0]):
        assert "scaling" not in answer
        image = answer["containers"][0]["image"]
        assert isinstance(image, dict) and image["image"] == "ghcr.io/acme/worker:1.0.0" and "last_updated_at" in image
        assert Deployment.from_dict(answer, infer_missing=True).scaling is None
    assert (await with_secret.get_scaling(NAME))["max_replica_count"] == 5


async def test_scaling_patch_may_be_partial(with_secret: VerdaClient, fake: FakeVerda) -> None:
    await with_secret.create_deployment(valid_body())
    answer = await with_secret.update_scaling(NAME, {"min_replica_count": 2, "max_replica_count": 2})
    assert answer == {**valid_body()["scaling"], "min_replica_count": 2, "max_replica_count": 2}
    with pytest.raises(VerdaAPIError, match="min_replica_count <= max_replica_count"):
        await with_secret.update_scaling(NAME, {"min_replica_count": 3})
    with pytest.raises(VerdaAPIError, match="unknown scaling keys"):
        await with_secret.update_scaling(NAME, {"min_replicas": 3})
    scaling = copy.deepcopy(valid_body()["scaling"])
    scaling["min_replica_count"] = 1
    assert (await with_secret.update_scaling(NAME, scaling))["min_replica_count"] == 1


async def test_delete_is_asynchronous(with_secret: VerdaClient, fake: FakeVerda) -> None:
    """A DELETE starts the deletion: the deployment answers for a while, a second DELETE is refused."""
    await with_secret.create_deployment(valid_body())
    token = await with_secret._access_token()
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
    async with httpx.AsyncClient(base_url=fake.url, headers=headers) as http:
        assert (await http.delete(f"/container-deployments/{NAME}", params={"timeout": 60000})).status_code == 204
        assert (await http.get(f"/container-deployments/{NAME}")).status_code == 200
        again = await http.delete(f"/container-deployments/{NAME}")
        assert again.status_code == 409 and "being deleted" in again.json()["message"]
        assert (await http.get(f"/container-deployments/{NAME}")).status_code == 404
        assert (await http.delete("/other", params={"timeout": 300001})).status_code == 404


async def test_an_answer_can_fail_after_the_work_is_done(with_secret: VerdaClient, fake: FakeVerda) -> None:
    fake.fail_next("/container-deployments", 500, method="POST", after_effect=True)
    token = await with_secret._access_token()
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
    async with httpx.AsyncClient(base_url=fake.url, headers=headers) as http:
        answer = await http.post("/container-deployments", json=valid_body())
        assert answer.status_code == 500
        assert NAME in fake.deployments
        again = await http.post("/container-deployments", json=valid_body())
        assert again.status_code == 409 and "already exists" in again.json()["message"]


async def test_secret_in_use_is_not_deleted_without_force(with_secret: VerdaClient, fake: FakeVerda) -> None:
    await with_secret.create_deployment(valid_body())
    with pytest.raises(VerdaAPIError) as caught:
        await with_secret.delete_secret("qm-token")
    assert caught.value.code == "forbidden_action"
    await with_secret.delete_secret("qm-token", force=True)
    assert fake.secrets == {}


async def test_requires_bearer_token(fake: FakeVerda) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{fake.url}/container-deployments")
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized_request"
        response = await http.get(f"{fake.url}/container-deployments", headers={"Authorization": "Bearer made-up"})
        assert response.status_code == 401


async def test_tokens_expire_with_the_clock(fake: FakeVerda, clock) -> None:
    async with httpx.AsyncClient() as http:
        grant = {"grant_type": "client_credentials", "client_id": "test-id", "client_secret": fake._client_secret}
        tokens = (await http.post(f"{fake.url}/oauth2/token", json=grant)).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (await http.get(f"{fake.url}/secrets", headers=headers)).status_code == 200
        clock.advance(tokens["expires_in"])
        expired = await http.get(f"{fake.url}/secrets", headers=headers)
        assert expired.status_code == 401
        assert expired.json() == {"code": "unauthorized_request", "message": "Access token expired"}
        refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        renewed = (await http.post(f"{fake.url}/oauth2/token", json=refresh)).json()
        headers = {"Authorization": f"Bearer {renewed['access_token']}"}
        assert (await http.get(f"{fake.url}/secrets", headers=headers)).status_code == 200


async def test_expired_tokens_are_forgotten(fake: FakeVerda, clock) -> None:
    """A client refreshing its token every hour for two days: the fake holds the live token, not all 49 issued
    (bench/scaler_soak.py runs it for simulated weeks)."""
    async with httpx.AsyncClient() as http:
        grant = {"grant_type": "client_credentials", "client_id": "test-id", "client_secret": fake._client_secret}
        tokens = (await http.post(f"{fake.url}/oauth2/token", json=grant)).json()
        for _ in range(48):
            clock.advance(tokens["expires_in"])
            refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
            tokens = (await http.post(f"{fake.url}/oauth2/token", json=refresh)).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (await http.get(f"{fake.url}/secrets", headers=headers)).status_code == 200
    assert len(fake._access_tokens) == 1
    assert len(fake._refresh_tokens) == 1
