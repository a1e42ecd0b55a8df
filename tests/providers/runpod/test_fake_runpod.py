"""The fake RunPod API is as strict as the real one: contract errors, rules, actions, capacity and billing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from standins.runpod import FakeRunPod

from ...conftest import ManualClock
from .conftest import API_KEY, GPU, pod_body


@pytest.fixture
async def http(fake: FakeRunPod) -> httpx.AsyncClient:
    async with httpx.AsyncClient(base_url=fake.url, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


async def create(http: httpx.AsyncClient, **overrides: Any) -> httpx.Response:
    return await http.post("/pods", json=pod_body(**overrides))


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"bogus": True}, "additional properties 'bogus'"),
        ({"imageName": "x"}, "additional properties 'imageName'"),  # the v1 spelling is refused by name
        ({"name": ""}, "/name"),
        ({"image": None}, "/image"),
        ({"disk": 0}, "/disk"),
        ({"env": {"A": 1}}, "/env"),
        ({"cloud": "ALL"}, "/cloud"),
        ({"gpu": {"id": GPU, "count": 0}}, "/gpu/count"),
        ({"gpu": {"count": 1}}, "missing property 'id'"),
        ({"gpu": {"id": GPU, "gpuCount": 1}}, "additional properties 'gpuCount'"),
        ({"mounts": {"network": [{"volumeId": "vol-models"}]}}, "missing property 'path'"),
        ({"mounts": {"volume": {}}}, "additional properties 'volume'"),
    ],
)
async def test_contract_violations_are_422_naming_the_field(
    http: httpx.AsyncClient, fake: FakeRunPod, overrides: dict, fragment: str
) -> None:
    response = await create(http, **overrides)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["title"] == "Unprocessable Entity" and body["status"] == 422
    assert any(fragment in error for error in body["errors"]), body
    assert fake.pods == {}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"cpu": {"id": "cpu5c", "vcpuCount": 4}}, "exactly one of gpu or cpu"),
        (
            {
                "mounts": {
                    "persistent": {"size": 20, "path": "/w"},
                    "network": [{"volumeId": "vol-models", "path": "/m"}],
                }
            },
            "mutually exclusive",
        ),
        ({"mounts": {"network": [{"volumeId": "vol-nope", "path": "/models"}]}}, "vol-nope"),
        ({"gpu": {"id": "NVIDIA Imaginary"}}, "unknown GPU type"),
        ({"ports": ["8000"]}, "port/protocol"),
    ],
)
async def test_rule_violations_are_400(http: httpx.AsyncClient, overrides: dict, fragment: str) -> None:
    response = await create(http, **overrides)
    assert response.status_code == 400
    assert fragment in response.json()["detail"]


async def test_missing_or_wrong_key_is_401(fake: FakeRunPod) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as anonymous:
        assert (await anonymous.get("/pods")).status_code == 401
        wrong = await anonymous.get("/pods", headers={"Authorization": "Bearer rpa_wrong"})
        assert wrong.status_code == 401 and wrong.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/pods", {"GET", "POST"}),
        ("PUT", "/pods/{pod_id}", {"GET", "DELETE"}),  # PATCH is RunPod's updatePod, which the fake lacks
        ("GET", "/pods/{pod_id}/action", {"POST"}),
        ("DELETE", "/catalog/gpus", {"GET"}),
    ],
)
async def test_a_wrong_method_is_the_published_405(
    http: httpx.AsyncClient, fake: FakeRunPod, method: str, path: str, allowed: set[str]
) -> None:
    """openapi components.responses.MethodNotAllowedError: problem body titled so, and the path's methods in Allow."""
    pod_id = (await create(http)).json()["id"]
    response = await http.request(method, path.format(pod_id=pod_id), json={"action": "stop"})
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (response.json()["title"], response.json()["status"]) == ("Method Not Allowed", 405)
    assert set(response.headers["Allow"].split(", ")) - {"HEAD"} == allowed
    assert (await http.get(f"/pods/{pod_id}")).json()["status"] == "RUNNING"


async def test_a_post_without_a_body_is_a_400_not_a_500(http: httpx.AsyncClient, fake: FakeRunPod) -> None:
    pod_id = (await create(http)).json()["id"]
    for path in ("/pods", f"/pods/{pod_id}/action"):
        response = await http.post(path, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["detail"] == "request body is required"
    assert len(fake.pods) == 1 and (await http.get(f"/pods/{pod_id}")).json()["status"] == "RUNNING"


async def test_pods_provision_asynchronously(http: httpx.AsyncClient, fake: FakeRunPod, clock: ManualClock) -> None:
    fake.provision_delay_s, fake.start_delay_s = 10, 20
    pod = (await create(http)).json()
    assert (pod["status"], pod["actions"], pod["startedAt"], pod["runtime"]) == (
        "PROVISIONING",
        ["stop", "terminate"],
        None,
        None,
    )
    clock.advance(10)
    assert (await http.get(f"/pods/{pod['id']}")).json()["status"] == "STARTING"
    clock.advance(20)
    running = (await http.get(f"/pods/{pod['id']}")).json()
    assert (
        running["status"] == "RUNNING"
        and running["startedAt"]
        and running["actions"] == ["stop", "restart", "terminate"]
    )


async def test_a_listing_that_lags_shows_a_new_pod_only_after_the_lag(
    http: httpx.AsyncClient, fake: FakeRunPod, clock: ManualClock
) -> None:
    fake.listing_lag_s = 60
    pod = (await create(http)).json()
    assert (await http.get("/pods")).json()["pods"] == []
    assert (await http.get(f"/pods/{pod['id']}")).status_code == 200  # found by its id at once
    clock.advance(60)
    assert [p["id"] for p in (await http.get("/pods")).json()["pods"]] == [pod["id"]]


async def test_a_delayed_answer_comes_after_the_caller_gave_up_and_the_request_took_effect(
    http: httpx.AsyncClient, fake: FakeRunPod
) -> None:
    fake.delay_next("/pods", 1.0, method="POST")
    with pytest.raises(httpx.ReadTimeout):
        # Only the answer is waited for briefly: a connect or write given 0.2 s could time out in a stall.
        await http.post("/pods", json=pod_body(), timeout=httpx.Timeout(5, read=0.2))
    assert len(fake.pods) == 1
    assert (await create(http)).status_code == 201  # only the next request was delayed


async def test_actions_follow_the_status(http: httpx.AsyncClient) -> None:
    pod_id = (await create(http)).json()["id"]
    assert (await http.post(f"/pods/{pod_id}/action", json={"action": "start"})).status_code == 409
    stopped = await http.post(f"/pods/{pod_id}/action", json={"action": "stop"})
    assert stopped.status_code == 200 and stopped.json()["status"] == "EXITED" and stopped.json()["cost"] == 0.0
    assert (await http.post(f"/pods/{pod_id}/action", json={"action": "pause"})).status_code == 422
    assert (await http.post(f"/pods/{pod_id}/action", json={"action": "stop", "x": 1})).status_code == 422
    assert (await http.post(f"/pods/{pod_id}/action", json={"action": "terminate"})).status_code == 204
    assert (await http.get(f"/pods/{pod_id}")).status_code == 404
    assert (await http.delete(f"/pods/{pod_id}")).status_code == 404


async def test_billing_is_per_second_while_the_pod_holds_compute(
    http: httpx.AsyncClient, fake: FakeRunPod, clock: ManualClock
) -> None:
    pod_id = (await create(http)).json()["id"]
    clock.advance(90.2)
    assert fake.billed_seconds(pod_id) == 91
    await http.post(f"/pods/{pod_id}/action", json={"action": "stop"})
    clock.advance(1000)
    assert fake.billed_seconds(pod_id) == 91  # stopped: compute no longer billed
    await http.post(f"/pods/{pod_id}/action", json={"action": "start"})
    clock.advance(9.8)
    await http.delete(f"/pods/{pod_id}")
    clock.advance(1000)
    assert fake.billed_seconds(pod_id) == 100
    assert fake.billed_usd() == pytest.approx(100 * 0.69 / 3600, abs=1e-6)


async def test_capacity_and_balance_refuse_creates(
    http: httpx.AsyncClient, fake: FakeRunPod, clock: ManualClock
) -> None:
    fake.capacity[GPU] = 1
    assert (await create(http)).status_code == 201
    refused = await create(http, name="second")
    assert refused.status_code == 400 and "no longer any instances available" in refused.json()["detail"]
    fake.capacity.clear()
    fake.balance_usd = 0.01
    clock.advance(3600)
    assert (await create(http, name="third")).status_code == 402


async def test_pod_that_exits_on_its_own_stops_billing(
    fake: FakeRunPod, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    pod_id = (await create(http)).json()["id"]
    clock.advance(30)
    fake.exit_pod(pod_id)
    clock.advance(30)
    assert (await http.get(f"/pods/{pod_id}")).json()["status"] == "EXITED"
    assert fake.billed_seconds(pod_id) == 30


async def test_injected_faults(http: httpx.AsyncClient, fake: FakeRunPod) -> None:
    fake.fail_next("/pods", 503, method="GET", retry_after="2")
    failed = await http.get("/pods")
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "2" and failed.json()["status"] == 503
    fake.fail_next("/pods", 502, method="POST", non_json=True, after_effect=True)
    lost = await create(http)
    assert lost.status_code == 502 and "Bad Gateway" in lost.text
    assert len(fake.pods) == 1


async def test_status_changes_are_announced_with_the_container_env(
    http: httpx.AsyncClient, fake: FakeRunPod, clock: ManualClock
) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []
    fake.on_status_change = lambda pod_id, status, env: seen.append((pod_id, status, env))
    fake.secrets["queue-token"] = "s3cret"
    fake.start_delay_s = 5
    env = {"QUEUE_MANAGER_TOKEN": "{{ RUNPOD_SECRET_queue-token }}", "OTHER": "{{ RUNPOD_SECRET_missing }}"}
    pod_id = (await create(http, env=env)).json()["id"]
    clock.advance(5)
    await http.get("/pods")
    await http.delete(f"/pods/{pod_id}")
    assert [(p, s) for p, s, _ in seen] == [
        (pod_id, "PROVISIONING"),
        (pod_id, "STARTING"),
        (pod_id, "RUNNING"),
        (pod_id, "TERMINATED"),
    ]
    assert seen[2][2] == {"QUEUE_MANAGER_TOKEN": "s3cret", "OTHER": "{{ RUNPOD_SECRET_missing }}"}
    assert (await http.get("/pods")).json()["pods"] == []
