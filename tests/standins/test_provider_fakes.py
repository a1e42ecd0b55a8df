"""The fake provider APIs answer any body a client may send with the API's own error, never a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from standins.runpod import DEFAULT_API_KEY, FakeRunPod
from standins.verda import FakeVerda

UNREADABLE_BODIES = [b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000]  # not UTF-8; nested past json's recursion


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.mark.parametrize("body", UNREADABLE_BODIES)
async def test_runpod_answers_an_unreadable_body_with_its_400(body: bytes, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}", "Content-Type": "application/json"}
    async with FakeRunPod() as fake, http.post(f"{fake.url}/pods", data=body, headers=headers) as answer:
        assert answer.status == 400
        assert (await answer.json(content_type=None))["detail"] == "request body is not valid JSON"


@pytest.mark.parametrize("body", UNREADABLE_BODIES)
async def test_verda_answers_an_unreadable_body_with_its_400(body: bytes, http: aiohttp.ClientSession) -> None:
    headers = {"Content-Type": "application/json"}
    async with FakeVerda() as fake, http.post(f"{fake.url}/oauth2/token", data=body, headers=headers) as answer:
        assert answer.status == 400
        assert (await answer.json())["code"] == "invalid_request"


NON_FINITE_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999"]  # Python's json reads each as a float


@pytest.mark.parametrize("number", NON_FINITE_NUMBERS)
async def test_runpod_refuses_a_non_finite_number_as_no_json_with_its_400(
    number: str, http: aiohttp.ClientSession
) -> None:
    """Before: the pod was created (201) from a body that is no JSON, which RunPod's API refuses."""
    body = json.dumps({**RUNPOD_POD, "volumeInGb": 0}).replace('"volumeInGb": 0', f'"volumeInGb": {number}')
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}", "Content-Type": "application/json"}
    async with FakeRunPod() as fake, http.post(f"{fake.url}/pods", data=body, headers=headers) as answer:
        assert answer.status == 400
        assert (await answer.json(content_type=None))["detail"] == "request body is not valid JSON"
        assert fake.pods == {}


@pytest.mark.parametrize("number", NON_FINITE_NUMBERS)
async def test_verda_refuses_a_non_finite_number_as_no_json_with_its_400(
    number: str, http: aiohttp.ClientSession
) -> None:
    """Before: a token was issued (200) for a body that is no JSON, which Verda's API refuses."""
    credentials = {"grant_type": "client_credentials", "client_id": "test-id", "client_secret": "test-secret"}
    body = json.dumps({**credentials, "scope": 0}).replace('"scope": 0', f'"scope": {number}')
    headers = {"Content-Type": "application/json"}
    async with FakeVerda() as fake, http.post(f"{fake.url}/oauth2/token", data=body, headers=headers) as answer:
        assert answer.status == 400
        assert await answer.json() == {"code": "invalid_request", "message": "body is not JSON"}


@pytest.mark.parametrize("refresh_token", [[], {}, None, 7])
async def test_verda_refuses_a_refresh_token_that_is_no_string_with_its_400(
    refresh_token: object, http: aiohttp.ClientSession
) -> None:
    body = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    async with FakeVerda() as fake, http.post(f"{fake.url}/oauth2/token", json=body) as answer:
        assert answer.status == 400
        assert await answer.json() == {"code": "invalid_request", "message": "Invalid refresh token"}


VERDA_DEPLOYMENT = {
    "name": "worker", "compute": {"name": "H100", "size": 1},
    "containers": [{"image": "ghcr.io/org/worker:1.0.0", "exposed_port": 8000}],
    "scaling": {
        "min_replica_count": 0, "max_replica_count": 1, "scale_down_policy": {"delay_seconds": 300},
        "scale_up_policy": {"delay_seconds": 0}, "queue_message_ttl_seconds": 300,
        "concurrent_requests_per_replica": 1, "scaling_triggers": {"queue_load": {"threshold": 1}},
    },
}  # fmt: skip


async def verda_headers(fake: FakeVerda, http: aiohttp.ClientSession) -> dict[str, str]:
    credentials = {"grant_type": "client_credentials", "client_id": "test-id", "client_secret": "test-secret"}
    async with http.post(f"{fake.url}/oauth2/token", json=credentials) as answer:
        return {"Authorization": f"Bearer {(await answer.json())['access_token']}"}


@pytest.mark.parametrize("kind", [[], {}, ["scratch"]])
async def test_verda_refuses_a_volume_mount_type_that_is_no_string_with_its_400(
    kind: object, http: aiohttp.ClientSession
) -> None:
    """Before: a 500 traceback (unhashable type, looked up in the set of mount types)."""
    mount = {"type": kind, "mount_path": "/data"}
    deployment = {**VERDA_DEPLOYMENT, "containers": [{**VERDA_DEPLOYMENT["containers"][0], "volume_mounts": [mount]}]}
    async with FakeVerda() as fake:
        headers = await verda_headers(fake, http)
        async with http.post(f"{fake.url}/container-deployments", json=deployment, headers=headers) as answer:
            assert answer.status == 400
            assert (await answer.json())["code"] == "invalid_request"
        assert fake.deployments == {}


async def test_verda_refuses_a_queue_load_threshold_of_true_with_its_400(http: aiohttp.ClientSession) -> None:
    """Before: true (a bool is an int to Python) was a threshold >= 1, and the deployment was created; Verda's API
    refuses it. (Infinity and 1e999 are refused as no JSON: see the tests of non-finite numbers.)"""
    body = json.dumps(VERDA_DEPLOYMENT).replace('"threshold": 1', '"threshold": true')
    async with FakeVerda() as fake:
        headers = {**await verda_headers(fake, http), "Content-Type": "application/json"}
        async with http.post(f"{fake.url}/container-deployments", data=body, headers=headers) as answer:
            assert answer.status == 400
            assert await answer.json() == {"code": "invalid_request",
                                           "message": "queue_load.threshold must be a number >= 1"}
        assert fake.deployments == {}


def _container(**changes: object) -> dict:
    return {**VERDA_DEPLOYMENT, "containers": [{**VERDA_DEPLOYMENT["containers"][0], **changes}]}


def _scaling(**changes: object) -> dict:
    return {**VERDA_DEPLOYMENT, "scaling": {**VERDA_DEPLOYMENT["scaling"], **changes}}


@pytest.mark.parametrize(("deployment", "message"), [
    *((_container(exposed_port=port), "containers need an exposed_port 1-65535") for port in (0, 70000, -8000)),
    *((_container(healthcheck={"enabled": True, "port": port, "path": "/health"}),
       "healthcheck.port must be an integer 1-65535") for port in (0, 65536)),
    (_scaling(scale_down_policy={"delay_seconds": -1}), "scale_down_policy.delay_seconds must be an integer >= 0"),
    (_scaling(scale_up_policy={"delay_seconds": -300}), "scale_up_policy.delay_seconds must be an integer >= 0"),
    (_scaling(queue_message_ttl_seconds=-1), "queue_message_ttl_seconds must be an integer >= 0"),
    (_scaling(concurrent_requests_per_replica=-1), "concurrent_requests_per_replica must be an integer >= 0"),
    (_scaling(scaling_triggers=None), "scaling_triggers must be an object"),
    (_scaling(scaling_triggers=[]), "scaling_triggers must be an object"),
])  # fmt: skip
async def test_verda_refuses_a_port_out_of_range_a_negative_duration_or_count_or_no_triggers_with_its_400(
    deployment: dict, message: str, http: aiohttp.ClientSession
) -> None:
    """Before: any integer was a port (0, 70000, negative), a negative delay, TTL or count passed, and null or []
    were the scaling triggers: the deployment was created."""
    async with FakeVerda() as fake:
        headers = await verda_headers(fake, http)
        async with http.post(f"{fake.url}/container-deployments", json=deployment, headers=headers) as answer:
            assert answer.status == 400
            assert await answer.json() == {"code": "invalid_request", "message": message}
        assert fake.deployments == {}


async def test_verda_refuses_a_negative_delay_in_a_scaling_patch_with_its_400(http: aiohttp.ClientSession) -> None:
    """Before: the PATCH was taken and GET …/scaling answered a delay of -1 s."""
    async with FakeVerda() as fake:
        headers = await verda_headers(fake, http)
        async with http.post(f"{fake.url}/container-deployments", json=VERDA_DEPLOYMENT, headers=headers) as answer:
            assert answer.status == 201
        patch = {"scale_down_policy": {"delay_seconds": -1}}
        url = f"{fake.url}/container-deployments/worker/scaling"
        async with http.patch(url, json=patch, headers=headers) as answer:
            assert answer.status == 400
            assert (await answer.json())["message"] == "scale_down_policy.delay_seconds must be an integer >= 0"
        assert fake.deployments["worker"].body["scaling"]["scale_down_policy"] == {"delay_seconds": 300}


@pytest.mark.parametrize(("mount", "message"), [
    ({"type": "shared", "mount_path": "/models", "volume_id": 7}, "shared mounts need a volume_id (a string)"),
    ({"type": "shared", "mount_path": "/models", "volume_id": ["vol-1"]}, "shared mounts need a volume_id (a string)"),
    ({"type": "secret", "mount_path": "/keys", "secret_name": {"name": "s"}},
     "secret mounts need a secret_name (a string)"),
])  # fmt: skip
async def test_verda_refuses_a_volume_or_secret_of_a_mount_that_is_no_string_with_its_400(
    mount: dict, message: str, http: aiohttp.ClientSession
) -> None:
    """Before: any truthy value named the volume (a number, a list), and the deployment was created."""
    deployment = {**VERDA_DEPLOYMENT, "containers": [{**VERDA_DEPLOYMENT["containers"][0], "volume_mounts": [mount]}]}
    async with FakeVerda() as fake:
        headers = await verda_headers(fake, http)
        async with http.post(f"{fake.url}/container-deployments", json=deployment, headers=headers) as answer:
            assert answer.status == 400
            assert await answer.json() == {"code": "invalid_request", "message": message}
        assert fake.deployments == {}


# "²": str.isdigit says yes; 5,000 digits: more than int() reads (sys.get_int_max_str_digits, 4,300), a 500 before.
@pytest.mark.parametrize("timeout", ["²", "9" * 5000, "0" * 5000 + "1"])
async def test_verda_refuses_a_delete_timeout_of_digits_int_cannot_read_with_its_400(
    timeout: str, http: aiohttp.ClientSession,
) -> None:
    async with FakeVerda() as fake:
        headers = await verda_headers(fake, http)
        async with http.post(f"{fake.url}/container-deployments", json=VERDA_DEPLOYMENT, headers=headers) as answer:
            assert answer.status == 201
        url = f"{fake.url}/container-deployments/worker"
        async with http.delete(url, params={"timeout": timeout}, headers=headers) as answer:
            assert answer.status == 400
            assert (await answer.json())["code"] == "invalid_request"
        async with http.delete(url, params={"timeout": "1000"}, headers=headers) as answer:
            assert answer.status == 204


@pytest.mark.parametrize(
    "gpu", [{"minCudaVersion": "12.8\n"}, {"allowedCudaVersions": ["12.8\n"]}, {"minCudaVersion": "١٢.٨"}]
)
async def test_runpod_refuses_a_cuda_version_its_schema_pattern_refuses(gpu: dict, http: aiohttp.ClientSession) -> None:
    # CreateGpuConfig: pattern ^\d+\.\d+$, an ECMA-262 regex: \d is 0-9 and $ is the end of the string.
    body = {"name": "worker", "image": "ghcr.io/org/worker:1.0.0", "gpu": {"id": "NVIDIA L40S", **gpu}}
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    async with FakeRunPod() as fake, http.post(f"{fake.url}/pods", json=body, headers=headers) as answer:
        assert answer.status == 422
        assert any(error.startswith("/gpu/") for error in (await answer.json(content_type=None))["errors"])
        assert fake.pods == {}


RUNPOD_POD = {"name": "worker", "image": "ghcr.io/org/worker:1.0.0", "gpu": {"id": "NVIDIA L40S", "count": 1}}


@pytest.mark.parametrize(("cloud", "count"), [("SECURE", 9), ("COMMUNITY", 16)])
async def test_runpod_refuses_more_gpus_than_a_pod_of_that_type_can_have_with_its_400(
    cloud: str, count: int, http: aiohttp.ClientSession
) -> None:
    """The catalogue's maxCount (8 for each GPU type of the fake). Before: 9 to 16 GPUs a pod (what the deploy
    takes) were created and billed, where RunPod has no such host."""
    body = {**RUNPOD_POD, "cloud": cloud, "gpu": {"id": "NVIDIA L40S", "count": count}}
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    async with FakeRunPod() as fake, http.post(f"{fake.url}/pods", json=body, headers=headers) as answer:
        assert answer.status == 400
        detail = (await answer.json(content_type=None))["detail"]
        assert detail == f"gpu.count {count}: a pod has at most 8 NVIDIA L40S in {cloud}"
        assert fake.pods == {}


@pytest.mark.parametrize("port", ["0/http", "70000/http", "8000/http\n"])
async def test_runpod_refuses_a_port_no_host_can_expose_with_its_400(port: str, http: aiohttp.ClientSession) -> None:
    """Before: any 1-5 digits passed (0, 70000), and a trailing newline too (Python's `$` allows one), and the pod
    was created exposing them."""
    body = {**RUNPOD_POD, "ports": ["8188/http", port]}
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    async with FakeRunPod() as fake, http.post(f"{fake.url}/pods", json=body, headers=headers) as answer:
        assert answer.status == 400
        detail = (await answer.json(content_type=None))["detail"]
        assert detail == f"ports must be formatted as port/protocol, the port 1-65535, got {[port]}"
        assert fake.pods == {}


async def test_runpod_places_a_pod_only_in_a_data_center_it_was_asked_for(http: aiohttp.ClientSession) -> None:
    """The fake's hosts are in US-TX-3. Before: a pod asked for in EU-RO-1 was created there all the same, its
    dataCenterId US-TX-3; now the 400 of a data center without room, as RunPod places a pod only where asked."""
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    async with FakeRunPod(data_center="US-TX-3") as fake:
        async with http.post(f"{fake.url}/pods", json={**RUNPOD_POD, "dataCenterIds": ["EU-RO-1"]},
                             headers=headers) as answer:
            assert answer.status == 400
            assert "EU-RO-1" in (await answer.json(content_type=None))["detail"]
            assert fake.pods == {}
        async with http.post(f"{fake.url}/pods", json={**RUNPOD_POD, "dataCenterIds": ["EU-RO-1", "US-TX-3"]},
                             headers=headers) as answer:
            assert answer.status == 201
            assert (await answer.json())["dataCenterId"] == "US-TX-3"
