"""Finished jobs are deleted once they are older than FINISHED_JOB_RETENTION_S; nothing else is."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from common.settings import ConfigError, settings_from_env
from queue_manager import JobPriority, JobStatus, JobStore, QueueManagerServer, QueueMode
from queue_manager.__main__ import QueueManagerEnv
from queue_manager.reaper import JobReaper
from queue_manager.store import PURGE_BATCH, PurgedJob

from .conftest import FakeClock

DAY = 24 * 3600.0


@pytest.fixture
def store(clock: FakeClock) -> Iterator[JobStore]:
    jobs = JobStore(clock=clock)
    yield jobs
    jobs.close()


def finished(store: JobStore, status: JobStatus) -> str:
    """A job run to `status` now (a job waiting at a lower priority stays waiting)."""
    job_id = store.submit("alice", {"1": {}}).id
    assert store.pop_next("w", QueueMode.PRIORITY).id == job_id
    if status is JobStatus.COMPLETED:
        store.complete(job_id, {"images": []})
    elif status is JobStatus.FAILED:
        store.fail(job_id, "boom")
    else:
        store.cancel(job_id)
    assert store.get(job_id).status is status
    return job_id


def test_purge_deletes_old_finished_jobs_of_every_status_and_keeps_the_rest(
    store: JobStore, clock: FakeClock
) -> None:
    running = store.submit("alice", {"1": {}}).id
    store.pop_next("w0", QueueMode.FIFO)
    old = [finished(store, status) for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)]
    pending = store.submit("bob", {"1": {}}, priority=JobPriority.LOW).id
    clock.advance(DAY)
    at_the_cutoff = finished(store, JobStatus.COMPLETED)
    clock.advance(1)
    young = [finished(store, status) for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)]

    assert store.purge_finished_before(clock.now - DAY) == [PurgedJob("alice", job_id) for job_id in old]

    assert [store.get(job_id) for job_id in old] == [None, None, None]
    assert store.get(running).status is JobStatus.RUNNING, "a running job is never purged, however old"
    assert store.get(pending).status is JobStatus.PENDING
    assert store.get(at_the_cutoff) is not None, "exactly the retention old is not older than it"
    assert all(store.get(job_id) is not None for job_id in young)
    assert store.counts() == {
        JobStatus.PENDING: 1,
        JobStatus.RUNNING: 1,
        JobStatus.COMPLETED: 2,
        JobStatus.FAILED: 1,
        JobStatus.CANCELLED: 1,
    }


def test_a_cancelled_job_counts_from_its_last_heartbeat(store: JobStore, clock: FakeClock) -> None:
    job_id = store.submit("alice", {"1": {}}).id
    store.pop_next("w", QueueMode.FIFO)
    clock.advance(DAY)
    store.heartbeat("w", job_id, attempt=1)
    store.cancel(job_id)
    clock.advance(DAY)
    assert store.purge_finished_before(clock.now - DAY) == [], "cancelled a day ago, not two"
    clock.advance(1)
    assert store.purge_finished_before(clock.now - DAY) == [PurgedJob("alice", job_id)]


def test_purge_deletes_at_most_a_batch_per_call_and_the_rest_on_later_calls(
    store: JobStore, clock: FakeClock
) -> None:
    ids = [finished(store, JobStatus.COMPLETED) for _ in range(25)]
    clock.advance(DAY)
    cutoff = clock.now - 1

    assert [len(store.purge_finished_before(cutoff, limit=10, budget_s=60)) for _ in range(4)] == [10, 10, 5, 0]
    assert [store.get(job_id) for job_id in ids] == [None] * 25


def test_purge_stops_after_the_row_that_used_up_its_time_budget(store: JobStore, clock: FakeClock) -> None:
    for _ in range(3):
        finished(store, JobStatus.COMPLETED)
    clock.advance(DAY)

    assert [len(store.purge_finished_before(clock.now, budget_s=0)) for _ in range(4)] == [1, 1, 1, 0]


def test_reaper_purges_at_most_a_batch_per_pass_and_the_rest_on_later_passes(
    store: JobStore, clock: FakeClock
) -> None:
    ids = [finished(store, JobStatus.FAILED) for _ in range(PURGE_BATCH + 5)]
    reaper = JobReaper(store, job_timeout_s=3600, interval_s=60, clock=clock, finished_job_retention_s=DAY)
    clock.advance(DAY + 1)

    passes = []
    while purged := reaper.purge_finished():
        passes.append(purged)
    assert len(passes) >= 2
    assert max(passes) <= PURGE_BATCH
    assert sum(passes) == len(ids)
    assert store.counts()[JobStatus.FAILED] == 0


@pytest.mark.parametrize("retention_s", [0.5, 1.0])
def test_a_retention_under_a_minute_is_kept_to(store: JobStore, clock: FakeClock, retention_s: float) -> None:
    """FINISHED_JOB_RETENTION_S takes any time above 0 (0 keeps every job): a demo's second is a second."""
    job_id = finished(store, JobStatus.COMPLETED)
    reaper = JobReaper(store, job_timeout_s=3600, interval_s=60, clock=clock, finished_job_retention_s=retention_s)
    clock.advance(retention_s + 0.5)
    assert reaper.purge_finished() == 1
    assert store.get(job_id) is None


def test_retention_zero_keeps_every_finished_job(store: JobStore, clock: FakeClock) -> None:
    ids = [finished(store, status) for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)]
    reaper = JobReaper(store, job_timeout_s=3600, interval_s=60, clock=clock, finished_job_retention_s=0)
    clock.advance(10 * 365 * DAY)

    reaper.run_pass()
    assert reaper.purge_finished() == 0

    assert store.last_heartbeat("w") is not None, "nor any worker"
    assert [store.get(job_id).status for job_id in ids] == [
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    ]


def test_workers_not_seen_for_longer_than_the_retention_are_forgotten_unless_they_hold_a_running_job(
    store: JobStore, clock: FakeClock
) -> None:
    store.submit("alice", {"1": {}})
    assert store.pop_next("holder", QueueMode.FIFO) is not None
    finished(store, JobStatus.COMPLETED)  # worker "w" held a job that has finished since
    store.pop_next("gone", QueueMode.FIFO)  # an empty poll
    clock.advance(DAY)
    store.pop_next("young", QueueMode.FIFO)

    assert store.purge_workers_seen_before(clock.now - DAY) == 0, "exactly the retention silent is not longer"
    clock.advance(1)
    assert store.purge_workers_seen_before(clock.now - DAY) == 2

    assert (store.last_heartbeat("gone"), store.last_heartbeat("w")) == (None, None)
    assert store.last_heartbeat("holder") == clock.now - DAY - 1, "a worker holding a running job is kept"
    assert store.last_heartbeat("young") is not None


def test_worker_purge_deletes_at_most_a_batch_per_call(store: JobStore, clock: FakeClock) -> None:
    for replica in range(25):
        store.pop_next(f"replica-{replica}", QueueMode.FIFO)
    clock.advance(DAY)

    assert [store.purge_workers_seen_before(clock.now, limit=10) for _ in range(4)] == [10, 10, 5, 0]
    assert store.workers_seen_since(0) == 0


def test_a_database_from_the_first_release_gains_the_finish_index_and_is_purged(
    tmp_path: Path, clock: FakeClock
) -> None:
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript(
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL,
            status TEXT NOT NULL, priority INTEGER NOT NULL, workflow TEXT NOT NULL, metadata TEXT NOT NULL,
            result TEXT, error TEXT, worker_id TEXT, created_at REAL NOT NULL, started_at REAL, completed_at REAL
        );
        CREATE INDEX jobs_by_status ON jobs (status, priority, seq);
        CREATE TABLE workers (worker_id TEXT PRIMARY KEY, last_seen REAL NOT NULL);
        """
    )
    old.execute(
        "INSERT INTO jobs (id, user_id, status, priority, workflow, metadata, created_at, started_at, completed_at)"
        " VALUES ('old', 'alice', 'completed', 2, '{}', '{}', ?, ?, ?)",
        (clock.now - 3 * DAY, clock.now - 3 * DAY, clock.now - 3 * DAY),
    )
    old.commit()
    old.close()

    store = JobStore(db, clock=clock)
    try:
        with sqlite3.connect(db) as check:
            plan = check.execute(
                "EXPLAIN QUERY PLAN SELECT seq FROM jobs WHERE status IN ('completed', 'failed') AND completed_at < 0"
            ).fetchall()
        assert any("jobs_by_finish" in row[-1] for row in plan), plan
        assert store.purge_finished_before(clock.now - DAY) == [PurgedJob("alice", "old")]
        assert store.get("old") is None
    finally:
        store.close()


async def test_after_the_retention_a_finished_job_is_404_and_leaves_the_counts(clock: FakeClock) -> None:
    retention = 3600.0
    async with (
        QueueManagerServer(
            clock=clock, finished_job_retention_s=retention, lease_timeout_s=0, job_timeout_s=10 * retention
        ) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        ids = []
        for _ in range(3):
            ids.append((await client.post("/api/jobs", json={"user_id": "alice", "workflow": {"1": {}}})).json()["id"])
            await client.get("/api/workers/next-job", params={"worker_id": "w"})
        done, broken, still_running = ids
        await client.post("/api/workers/complete-job", params={"job_id": done}, json={"result": {}})
        await client.post("/api/workers/fail-job", params={"job_id": broken}, json={"error": "boom"})
        counts = (await client.get("/api/queue/status")).json()
        assert (counts["completed_jobs"], counts["failed_jobs"], counts["running_jobs"]) == (1, 1, 1)

        clock.advance(retention)
        assert await queue.purge_finished() == 0
        clock.advance(1)
        with capture_logs() as logs:
            assert await queue.purge_finished() == 2

        unknown = await client.get("/api/jobs/00000000-0000-0000-0000-000000000000")
        assert (unknown.status_code, unknown.json()) == (404, {"detail": "Job not found"})
        for job_id in (done, broken):
            gone = await client.get(f"/api/jobs/{job_id}")
            assert (gone.status_code, gone.headers["Content-Type"], gone.content) == (
                unknown.status_code,
                unknown.headers["Content-Type"],
                unknown.content,
            ), "a purged job answers exactly as an unknown one"
        assert (await client.get(f"/api/jobs/{still_running}")).json()["status"] == "running"
        counts = (await client.get("/api/queue/status")).json()
        assert (counts["completed_jobs"], counts["failed_jobs"], counts["running_jobs"]) == (0, 0, 1)
        assert (await client.get("/api/jobs", params={"status": "completed"})).json() == []
    assert [(e["event"], e["count"], e["retention_s"]) for e in logs if e["event"] == "jobs_purged"] == [
        ("jobs_purged", 2, retention)
    ]


async def test_a_retention_pass_forgets_replicas_gone_for_longer_than_the_retention(clock: FakeClock) -> None:
    retention = 3600.0
    async with (
        QueueManagerServer(
            clock=clock, finished_job_retention_s=retention, lease_timeout_s=0, job_timeout_s=10 * retention
        ) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        await client.post("/api/jobs", json={"user_id": "alice", "workflow": {"1": {}}})
        for replica in ("replica-1", "replica-2", "replica-3"):  # replica-1 takes the job and keeps it running
            await client.get("/api/workers/next-job", params={"worker_id": replica})
        clock.advance(retention + 1)
        await client.get("/api/workers/next-job", params={"worker_id": "replica-4"})

        with capture_logs() as logs:
            assert await queue.purge_finished() == 0, "no job finished"

        seen = {replica: queue.store.last_heartbeat(replica) for replica in ("replica-1", "replica-2", "replica-3")}
        assert seen == {"replica-1": clock.now - retention - 1, "replica-2": None, "replica-3": None}
        assert queue.store.last_heartbeat("replica-4") == clock.now
        assert (await client.get("/api/queue/status")).json()["total_workers"] == 1
    assert [(e["event"], e["count"], e["retention_s"]) for e in logs] == [("workers_purged", 2, retention)]


async def test_the_reaper_purges_on_its_own_and_by_default_after_seven_days(clock: FakeClock) -> None:
    async with QueueManagerServer(reaper_interval_s=0.02, clock=clock) as queue:
        job_id = finished(queue.store, JobStatus.COMPLETED)
        clock.advance(7 * DAY - 1)
        await asyncio.sleep(0.1)  # several passes
        assert queue.store.get(job_id) is not None
        clock.advance(2)
        async with asyncio.timeout(3):
            while queue.store.get(job_id) is not None:
                await asyncio.sleep(0.01)


def test_retention_setting_defaults_to_seven_days_and_zero_keeps_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FINISHED_JOB_RETENTION_S", raising=False)
    assert settings_from_env(QueueManagerEnv, "queue manager").finished_job_retention_s == 7 * DAY
    monkeypatch.setenv("FINISHED_JOB_RETENTION_S", "0")
    assert settings_from_env(QueueManagerEnv, "queue manager").finished_job_retention_s == 0


@pytest.mark.parametrize("value", ["-1", "inf", "-inf", "nan", "a week"])
def test_a_bad_retention_is_a_config_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FINISHED_JOB_RETENTION_S", value)
    with pytest.raises(ConfigError, match="FINISHED_JOB_RETENTION_S"):
        settings_from_env(QueueManagerEnv, "queue manager")


@pytest.mark.parametrize("asked", [{"interval_s": 1e-300}, {"interval_s": 60, "lease_timeout_s": 1e-9}],
                         ids=["reaper-interval", "lease-timeout"])
async def test_a_tiny_interval_or_lease_never_spins_the_reaper(tmp_path: Path, asked: dict[str, float]) -> None:
    """Before: --reaper-interval 1e-300 (finite, above 0: accepted) or LEASE_TIMEOUT_S=1e-9 (a quarter of it is the
    interval) ran passes back to back, thousands in 0.3 s, the process at 94% of a CPU. Now at most 100 a second
    (a slower machine runs fewer, never more)."""
    store = JobStore(tmp_path / "queue.db")
    reaper = JobReaper(store, job_timeout_s=60, clock=lambda: 0.0, **asked)
    passes = 0

    async def count(_step: object) -> None:
        nonlocal passes
        passes += 1

    stop = asyncio.Event()
    task = asyncio.create_task(reaper.run(stop, count))
    await asyncio.sleep(0.3)
    stop.set()
    await task
    store.close()
    assert passes <= 40, passes


def test_a_wall_clock_stepped_forward_does_not_age_finished_jobs_or_workers(
    store: JobStore, clock: FakeClock
) -> None:
    """Retention counted by the wall clock alone: NTP stepping a host's clock two days forward (it was behind) had
    every job finished in the last two days deleted at the next pass, outputs and all, as if it had aged by the
    step. The step is seen, as the leases see it: each job, and each worker, keeps its full day."""
    steady = FakeClock(50.0)
    reaper = JobReaper(store, job_timeout_s=3600, interval_s=60, clock=clock, steady_clock=steady,
                       finished_job_retention_s=DAY)
    jobs = [finished(store, status) for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)]
    clock.advance(2 * DAY)  # a minute passes, and the clock is stepped
    steady.advance(60)
    reaper.run_pass()
    assert all(store.get(job_id) is not None for job_id in jobs), "finished a minute ago"
    assert store.last_heartbeat("w") == clock.now - 60
    for elapsed in (DAY - 61, 2):
        clock.advance(elapsed)
        steady.advance(elapsed)
        reaper.run_pass()
    assert [store.get(job_id) for job_id in jobs] == [None, None, None], "a day and a second old"
    assert store.last_heartbeat("w") is None


async def test_what_happened_after_a_forward_step_stays_in_the_past(clock: FakeClock) -> None:
    """A worker polling, and a job finishing, between a step of the wall clock and the pass that sees it are already
    on the new clock. Before, that pass moved them by the step too: two days forward, /api/queue/status counted a
    worker dead for a minute in total_workers for two more days, and the job showed a completed_at two days ahead."""
    steady = FakeClock(50.0)
    async with (
        QueueManagerServer(clock=clock, steady_clock=steady, lease_timeout_s=60) as queue,
        httpx.AsyncClient(base_url=queue.url, timeout=5) as client,
    ):
        clock.advance(2 * DAY)
        job_id = queue.store.submit("alice", {"1": {}}).id
        assert (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json()["job"]["id"] == job_id
        done = await client.post("/api/workers/complete-job", params={"job_id": job_id}, json={"result": {}})
        assert done.status_code == 200
        finished_at = clock.now
        await queue.expire_leases()  # sees the step
        assert queue.store.get(job_id).completed_at == finished_at
        for moved in (clock, steady):
            moved.advance(61)  # the worker died after its poll
        assert (await client.get("/api/queue/status")).json()["total_workers"] == 0
