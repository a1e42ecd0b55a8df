"""The comfy-multi Queue Manager HTTP contract, exercised on loopback. Each test documents one peer shape."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from queue_manager import JobStatus, QueueManagerServer, models
from queue_manager import store as store_module
from queue_manager.models import JobCompletionRequest, JobSubmitRequest
from queue_manager.store import SERVED_PER_USER, JobStore

from .conftest import FakeClock


async def submit(client: httpx.AsyncClient, workflow: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/jobs", json={"user_id": "alice", "workflow": workflow, **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def next_job(client: httpx.AsyncClient, worker_id: str = "worker-1") -> dict[str, Any] | None:
    response = await client.get("/api/workers/next-job", params={"worker_id": worker_id})
    assert response.status_code == 200, response.text
    return response.json()["job"]


# -- worker endpoints -------------------------------------------------------------------------------------


async def test_next_job_is_null_when_nothing_pending(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/workers/next-job", params={"worker_id": "w"})
    assert response.status_code == 200
    assert response.json() == {"job": None}


async def test_next_job_pops_the_job_marks_it_running_and_records_worker(
    client: httpx.AsyncClient, queue: QueueManagerServer, workflow: dict[str, Any], clock: FakeClock
) -> None:
    created = await submit(client, workflow, metadata={"run": 7})
    clock.advance(5)

    job = await next_job(client, "gpu-7")

    assert job == {"id": created["id"], "workflow": workflow, "user_id": "alice", "metadata": {"run": 7}, "attempt": 1,
                   "lease_timeout_s": 60.0}
    assert await next_job(client, "gpu-8") is None, "a popped job must not be handed out again"
    stored = (await client.get(f"/api/jobs/{created['id']}")).json()
    assert stored["status"] == "running"
    assert stored["worker_id"] == "gpu-7"
    assert stored["started_at"] == "2023-11-14T22:13:25Z"
    assert queue.store.last_heartbeat("gpu-7") == clock.now
    assert queue.store.last_heartbeat("gpu-8") == clock.now, "an empty poll is a heartbeat too"


async def test_next_job_without_worker_id_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/workers/next-job")
    assert response.status_code == 422
    assert response.json() == {
        "detail": [{"type": "missing", "loc": ["query", "worker_id"], "msg": "Field required"}]
    }


async def test_complete_job_with_wrapped_result(
    client: httpx.AsyncClient, queue: QueueManagerServer, workflow: dict[str, Any], clock: FakeClock
) -> None:
    created = await submit(client, workflow)
    await next_job(client)
    clock.advance(30)
    result = {"images": [{"filename": "quick_00001_.png", "subfolder": "alice", "type": "output"}]}

    response = await client.post("/api/workers/complete-job", params={"job_id": created["id"]}, json={"result": result})

    assert response.status_code == 200
    assert response.json() == {"status": "success", "job_id": created["id"]}
    stored = (await client.get(f"/api/jobs/{created['id']}")).json()
    assert stored["status"] == "completed"
    assert stored["result"] == result
    assert stored["completed_at"] == "2023-11-14T22:13:50Z"
    assert [(r.endpoint, r.job_id, r.body, r.status) for r in queue.reports.all()] == [
        ("complete-job", created["id"], {"result": result}, 200)
    ]


async def test_complete_job_with_bare_result_body_is_422(client: httpx.AsyncClient, workflow: dict[str, Any]) -> None:
    created = await submit(client, workflow)
    await next_job(client)
    bare = {"images": []}

    response = await client.post("/api/workers/complete-job", params={"job_id": created["id"]}, json=bare)

    assert response.status_code == 422
    assert response.json() == {
        "detail": [{"type": "missing", "loc": ["body", "result"], "msg": "Field required"}]
    }
    assert (await client.get(f"/api/jobs/{created['id']}")).json()["status"] == "running"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, [{"type": "missing", "loc": ["body"], "msg": "Field required"}]),
        (
            {"result": "done"},
            [
                {
                    "type": "dict_type",
                    "loc": ["body", "result"],
                    "msg": "Input should be a valid dictionary",
                }
            ],
        ),
        (
            ["x"],
            [
                {
                    "type": "model_attributes_type",
                    "loc": ["body"],
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                }
            ],
        ),
    ],
)
async def test_complete_job_wrong_shapes_are_422(
    client: httpx.AsyncClient, body: Any, expected: list[dict[str, Any]]
) -> None:
    response = await client.post("/api/workers/complete-job", params={"job_id": "any"}, json=body)
    assert response.status_code == 422
    assert response.json() == {"detail": expected}


async def test_complete_job_invalid_json_is_422_json_invalid(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/workers/complete-job",
        params={"job_id": "any"},
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "json_invalid",
                "loc": ["body", 1],
                "msg": "JSON decode error",
                "ctx": {"error": "Expecting property name enclosed in double quotes"},
            }
        ]
    }


async def test_complete_job_without_job_id_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/workers/complete-job", json={"result": {}})
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "missing", "loc": ["query", "job_id"], "msg": "Field required"}
    ]


def test_result_limit_is_50_mb_measured_as_the_peer_does() -> None:
    limit = 50 * 1024 * 1024
    overhead = len(json.dumps({"b": ""}))
    assert JobCompletionRequest(result={"b": "x" * (limit - overhead)})
    with pytest.raises(ValidationError, match="result payload too large"):
        JobCompletionRequest(result={"b": "x" * (limit - overhead + 1)})


@pytest.mark.parametrize(("field", "limit"), [("workflow", 10 * 1024 * 1024), ("metadata", 1024 * 1024)])
def test_workflow_and_metadata_limits_are_measured_as_the_peer_does(field: str, limit: int) -> None:
    overhead = len(json.dumps({"b": ""}))
    request = {"user_id": "alice", "workflow": {"1": {"class_type": "Noop", "inputs": {}}}}
    assert JobSubmitRequest(**{**request, field: {"b": "x" * (limit - overhead)}})
    with pytest.raises(ValidationError, match=rf"{field} size \({limit + 1} bytes\) exceeds maximum \({limit} bytes\)"):
        JobSubmitRequest(**{**request, field: {"b": "x" * (limit - overhead + 1)}})


async def test_complete_job_over_the_result_limit_is_422(
    client: httpx.AsyncClient, workflow: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "MAX_RESULT_BYTES", 1000)  # the real 50 MB costs seconds per request
    created = await submit(client, workflow)
    await next_job(client)
    response = await client.post(
        "/api/workers/complete-job", params={"job_id": created["id"]}, json={"result": {"blob": "x" * 1000}}
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["type"], error["loc"], error["ctx"]) == ("value_error", ["body", "result"], {"error": {}})
    assert error["msg"] == "Value error, result payload too large (1012 bytes) - exceeds 1000 bytes"
    assert (await client.get(f"/api/jobs/{created['id']}")).json()["status"] == "running"


async def test_complete_job_accepts_results_beyond_one_megabyte(
    client: httpx.AsyncClient, workflow: dict[str, Any]
) -> None:
    created = await submit(client, workflow)
    await next_job(client)
    result = {"blob": "x" * (3 * 1024 * 1024)}
    response = await client.post("/api/workers/complete-job", params={"job_id": created["id"]}, json={"result": result})
    assert response.status_code == 200
    assert (await client.get(f"/api/jobs/{created['id']}")).json()["result"] == result


async def test_reports_for_unknown_job_are_404(client: httpx.AsyncClient) -> None:
    unknown = str(uuid.uuid4())
    complete = await client.post("/api/workers/complete-job", params={"job_id": unknown}, json={"result": {}})
    fail = await client.post("/api/workers/fail-job", params={"job_id": unknown}, json={"error": "boom"})
    assert (complete.status_code, complete.json()) == (404, {"detail": "Job not found"})
    assert (fail.status_code, fail.json()) == (404, {"detail": "Job not found"})


async def test_fail_job_stores_the_stripped_error(client: httpx.AsyncClient, workflow: dict[str, Any]) -> None:
    created = await submit(client, workflow)
    await next_job(client)

    response = await client.post(
        "/api/workers/fail-job", params={"job_id": created["id"]}, json={"error": "  OOM on node 3\n"}
    )

    assert response.status_code == 200
    assert response.json() == {"status": "success", "job_id": created["id"]}
    stored = (await client.get(f"/api/jobs/{created['id']}")).json()
    assert (stored["status"], stored["error"], stored["result"]) == ("failed", "OOM on node 3", None)


async def test_fail_job_with_error_in_query_string_and_no_body_is_422(
    client: httpx.AsyncClient, workflow: dict[str, Any]
) -> None:
    created = await submit(client, workflow)
    await next_job(client)

    response = await client.post("/api/workers/fail-job", params={"job_id": created["id"], "error": "boom"})

    assert response.status_code == 422
    assert response.json() == {"detail": [{"type": "missing", "loc": ["body"], "msg": "Field required"}]}
    assert (await client.get(f"/api/jobs/{created['id']}")).json()["status"] == "running"


@pytest.mark.parametrize(
    ("error", "expected_type"),
    [("", "string_too_short"), ("   ", "value_error"), ("x" * 10001, "string_too_long")],
)
async def test_fail_job_bad_message_is_422(client: httpx.AsyncClient, error: str, expected_type: str) -> None:
    response = await client.post("/api/workers/fail-job", params={"job_id": "any"}, json={"error": error})
    assert response.status_code == 422
    [detail] = response.json()["detail"]
    assert (detail["type"], detail["loc"]) == (expected_type, ["body", "error"])


async def test_second_report_for_a_job_is_accepted_like_the_peer_and_recorded(
    client: httpx.AsyncClient, queue: QueueManagerServer, workflow: dict[str, Any]
) -> None:
    created = await submit(client, workflow)
    await next_job(client)
    url, params = "/api/workers/complete-job", {"job_id": created["id"]}

    first = await client.post(url, params=params, json={"result": {"n": 1}})
    second = await client.post("/api/workers/fail-job", params=params, json={"error": "late"})

    assert (first.status_code, second.status_code) == (200, 200)
    stored = (await client.get(f"/api/jobs/{created['id']}")).json()
    assert (stored["status"], stored["error"]) == ("failed", "late"), "the last report wins, as on the peer"
    assert [r.endpoint for r in queue.reports.landed(created["id"])] == ["complete-job", "fail-job"]


async def test_completing_a_pending_job_finishes_it_and_takes_it_off_the_queue(
    client: httpx.AsyncClient, workflow: dict[str, Any]
) -> None:
    created = await submit(client, workflow)
    response = await client.post("/api/workers/complete-job", params={"job_id": created["id"]}, json={"result": {}})
    assert response.status_code == 200
    assert await next_job(client) is None


# -- queue endpoints --------------------------------------------------------------------------------------


async def test_queue_status_counts_every_state(client: httpx.AsyncClient, workflow: dict[str, Any]) -> None:
    ids = [(await submit(client, workflow))["id"] for _ in range(5)]
    for _ in range(3):
        await next_job(client, "w1")
    await next_job(client, "w2")
    await client.post("/api/workers/complete-job", params={"job_id": ids[0]}, json={"result": {}})
    await client.post("/api/workers/fail-job", params={"job_id": ids[1]}, json={"error": "x"})

    response = await client.get("/api/queue/status")

    assert response.status_code == 200
    assert response.json() == {
        "mode": "fifo",
        "pending_jobs": 1,
        "running_jobs": 2,
        "completed_jobs": 1,
        "failed_jobs": 1,
        "total_workers": 2,
        "active_workers": 0,
        "queue_depth": 1,
    }


async def test_total_workers_counts_only_recent_heartbeats(client: httpx.AsyncClient, clock: FakeClock) -> None:
    await next_job(client, "old")
    clock.advance(61)
    await next_job(client, "new")
    assert (await client.get("/api/queue/status")).json()["total_workers"] == 1


async def test_health(client: httpx.AsyncClient, workflow: dict[str, Any], clock: FakeClock) -> None:
    await submit(client, workflow)
    clock.advance(12.7)
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "status": "healthy",
        "version": body["version"],
        "redis_connected": True,
        "workers_active": 0,
        "queue_depth": 1,
        "uptime_seconds": 12,
    }
    assert isinstance(body["version"], str) and body["version"]


async def test_health_uptime_never_goes_back_with_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the uptime was the wall clock's, so NTP stepping it back an hour showed uptime_seconds -3600."""
    wall = [time.time()]
    monkeypatch.setattr(time, "time", lambda: wall[0])
    async with QueueManagerServer(clock=time.time) as queue, httpx.AsyncClient(base_url=queue.url) as http:
        wall[0] -= 3600
        uptime = (await http.get("/health")).json()["uptime_seconds"]
    assert 0 <= uptime < 3600


async def test_unknown_route_is_fastapi_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nope")
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
    response = await client.put("/api/jobs")
    assert (response.status_code, response.json()) == (405, {"detail": "Method Not Allowed"})


# -- user endpoints ---------------------------------------------------------------------------------------


async def test_submit_returns_201_with_the_full_job(client: httpx.AsyncClient, workflow: dict[str, Any]) -> None:
    first = await submit(client, workflow)
    second = await submit(client, workflow, priority=0, metadata={"lesson": 3})

    uuid.UUID(first["id"])
    assert first == {
        "id": first["id"],
        "user_id": "alice",
        "status": "pending",
        "priority": 2,
        "created_at": "2023-11-14T22:13:20",
        "started_at": None,
        "completed_at": None,
        "worker_id": None,
        "result": None,
        "error": None,
        "position_in_queue": 0,
        "estimated_wait_time": None,
        "attempt": 1,
        "history": [],
    }
    assert (second["priority"], second["position_in_queue"]) == (0, 1), "fifo ignores priority"


@pytest.mark.parametrize("user_id", ["a", "A-z_09", "u" * 100])
async def test_submit_accepts_path_safe_user_ids(
    client: httpx.AsyncClient, workflow: dict[str, Any], user_id: str
) -> None:
    response = await client.post("/api/jobs", json={"user_id": user_id, "workflow": workflow})
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("user_id", "expected_type"),
    [
        ("", "string_too_short"),
        ("u" * 101, "string_too_long"),
        ("../etc", "value_error"),
        ("a/b", "value_error"),
        ("a.b", "value_error"),
        ("a b", "value_error"),
        ("é", "value_error"),
        ("alice\n", "value_error"),
        (5, "string_type"),
    ],
)
async def test_submit_rejects_unsafe_user_ids(
    client: httpx.AsyncClient, workflow: dict[str, Any], user_id: Any, expected_type: str
) -> None:
    response = await client.post("/api/jobs", json={"user_id": user_id, "workflow": workflow})
    assert response.status_code == 422
    [detail] = response.json()["detail"]
    assert (detail["type"], detail["loc"]) == (expected_type, ["body", "user_id"])


@pytest.mark.parametrize(
    ("fields", "loc", "expected_type"),
    [
        ({"workflow": {}}, ["body", "workflow"], "value_error"),
        ({"workflow": [1]}, ["body", "workflow"], "dict_type"),
        ({"workflow": {"1": "x" * (10 * 1024 * 1024)}}, ["body", "workflow"], "value_error"),
        ({"priority": 4}, ["body", "priority"], "enum"),
        ({"priority": -1}, ["body", "priority"], "enum"),
        ({"metadata": {"m": "x" * (1024 * 1024)}}, ["body", "metadata"], "value_error"),
        ({"metadata": None}, ["body", "metadata"], "dict_type"),
    ],
)
async def test_submit_rejects_bad_bodies(
    client: httpx.AsyncClient, workflow: dict[str, Any], fields: dict[str, Any], loc: list[str], expected_type: str
) -> None:
    response = await client.post("/api/jobs", json={"user_id": "alice", "workflow": workflow, **fields})
    assert response.status_code == 422
    [detail] = response.json()["detail"]
    assert (detail["type"], detail["loc"]) == (expected_type, loc)


async def test_submit_without_workflow_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/jobs", json={"user_id": "alice"})
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {"type": "missing", "loc": ["body", "workflow"], "msg": "Field required"}
        ]
    }


async def test_submit_past_max_queue_depth_is_429(clock: FakeClock, workflow: dict[str, Any]) -> None:
    async with (
        QueueManagerServer(max_queue_depth=2, clock=clock) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        await submit(client, workflow)
        await submit(client, workflow)
        response = await client.post("/api/jobs", json={"user_id": "alice", "workflow": workflow})
        assert (response.status_code, response.json()) == (429, {"detail": "Queue is full (max depth: 2)"})

        await next_job(client)  # only pending jobs count towards the depth
        await submit(client, workflow)


async def test_default_max_queue_depth_is_100(queue: QueueManagerServer, client: httpx.AsyncClient) -> None:
    for _ in range(100):
        queue.store.submit("bulk", {"1": {}}, max_depth=queue.max_queue_depth)
    response = await client.post("/api/jobs", json={"user_id": "alice", "workflow": {"1": {}}})
    assert (response.status_code, response.json()) == (429, {"detail": "Queue is full (max depth: 100)"})


async def test_get_job_unknown_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/jobs/{uuid.uuid4()}")
    assert (response.status_code, response.json()) == (404, {"detail": "Job not found"})


async def test_list_jobs_filters_by_user_status_and_limit(client: httpx.AsyncClient, workflow: dict[str, Any]) -> None:
    alice = [(await submit(client, workflow))["id"] for _ in range(3)]
    bob = (await client.post("/api/jobs", json={"user_id": "bob", "workflow": workflow})).json()["id"]
    await next_job(client)  # alice[0] is now running

    async def ids(**params: Any) -> list[str]:
        response = await client.get("/api/jobs", params=params)
        assert response.status_code == 200
        return [job["id"] for job in response.json()]

    assert await ids() == [*alice, bob]
    assert await ids(user_id="alice") == alice
    assert await ids(user_id="alice", status="pending") == alice[1:]
    assert await ids(status="running") == alice[:1]
    assert await ids(limit=2) == alice[:2]
    listed = (await client.get("/api/jobs", params={"user_id": "alice"})).json()
    assert [job["position_in_queue"] for job in listed] == [None, 0, 1]


async def test_list_jobs_without_a_limit_lists_the_first_100(
    client: httpx.AsyncClient, queue: QueueManagerServer, workflow: dict[str, Any]
) -> None:
    submitted = [queue.store.submit("alice", workflow).id for _ in range(101)]
    assert [job["id"] for job in (await client.get("/api/jobs")).json()] == submitted[:100]


async def test_list_jobs_bad_query_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/jobs", params={"status": "done", "limit": "many"})
    assert response.status_code == 422
    assert [(d["type"], d["loc"]) for d in response.json()["detail"]] == [
        ("enum", ["query", "status"]),
        ("int_parsing", ["query", "limit"]),
    ]


async def test_cancel_pending_job_removes_it(client: httpx.AsyncClient, workflow: dict[str, Any]) -> None:
    created = await submit(client, workflow)

    response = await client.delete(f"/api/jobs/{created['id']}")

    assert (response.status_code, response.content) == (204, b"")
    assert (await client.get(f"/api/jobs/{created['id']}")).status_code == 404, "the peer deletes pending jobs"
    assert await next_job(client) is None


async def test_cancel_running_job_marks_it_cancelled_until_its_worker_reports(
    client: httpx.AsyncClient, workflow: dict[str, Any]
) -> None:
    created = await submit(client, workflow)
    await next_job(client)

    assert (await client.delete(f"/api/jobs/{created['id']}")).status_code == 204
    assert (await client.get(f"/api/jobs/{created['id']}")).json()["status"] == "cancelled"

    report = await client.post("/api/workers/complete-job", params={"job_id": created["id"]}, json={"result": {}})
    assert report.status_code == 200
    assert (await client.get(f"/api/jobs/{created['id']}")).json()["status"] == "completed"


async def test_cancel_finished_or_unknown_job(client: httpx.AsyncClient, workflow: dict[str, Any]) -> None:
    created = await submit(client, workflow)
    await next_job(client)
    await client.post("/api/workers/complete-job", params={"job_id": created["id"]}, json={"result": {}})

    finished = await client.delete(f"/api/jobs/{created['id']}")
    unknown = await client.delete(f"/api/jobs/{uuid.uuid4()}")

    assert (finished.status_code, finished.json()) == (
        400,
        {"detail": "Cannot cancel job in JobStatus.COMPLETED state"},
    )
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Job not found"})


# -- queue modes ------------------------------------------------------------------------------------------


async def pop_order(mode: str, clock: FakeClock, submissions: list[tuple[str, int]]) -> list[tuple[str, int]]:
    async with QueueManagerServer(mode=mode, clock=clock) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        by_id = {}
        for user_id, priority in submissions:
            response = await client.post(
                "/api/jobs", json={"user_id": user_id, "workflow": {"1": {}}, "priority": priority}
            )
            by_id[response.json()["id"]] = (user_id, priority)
        positions = {job_id: queue.store.pending_positions(queue.mode)[job_id] for job_id in by_id}
        order = []
        while (job := await next_job(client)) is not None:
            order.append(job["id"])
        assert [positions[job_id] for job_id in order] == list(range(len(order))), "positions predict pops"
        assert (await client.get("/api/queue/status")).json()["mode"] == mode
        return [by_id[job_id] for job_id in order]


async def test_fifo_mode_serves_in_submission_order(clock: FakeClock) -> None:
    submissions = [("a", 3), ("b", 0), ("a", 2), ("c", 1)]
    assert await pop_order("fifo", clock, submissions) == submissions


async def test_priority_mode_serves_lowest_number_first_then_fifo(clock: FakeClock) -> None:
    submissions = [("a", 2), ("b", 3), ("c", 0), ("d", 2), ("e", 0)]
    assert await pop_order("priority", clock, submissions) == [("c", 0), ("e", 0), ("a", 2), ("d", 2), ("b", 3)]


async def test_round_robin_mode_alternates_between_users(clock: FakeClock) -> None:
    submissions = [("a", 2), ("a", 2), ("a", 2), ("b", 2), ("c", 2), ("b", 2)]
    users = [user for user, _ in await pop_order("round_robin", clock, submissions)]
    assert users == ["a", "b", "c", "a", "b", "a"]


async def test_round_robin_favours_users_served_least_so_far(clock: FakeClock, workflow: dict[str, Any]) -> None:
    async with (
        QueueManagerServer(mode="round_robin", clock=clock) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        for _ in range(2):
            queue.store.submit("heavy", workflow)
        await next_job(client)
        await next_job(client)
        queue.store.submit("heavy", workflow)
        newcomer = queue.store.submit("newcomer", workflow)
        assert (await next_job(client))["id"] == newcomer.id


def test_job_status_values_match_the_peer() -> None:
    assert [status.value for status in JobStatus] == ["pending", "running", "completed", "failed", "cancelled"]


def test_round_robin_counts_what_each_user_was_served_from_an_index_not_the_rows(tmp_path: Path) -> None:
    # Every pop counts each user's started jobs; read from the rows, that reads every stored workflow.
    # A database from before the index gains it when opened.
    db = tmp_path / "jobs.db"
    with contextlib.closing(sqlite3.connect(db)) as old:
        old.executescript(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL,"
            " status TEXT NOT NULL, priority INTEGER NOT NULL, workflow TEXT NOT NULL, metadata TEXT NOT NULL,"
            " result TEXT, error TEXT, worker_id TEXT, created_at REAL NOT NULL, started_at REAL, completed_at REAL);"
        )
    JobStore(db).close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        plan = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {SERVED_PER_USER}"))
    assert "COVERING INDEX jobs_by_user_start" in plan


async def test_a_list_stops_before_its_results_pass_the_budget(
    client: httpx.AsyncClient, workflow: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: every result was held at once; 8 completed jobs of 48 MB results made one list of them hold
    1.5 GB (bench/queue_memory.py list-results: 1567 MB peak RSS, a 384 MB answer)."""
    monkeypatch.setattr(store_module, "LIST_BUDGET_BYTES", 5_000, raising=False)
    ids = []
    for _ in range(3):
        ids.append((await submit(client, workflow))["id"])
        job = await next_job(client)
        answer = await client.post("/api/workers/complete-job", params={"job_id": job["id"]},
                                   json={"result": {"blob": "x" * 3_000}})
        assert answer.status_code == 200
    listed = (await client.get("/api/jobs", params={"status": "completed", "limit": 50})).json()
    assert [job["id"] for job in listed] == ids[:1], "two results of 3 KB pass a 5 KB budget: one job"
    monkeypatch.setattr(store_module, "LIST_BUDGET_BYTES", 1_000)
    listed = (await client.get("/api/jobs", params={"status": "completed"})).json()
    assert [job["id"] for job in listed] == ids[:1], "the first job is listed even when it alone passes"
    assert listed[0]["result"] == {"blob": "x" * 3_000}
