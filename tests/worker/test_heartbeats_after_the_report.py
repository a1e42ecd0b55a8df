"""A job that ended normally draws no fencing warning: the worker's heartbeats stop when its report is sent.

A fault run of 400 jobs saw the embedded queue manager log `report_fenced_out` (a warning that reads "a stale
worker tried to report") 3 times for jobs that had completed: the lease task sent a heartbeat while the
completion was in flight, or after it had landed, while the worker tidied ComfyUI."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from queue_manager.server import QueueManagerServer


@pytest.fixture
async def long_leased_qm():
    async with QueueManagerServer(lease_timeout_s=30, test_hooks=True) as server:
        yield server


def fenced_heartbeats(logs: list[dict], job_id: str) -> list[dict]:
    return [e for e in logs if e["event"] == "report_fenced_out" and e.get("job_id") == job_id]


async def test_no_heartbeat_while_the_completion_is_answered_late(long_leased_qm, comfy, make_worker, workflows):
    """The completion lands at once, its answer comes 1 s late (a slow proxy): 20 heartbeat intervals."""
    qm = long_leased_qm
    job = qm.store.submit("alice", workflows["quick"])
    qm.faults.inject("complete-job", delay_s=1.0, after=True)
    worker = make_worker(queue_manager_url=qm.url, lease_heartbeat_s=0.05, serverless_job_limit=1)
    with capture_logs() as logs:
        assert await asyncio.wait_for(worker.run(), 15) == 0
    assert [r.handled_status for r in qm.reports.for_job(job.id)] == [200]
    assert qm.store.get(job.id).status == "completed"
    assert fenced_heartbeats(logs, job.id) == []


async def test_no_heartbeat_while_comfyui_is_tidied_after_the_report(long_leased_qm, comfy, make_worker, workflows):
    """Once reported, the prompt's history entry is deleted in ComfyUI: here 1 s late, 20 heartbeat intervals."""
    qm = long_leased_qm
    job = qm.store.submit("alice", workflows["quick"])
    comfy.slow_down("/history", 1.0)  # POST /history, the deletion; the worker reads GET /history/{prompt_id}
    worker = make_worker(queue_manager_url=qm.url, lease_heartbeat_s=0.05, serverless_job_limit=1)
    with capture_logs() as logs:
        assert await asyncio.wait_for(worker.run(), 15) == 0
    assert qm.store.get(job.id).status == "completed"
    assert fenced_heartbeats(logs, job.id) == []


async def test_the_lease_is_renewed_while_a_report_is_retried_for_longer_than_half_of_it(comfy, make_worker, workflows):
    """REPORT_RETRY_BUDGET_S (120 s) outlasts LEASE_TIMEOUT_S (60 s): heartbeats held back while the report is sent
    resume once half the lease has gone unrenewed, so the job is not handed to another worker meanwhile."""
    async with QueueManagerServer(lease_timeout_s=3.0, test_hooks=True) as qm:
        job = qm.store.submit("alice", workflows["quick"])
        qm.faults.inject("complete-job", status=503, times=5)  # 7.75 s of retries at least (0.25 s back-off, doubling)
        worker = make_worker(
            queue_manager_url=qm.url, lease_heartbeat_s=0.1, report_retry_budget_s=20, serverless_job_limit=1
        )
        assert await asyncio.wait_for(worker.run(), 30) == 0
        done = qm.store.get(job.id)
        assert (done.status, done.attempt, done.history) == ("completed", 1, [])


async def test_no_heartbeat_is_sent_for_a_job_without_an_attempt(qm, comfy, make_worker, workflows):
    """comfy-multi hands out jobs without an attempt and has no heartbeat route: none is sent, not even the one
    that would find the route missing (8 heartbeat intervals of a 0.4-s job)."""
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(lease_heartbeat_s=0.05, serverless_job_limit=1)
    with capture_logs() as logs:
        assert await asyncio.wait_for(worker.run(), 15) == 0
    assert qm.store.get(job.id).status == "completed"
    assert [e for e in logs if "heartbeat" in e["event"].lower()] == []
