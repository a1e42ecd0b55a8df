"""Payloads against RunPod's published OpenAPI document (excerpt in tests/fixtures/runpod, provenance inside).

What the project sends must validate against the request schemas; what the fake answers must validate against
the response schemas; and a body the schema rejects, the fake rejects too, so the fake is no more lenient than
the contract. The official `runpod` package is no oracle here: it speaks only the GraphQL API (docs/providers.md).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from standins.runpod import FakeRunPod

from ...conftest import ManualClock
from .conftest import API_KEY, GPU, pod_body


@pytest.fixture(scope="module")
def validator_for(openapi: dict[str, Any]):
    registry = Registry().with_resource("urn:runpod-v2", Resource(contents=openapi, specification=DRAFT202012))

    def build(schema_name: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"urn:runpod-v2#/components/schemas/{schema_name}"}, registry=registry)

    return build


def problems(validator: Draft202012Validator, instance: Any) -> list[str]:
    return [error.message for error in validator.iter_errors(instance)]


def test_provenance_is_recorded(openapi: dict[str, Any]) -> None:
    provenance = openapi["x-provenance"]
    assert "runpod/docs" in provenance["source"] and len(provenance["commit"]) == 40
    assert openapi["paths"]["/v2/pods/{id}/action"]["post"]["requestBody"] == "PodActionRequest"


async def test_backend_create_body_matches_create_pod_request(
    fake: FakeRunPod, runpod: RunPodClient, validator_for
) -> None:
    spec_body = {k: v for k, v in pod_body().items() if k != "name"}
    backend = RunPodBackend(runpod, "comfy-test", spec_body, health=PodHealthProbe(fake.health_url))
    await backend.apply(1)
    await backend.aclose()
    sent = fake.requests_to("/pods", "POST")[0].json
    assert problems(validator_for("CreatePodRequest"), sent) == []


@pytest.mark.parametrize("action", ["start", "stop", "restart", "terminate"])
def test_action_bodies_match(validator_for, action: str) -> None:
    assert problems(validator_for("PodActionRequest"), {"action": action}) == []
    assert problems(validator_for("PodActionRequest"), {"action": "pause"})


async def test_fake_answers_match_the_response_schemas(fake: FakeRunPod, clock: ManualClock, validator_for) -> None:
    fake.provision_delay_s = 5
    async with httpx.AsyncClient(base_url=fake.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        created = (await http.post("/pods", json=pod_body())).json()
        assert problems(validator_for("Pod"), created) == []
        clock.advance(10)
        listing = (await http.get("/pods")).json()
        assert listing["pods"][0]["status"] == "RUNNING"
        assert problems(validator_for("ListPodsResponse"), listing) == []
        stopped = (await http.post(f"/pods/{created['id']}/action", json={"action": "stop"})).json()
        assert problems(validator_for("Pod"), stopped) == []
        assert problems(validator_for("GpuType"), (await http.get(f"/catalog/gpus/{GPU}")).json()) == []
        assert problems(validator_for("ListGpuTypesResponse"), (await http.get("/catalog/gpus")).json()) == []
        for failing in (
            await http.post("/pods", json={"name": "x"}),
            await http.get("/pods/nope"),
            await http.post(f"/pods/{created['id']}/action", json={"action": "stop"}),
            await http.get("/pods", headers={"Authorization": "Bearer wrong"}),
        ):
            assert failing.status_code >= 400
            assert problems(validator_for("ErrorResponse"), failing.json()) == []


INVALID_BODIES = [
    {"bogus": True},
    {"imageName": "runpod/pytorch"},
    {"name": ""},
    {"image": 5},
    {"disk": 0},
    {"env": {"A": 1}},
    {"ports": "8000/http"},
    {"cloud": "ALL"},
    {"gpu": {"count": 1}},
    {"gpu": {"id": GPU, "count": 0}},
    {"gpu": {"id": GPU, "allowedCudaVersions": ["12"]}},
    {"gpu": {"id": GPU, "gpuTypeIds": [GPU]}},
    {"mounts": {"network": [{"volumeId": "vol-models"}]}},
    {"mounts": {"network": [{"volumeId": "vol-models", "path": "/a"}, {"volumeId": "vol-models", "path": "/b"}]}},
    {"mounts": {"persistent": {"size": 5, "path": "/w"}}},
    {"registry": 3},
    {"templateId": 5},
    {"templateId": ""},
    {"cpu": "cpu5c"},
    {"cpu": {"id": "cpu5c"}},
    {"cpu": {"id": "cpu5c", "vcpuCount": 1}},
    {"cpu": {"id": "cpu5c", "vcpuCount": 4, "memory": 16}},
]


@pytest.mark.parametrize("overrides", INVALID_BODIES, ids=lambda o: ",".join(o))
async def test_what_the_schema_rejects_the_fake_rejects(
    fake: FakeRunPod, validator_for, overrides: dict[str, Any]
) -> None:
    body = pod_body(**overrides)
    assert problems(validator_for("CreatePodRequest"), body), "the case must break the published contract"
    async with httpx.AsyncClient(base_url=fake.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        response = await http.post("/pods", json=body)
    assert response.status_code == 422, response.text
    assert fake.pods == {}


async def test_missing_image_is_rejected_by_both(fake: FakeRunPod, validator_for) -> None:
    body = {k: v for k, v in pod_body().items() if k != "image"}
    assert problems(validator_for("CreatePodRequest"), body)
    async with httpx.AsyncClient(base_url=fake.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        assert (await http.post("/pods", json=body)).status_code == 422
