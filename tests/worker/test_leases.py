"""The worker against the embedded queue manager's lease and fences (contract items 2 and 3): a worker that
lost its job stops working on it, and a late report of an attempt that was handed back changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from queue_manager.server import QueueManagerServer

from ..conftest import ManualClock, wait_for
from .conftest import COMFYUI_KILLED_TIMINGS


@pytest.fixture
async def leased_qm():
    """A lease of 0.5 s on a clock the test moves (expire_lease): on the wall clock a loaded machine's stall of the
    worker's heartbeat outran 0.5 s, and a lease that must hold (the worker's own, in the retry test) was lost."""
    async with QueueManagerServer(lease_timeout_s=0.5, clock=ManualClock(), test_hooks=True) as server:
        yield server


async def expire_lease(qm: QueueManagerServer, job_id: str) -> None:
    """Move the queue's clock on until its lease pass (every 0.125 s) hands the job back."""
    attempt = qm.store.get(job_id).attempt
    async with asyncio.timeout(15):
        while qm.store.get(job_id).attempt == attempt:
            qm.clock.advance(1)
            await asyncio.sleep(0.05)


@pytest.fixture
async def long_leased_qm():
    """For a test whose lease must not expire: a loaded machine's stall outran 0.5 s."""
    async with QueueManagerServer(lease_timeout_s=30, test_hooks=True) as server:
        yield server


async def test_a_worker_whose_lease_expired_abandons_the_job_without_a_report(
    leased_qm, comfy, make_worker, workflows
):
    qm = leased_qm
    job = qm.store.submit("alice", workflows["slow"])
    comfy.freeze(class_type="ImageBlur")
    worker = make_worker(queue_manager_url=qm.url, lease_heartbeat_s=0.1, serverless_job_limit=1)
    run = asyncio.create_task(worker.run())
    await comfy.wait_until_frozen()
    qm.faults.inject("heartbeat", status=503, times=10_000)  # the manager cannot hear this worker...
    await expire_lease(qm, job.id)  # ...so its lease pass hands the job back
    qm.faults.clear()
    assert await asyncio.wait_for(run, 5) == 0
    comfy.release()
    assert qm.reports.for_job(job.id) == [], "no report for a job that is no longer ours"
    again = qm.store.get(job.id)
    assert (again.status, again.attempt) == ("pending", 2)
    assert {"prompt_id": comfy.prompts_received[0].prompt_id} in [i.body for i in comfy.interrupts_received]
    assert worker.state.jobs_abandoned == 1


async def test_a_late_completion_of_a_handed_back_attempt_is_fenced_and_leaves_no_files(
    leased_qm, comfy, make_worker, workflows, tmp_path: Path
):
    qm = leased_qm
    job = qm.store.submit("alice", workflows["slow"])
    comfy.freeze(class_type="ImageBlur")
    worker = make_worker(queue_manager_url=qm.url, lease_heartbeat_s=0.1, serverless_job_limit=1)
    qm.faults.inject("heartbeat", status=503, times=10_000)  # never heard, so never told
    run = asyncio.create_task(worker.run())
    await comfy.wait_until_frozen()
    await expire_lease(qm, job.id)
    comfy.release()  # the zombie attempt finishes and reports
    assert await asyncio.wait_for(run, 5) == 0
    [late] = qm.reports.for_job(job.id)
    assert (late.endpoint, late.status) == ("complete-job", 409)
    again = qm.store.get(job.id)
    assert (again.status, again.attempt, again.result) == ("pending", 2, None), "the retry's outcome will count"
    assert not list((tmp_path / "outputs").rglob("*.png")), "the refused attempt's files are gone"
    assert worker.state.jobs_abandoned == 1


async def test_a_retry_of_the_same_job_id_writes_to_its_own_attempt_folder(leased_qm, comfy, make_worker, workflows):
    qm = leased_qm
    job = qm.store.submit("alice", workflows["quick"])
    first = qm.store.pop_next("someone-else", qm.mode)
    assert first.id == job.id
    await expire_lease(qm, job.id)  # someone-else went silent
    assert await make_worker(queue_manager_url=qm.url).run() == 0
    [report] = qm.reports.landed(job.id)
    paths = [o["path"] for o in report.body["result"]["outputs"]]
    assert paths and all(p.startswith(f"alice/{job.id}/@attempt-2/") for p in paths)


async def test_a_heartbeat_refused_because_the_report_landed_is_not_a_lost_job(
    long_leased_qm, comfy, make_worker, workflows
):
    """The completion lands, its answer is lost, the worker retries it: a heartbeat in between is told 409 (the
    job is completed). That is the report's own success, not the job taken away: before, the worker logged
    "abandoning it without a report" right after "Job X completed"."""
    qm = long_leased_qm
    job = qm.store.submit("alice", workflows["quick"])
    qm.faults.inject("complete-job", status=502, after=True)  # lands; the answer is lost
    worker = make_worker(queue_manager_url=qm.url, lease_heartbeat_s=0.05, serverless_job_limit=1)
    with capture_logs() as logs:
        assert await asyncio.wait_for(worker.run(), 10) == 0
    assert [r.handled_status for r in qm.reports.for_job(job.id)] == [200, 409]
    assert qm.store.get(job.id).status == "completed"
    events = [e["event"] for e in logs]
    assert f"Job {job.id} completed" in events
    assert "The queue manager took the job back; abandoning it without a report" not in events


async def test_one_heartbeat_that_hangs_does_not_cost_the_lease(comfy, make_worker, workflows):
    """A heartbeat on a connection that stalls (a proxy holding it, a dropped keep-alive) waited the whole
    HTTP_TIMEOUT_S before the next one was sent: at the defaults 15 + 30 + 15 s of silence, exactly the 60 s
    lease; with HTTP_TIMEOUT_S or LEASE_HEARTBEAT_S any higher, a healthy worker's job was handed back as a
    fault. Each heartbeat now waits at most LEASE_HEARTBEAT_S, and the next one goes out."""
    # A 3-s lease, not 1 s: on a loaded CI machine a 1-s lease was once lost to a stall of the whole process.
    async with QueueManagerServer(lease_timeout_s=3.0, test_hooks=True) as qm:
        job = qm.store.submit("alice", workflows["slow"])
        renewals = []
        renew = qm.store.heartbeat
        qm.store.heartbeat = lambda *args: (renew(*args), renewals.append(args))  # type: ignore[method-assign]
        comfy.freeze(class_type="ImageBlur")
        worker = make_worker(queue_manager_url=qm.url, lease_heartbeat_s=0.2, http_timeout_s=10, serverless_job_limit=1)
        run = asyncio.create_task(worker.run())
        await comfy.wait_until_frozen()
        qm.faults.inject("heartbeat", delay_s=5, drop=True)  # the next heartbeat hangs 5 s, then its connection drops
        seen = len(renewals)
        await wait_for(lambda: qm.store.get(job.id).attempt > 1 or len(renewals) >= seen + 10, timeout=10)
        comfy.release()
        assert await asyncio.wait_for(run, 10) == 0
        done = qm.store.get(job.id)
        assert (done.status, done.attempt, done.history) == ("completed", 1, [])


async def test_a_failure_report_retried_after_its_answer_was_lost_counts_as_the_failure_it_was(
    long_leased_qm, comfy, make_worker, workflows
):
    """Its retry is told 409 (the job is failed): by our own report, not taken away. Before, the worker counted
    the job abandoned, logged "no longer this worker's", and never "Job X failed"."""
    qm = long_leased_qm
    job = qm.store.submit("alice", workflows["invalid_unknown_node"])
    qm.faults.inject("fail-job", status=502, after=True)  # lands; the answer is lost
    worker = make_worker(queue_manager_url=qm.url, serverless_job_limit=1)
    with capture_logs() as logs:
        assert await asyncio.wait_for(worker.run(), 10) == 0
    assert [r.handled_status for r in qm.reports.for_job(job.id)] == [200, 409]
    assert (worker.state.jobs_failed, worker.state.jobs_abandoned) == (1, 0)
    assert f"Job {job.id} failed" in [e["event"] for e in logs]


async def test_a_hand_back_retried_after_its_answer_was_lost_counts_as_handed_back(
    long_leased_qm, comfy, make_worker, workflows
):
    qm = long_leased_qm  # with 0.5 s, a loaded machine once let the lease expire first (cause "fault")
    job = qm.store.submit("alice", workflows["slow"])
    qm.faults.inject("release-job", status=502, after=True)  # lands; the answer is lost
    worker = make_worker(queue_manager_url=qm.url, lease_heartbeat_s=0.1, shutdown_grace_s=0.1)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    with capture_logs() as logs:
        worker.request_shutdown()
        assert await asyncio.wait_for(run, 10) == 0
    again = qm.store.get(job.id)
    assert (again.status, again.attempt, [h["cause"] for h in again.history]) == ("pending", 2, ["shutdown"])
    assert (worker.state.jobs_handed_back, worker.state.jobs_abandoned) == (1, 0)
    assert f"Job {job.id} handed back" in [e["event"] for e in logs]


async def test_a_hand_back_the_queue_manager_turns_into_a_failure_is_logged_failed_once(comfy, make_worker, workflows):
    """Its last attempt used up, release-job answers "failed". Before: "Job X failed" twice, the second with
    error=None, and log-based alerts counted two failures."""
    async with QueueManagerServer(lease_timeout_s=30, max_attempts=1, test_hooks=True) as qm:
        job = qm.store.submit("alice", workflows["slow"])
        worker = make_worker(queue_manager_url=qm.url, serverless_job_limit=1, timings=COMFYUI_KILLED_TIMINGS)
        with capture_logs() as logs:
            run = asyncio.create_task(worker.run())
            await wait_for(lambda: comfy.prompts_received)
            await comfy.crash()
            assert await asyncio.wait_for(run, 20) == 0
        assert qm.store.get(job.id).status == "failed"
    failed = [e for e in logs if e["event"] == f"Job {job.id} failed"]
    assert [e["error"].startswith("gave up after 1 attempts") for e in failed] == [True]
