"""What the worker reads of the queue manager's answers is bounded (MAX_QUEUE_ANSWER_BYTES): a broken or wrong
peer answering too much is a failed call, given up as the answer arrives, logged naming the limit. Before,
httpx read every answer whole into memory."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

import worker.queue_client

SMALL_BOUND = 64 << 10
PADDING = "x" * (1 << 20)  # valid JSON around it: only the size is wrong


@pytest.fixture(autouse=True)
def small_bound(monkeypatch):
    monkeypatch.setattr(worker.queue_client, "MAX_QUEUE_ANSWER_BYTES", SMALL_BOUND)


def too_large(logs: list[dict]) -> list[dict]:
    return [entry for entry in logs if entry["event"] == "peer_answer_too_large"]


async def test_a_next_job_answer_past_the_limit_is_a_failed_poll_and_the_worker_polls_on(
    qm, comfy, make_worker, workflows
):
    qm.faults.inject("next-job", status=200, body={"job": None, "padding": PADDING})
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(serverless_max_idle_polls=1)
    with capture_logs() as logs:
        assert await worker.run() == 0
    [failure] = [e for e in logs if e["event"] == "Poll failed; backing off"]
    assert f"more than {SMALL_BOUND} bytes" in failure["error"] and "MAX_QUEUE_ANSWER_BYTES" in failure["error"]
    [logged] = too_large(logs)
    assert (logged["peer"], logged["limit_bytes"], logged["request"]) == (
        "queue manager", SMALL_BOUND, "GET /api/workers/next-job"
    )
    assert worker.state.metrics.poll_errors._value.get() == 1
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job", "the next poll took the job"


async def test_an_oversized_answer_to_a_completion_that_landed_is_checked_and_counted_completed(
    qm, comfy, make_worker, workflows
):
    qm.faults.inject("complete-job", status=200, body={"status": "ok", "padding": PADDING}, after=True)
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker()
    with capture_logs() as logs:
        assert await worker.run() == 0
    assert [r.endpoint for r in qm.reports.for_job(job.id)] == ["complete-job"], "not retried"
    assert qm.store.get(job.id).status == "completed"
    assert [e["request"] for e in too_large(logs)] == ["POST /api/workers/complete-job"]
    [refused] = [e for e in logs if e["event"] == "Queue manager refused the report"]
    assert f"more than {SMALL_BOUND} bytes" in refused["error"]
    assert any(e.get("note") == "an earlier try of the report had landed" for e in logs)
    assert worker.state.jobs_completed == 1


async def test_an_oversized_answer_to_a_failure_report_is_a_refused_report_not_retried(
    qm, comfy, make_worker, workflows
):
    qm.faults.inject("fail-job", status=200, body={"status": "ok", "padding": PADDING}, after=True)
    job = qm.store.submit("alice", workflows["invalid_unknown_node"])
    with capture_logs() as logs:
        assert await make_worker().run() == 0
    assert [r.endpoint for r in qm.reports.for_job(job.id)] == ["fail-job"]
    assert qm.store.get(job.id).status == "failed"
    [refused] = [e for e in logs if e["event"] == "Queue manager refused the report"]
    assert "MAX_QUEUE_ANSWER_BYTES" in refused["error"]
