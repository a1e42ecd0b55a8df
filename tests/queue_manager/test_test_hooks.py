"""The stand-in's test hooks: fault injection, the report record, direct submission."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from queue_manager import JobStatus, QueueManagerServer


async def test_status_faults_answer_the_next_n_calls_then_stop(
    queue: QueueManagerServer, client: httpx.AsyncClient
) -> None:
    job = queue.store.submit("alice", {"1": {}})
    queue.store.pop_next("w", queue.mode)
    queue.faults.inject("complete-job", status=503, times=2)
    params, body = {"job_id": job.id}, {"result": {"ok": True}}

    answers = [await client.post("/api/workers/complete-job", params=params, json=body) for _ in range(3)]

    assert [r.status_code for r in answers] == [503, 503, 200]
    assert answers[0].json() == {"detail": "Service Unavailable"}
    assert [(r.status, r.handled_status) for r in queue.reports.for_job(job.id)] == [
        (503, None),
        (503, None),
        (200, 200),
    ]
    assert len(queue.reports.landed(job.id)) == 1
    assert queue.faults.pending("complete-job") == 0


async def test_fault_with_a_non_json_body_like_a_proxy(queue: QueueManagerServer, client: httpx.AsyncClient) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    queue.faults.inject("next-job", status=502, body=page)
    response = await client.get("/api/workers/next-job", params={"worker_id": "w"})
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == page


async def test_fault_with_a_custom_json_body(queue: QueueManagerServer, client: httpx.AsyncClient) -> None:
    queue.faults.inject("queue-status", status=500, body={"detail": "redis down"})
    response = await client.get("/api/queue/status")
    assert (response.status_code, response.json()) == (500, {"detail": "redis down"})


async def test_dropped_connection_before_the_pop_leaves_the_job_pending(
    queue: QueueManagerServer, client: httpx.AsyncClient
) -> None:
    job = queue.store.submit("alice", {"1": {}})
    queue.faults.inject("next-job", drop=True)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/api/workers/next-job", params={"worker_id": "w"})
    assert queue.store.get(job.id).status is JobStatus.PENDING


async def test_lost_answer_after_the_report_landed_shows_as_a_double_report(
    queue: QueueManagerServer, client: httpx.AsyncClient
) -> None:
    """The peer completed the job but the proxy answered 502: a client retry reports it twice."""
    job = queue.store.submit("alice", {"1": {}})
    queue.store.pop_next("w", queue.mode)
    queue.faults.inject("complete-job", status=502, after=True)
    params, body = {"job_id": job.id}, {"result": {"n": 1}}

    lost = await client.post("/api/workers/complete-job", params=params, json=body)
    assert lost.status_code == 502
    assert queue.store.get(job.id).status is JobStatus.COMPLETED
    retry = await client.post("/api/workers/complete-job", params=params, json=body)

    assert retry.status_code == 200
    assert [(r.status, r.handled_status) for r in queue.reports.landed(job.id)] == [(502, 200), (200, 200)]


async def test_dropped_connection_after_the_report_landed(queue: QueueManagerServer, client: httpx.AsyncClient) -> None:
    job = queue.store.submit("alice", {"1": {}})
    queue.store.pop_next("w", queue.mode)
    queue.faults.inject("fail-job", drop=True, after=True)

    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/api/workers/fail-job", params={"job_id": job.id}, json={"error": "boom"})

    [report] = queue.reports.for_job(job.id)
    assert (report.endpoint, report.body, report.status, report.landed) == ("fail-job", {"error": "boom"}, None, True)
    assert queue.store.get(job.id).status is JobStatus.FAILED


async def test_delay_then_normal_answer(queue: QueueManagerServer, client: httpx.AsyncClient) -> None:
    queue.faults.inject("health", delay_s=0.2)
    started = time.monotonic()
    response = await client.get("/health")
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2


async def test_a_delay_after_the_work_answers_it_late_without_doing_it_twice(
    queue: QueueManagerServer, client: httpx.AsyncClient
) -> None:
    """Before, a delay-only fault with after=True ran the handler again after the delay: a poll popped two jobs."""
    first, second = queue.store.submit("alice", {"1": {}}), queue.store.submit("alice", {"1": {}})
    queue.faults.inject("next-job", delay_s=0.2, after=True)
    started = time.monotonic()
    response = await client.get("/api/workers/next-job", params={"worker_id": "w"})
    assert time.monotonic() - started >= 0.2
    assert response.json()["job"]["id"] == first.id
    assert queue.store.get(second.id).status is JobStatus.PENDING


async def test_delay_lets_a_client_time_out(queue: QueueManagerServer, client: httpx.AsyncClient) -> None:
    queue.faults.inject("next-job", delay_s=0.3, status=504)
    with pytest.raises(httpx.ReadTimeout):
        # Only the answer is waited for briefly: a connect given 0.05 s could time out in a stall (ConnectTimeout).
        await client.get("/api/workers/next-job", params={"worker_id": "w"}, timeout=httpx.Timeout(5, read=0.05))


async def test_faults_are_per_endpoint(queue: QueueManagerServer, client: httpx.AsyncClient) -> None:
    queue.faults.inject("fail-job", status=500)
    assert (await client.get("/api/queue/status")).status_code == 200
    assert (await client.post("/api/workers/fail-job", params={"job_id": "x"}, json={"error": "e"})).status_code == 500


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint": "nope", "status": 500},
        {"endpoint": "health"},
        {"endpoint": "health", "status": 500, "drop": True},
        {"endpoint": "health", "status": 500, "times": 0},
    ],
)
def test_inject_rejects_meaningless_faults(kwargs: dict[str, object]) -> None:
    queue = QueueManagerServer(test_hooks=True)
    with pytest.raises(ValueError):
        queue.faults.inject(**kwargs)  # type: ignore[arg-type]


async def test_reports_record_rejected_shapes_too(queue: QueueManagerServer, client: httpx.AsyncClient) -> None:
    await client.post("/api/workers/complete-job", params={"job_id": "j1"}, json={"images": []})
    await client.post("/api/workers/fail-job", params={"job_id": "j1", "error": "boom"})
    await client.post("/api/workers/fail-job", params={"job_id": "j1"}, content=b"not json")

    assert [(r.endpoint, r.body, r.status, r.landed) for r in queue.reports.all()] == [
        ("complete-job", {"images": []}, 422, False),
        ("fail-job", None, 422, False),
        ("fail-job", "not json", 422, False),
    ]
    queue.reports.clear()
    assert len(queue.reports) == 0


async def test_direct_submission_bypasses_http_validation(queue: QueueManagerServer, client: httpx.AsyncClient) -> None:
    """Tests may plant a job with a hostile user_id to prove the worker checks it again."""
    job = queue.store.submit("../../etc", {"1": {}}, priority=0, metadata={"k": "v"})
    handed = (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json()["job"]
    assert handed == {"id": job.id, "workflow": {"1": {}}, "user_id": "../../etc", "metadata": {"k": "v"}, "attempt": 1,
                      "lease_timeout_s": 60.0}
    assert [j.id for j in queue.store.list(status=JobStatus.RUNNING)] == [job.id]


async def test_server_can_restart_on_the_same_object(tmp_path) -> None:
    queue = QueueManagerServer(tmp_path / "q.db")
    for _ in range(2):
        url = await queue.start()
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/health")).status_code == 200
        await queue.stop()
    await asyncio.sleep(0)
