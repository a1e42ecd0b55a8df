"""Restart persistence, atomic pops under contention, and the job-timeout reaper."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from queue_manager import JobStatus, QueueManagerServer

from ..conftest import ManualClock
from .conftest import FakeClock


async def test_jobs_survive_a_restart_with_a_file_database(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "queue.db"
    async with QueueManagerServer(db, clock=clock) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        ids = [
            (await client.post("/api/jobs", json={"user_id": "alice", "workflow": {"1": {}}})).json()["id"]
            for _ in range(3)
        ]
        running = (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json()["job"]["id"]

    async with QueueManagerServer(db, clock=clock) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        assert (await client.get(f"/api/jobs/{running}")).json()["status"] == "running"
        status = (await client.get("/api/queue/status")).json()
        assert (status["pending_jobs"], status["running_jobs"]) == (2, 1)
        report = await client.post("/api/workers/complete-job", params={"job_id": running}, json={"result": {}})
        assert report.status_code == 200
        popped = (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json()["job"]["id"]
        assert popped == ids[1], "the queue order survives the restart"
    assert db.exists()


async def test_default_database_is_temporary_and_removed_on_stop() -> None:
    queue = QueueManagerServer()
    await queue.start()
    path = queue.store.path
    assert path.exists()
    await queue.stop()
    assert not path.exists()


async def drain(url: str, worker_id: str, max_pops: int = 100) -> list[str]:
    got = []
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        for _ in range(max_pops):
            response = await client.get("/api/workers/next-job", params={"worker_id": worker_id})
            assert response.status_code == 200
            job = response.json()["job"]
            if job is None:
                return got
            got.append(job["id"])
        raise AssertionError(f"{worker_id} was still being handed jobs after {max_pops} pops")


async def test_concurrent_pops_from_many_clients_and_two_processes_never_share_a_job(
    tmp_path: Path, clock: FakeClock
) -> None:
    db = tmp_path / "shared.db"
    async with QueueManagerServer(db, clock=clock) as first, QueueManagerServer(db, clock=clock) as second:
        submitted = {first.store.submit(f"user{n % 3}", {"1": {"n": n}}).id for n in range(60)}
        urls = [first.url, second.url] * 6

        results = await asyncio.gather(*(drain(url, f"worker-{n}") for n, url in enumerate(urls)))

        handed_out = [job_id for got in results for job_id in got]
        assert len(handed_out) == len(set(handed_out)), "a job was handed to two workers"
        assert set(handed_out) == submitted
        for n, got in enumerate(results):
            for job_id in got:
                assert second.store.get(job_id).worker_id == f"worker-{n}"
        assert sum(1 for got in results if got) > 1, "the test must actually interleave workers"


async def test_reaper_fails_jobs_running_longer_than_the_timeout(clock: FakeClock) -> None:
    async with QueueManagerServer(job_timeout_s=3600, clock=clock) as queue:
        stale = queue.store.submit("alice", {"1": {}})
        queue.store.pop_next("w", queue.mode)
        clock.advance(600)
        fresh = queue.store.submit("alice", {"1": {}})
        queue.store.pop_next("w", queue.mode)
        waiting = queue.store.submit("alice", {"1": {}})

        clock.advance(3000)  # stale has run exactly 3600 s: not yet over
        assert await queue.reap() == []
        clock.advance(1)
        assert await queue.reap() == [stale.id]

        failed = queue.store.get(stale.id)
        assert (failed.status, failed.error, failed.completed_at) == (
            JobStatus.FAILED,
            "Job timeout exceeded",
            clock.now,
        )
        assert queue.store.get(fresh.id).status is JobStatus.RUNNING
        assert queue.store.get(waiting.id).status is JobStatus.PENDING


@pytest.mark.parametrize("step_s", [7200, -3600])
async def test_a_step_of_the_wall_clock_does_not_move_the_job_timeout(clock: FakeClock, step_s: float) -> None:
    """NTP stepping the clock, or the host resuming from a pause: forward past --job-timeout, every running job
    failed at once with "Job timeout exceeded" (7200 s past 3600 s); back, the timeout grew by the step (3600 s).
    The job's run counts by the queue's steady clock, with the lease off too."""
    steady = ManualClock()
    async with QueueManagerServer(job_timeout_s=3600, lease_timeout_s=0, clock=clock, steady_clock=steady) as queue:
        job = queue.store.submit("alice", {"1": {}})
        queue.store.pop_next("w", queue.mode)
        clock.advance(step_s)
        assert await queue.reap() == []
        for moved in (clock, steady):
            moved.advance(3600)
        assert await queue.reap() == [], "exactly --job-timeout of running is not yet over"
        for moved in (clock, steady):
            moved.advance(1)
        assert await queue.reap() == [job.id]


@pytest.mark.parametrize("step_s", [7200, -3600])
async def test_a_job_started_after_a_wall_clock_step_keeps_its_timeout(clock: FakeClock, step_s: float) -> None:
    """A job started between a step of the wall clock and the reaper's next pass already counts on the new clock.
    Before, that pass moved its start by the step too: back 3600 s with a 1800 s timeout, it was failed at once
    with "Job timeout exceeded"; forward 7200 s, its start went 7200 s into the future, its timeout with it."""
    steady = ManualClock()
    async with QueueManagerServer(job_timeout_s=1800, lease_timeout_s=0, clock=clock, steady_clock=steady) as queue:
        clock.advance(step_s)
        job = queue.store.submit("alice", {"1": {}})
        queue.store.pop_next("w", queue.mode)
        assert await queue.reap() == []
        for moved in (clock, steady):
            moved.advance(1800)
        assert await queue.reap() == [], "exactly --job-timeout of running is not yet over"
        for moved in (clock, steady):
            moved.advance(1)
        assert await queue.reap() == [job.id]


async def test_reaper_runs_on_its_own_every_interval(clock: FakeClock) -> None:
    async with QueueManagerServer(job_timeout_s=10, reaper_interval_s=0.02, clock=clock) as queue:
        job = queue.store.submit("alice", {"1": {}})
        queue.store.pop_next("w", queue.mode)
        clock.advance(11)
        async with asyncio.timeout(3):
            while queue.store.get(job.id).status is not JobStatus.FAILED:
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=queue.url) as client:
            status: dict[str, Any] = (await client.get("/api/queue/status")).json()
        assert (status["running_jobs"], status["failed_jobs"]) == (0, 1)


def test_each_commit_reaches_the_disk_before_it_is_answered(tmp_path: Path) -> None:
    """synchronous=FULL in WAL mode: a submission answered 201 survives a power loss or a host crash, not only a
    killed process. Before: NORMAL, which loses the last commits then."""
    from queue_manager.store import JobStore

    store = JobStore(tmp_path / "queue.db")
    try:
        [(journal,)] = store._conn.execute("PRAGMA journal_mode").fetchall()
        [(synchronous,)] = store._conn.execute("PRAGMA synchronous").fetchall()
    finally:
        store.close()
    assert (journal, synchronous) == ("wal", 2), "2 is FULL"


async def test_a_full_database_answers_503_retry_later_changes_nothing_and_recovers(tmp_path: Path) -> None:
    """Before: 500 "Internal server error" with a traceback per request, and /health "healthy" throughout."""
    from structlog.testing import capture_logs

    async with QueueManagerServer(tmp_path / "queue.db") as queue, httpx.AsyncClient(base_url=queue.url) as client:
        conn = queue.store._conn
        [(pages,)] = conn.execute("PRAGMA page_count").fetchall()
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # what a full disk answers, without filling one
        big = {"1": {"class_type": "EmptyImage", "inputs": {"text": "x" * 200_000}}}
        with capture_logs() as logs:
            answer = await client.post("/api/jobs", json={"user_id": "alice", "workflow": big})
        assert answer.status_code == 503, answer.text
        assert answer.json()["detail"].startswith("The queue's database cannot be written: database or disk is full")
        assert answer.headers["Retry-After"] == "10"
        assert [e["code"] for e in logs if e["event"] == "storage_failed"] == ["SQLITE_FULL"]
        assert not [e for e in logs if e["event"] == "request_failed"], "no traceback: the cause is named"
        health = (await client.get("/health")).json()
        assert (health["status"], health["redis_connected"], health["queue_depth"]) == ("unhealthy", True, 0)
        assert await queue.reap() == []  # a write transaction with nothing to write
        health = (await client.get("/health")).json()
        assert health["status"] == "unhealthy", "a reaper pass that wrote nothing does not prove the disk has room"

        conn.execute("PRAGMA max_page_count = 1073741823")  # room again
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": big})).status_code == 201
        health = (await client.get("/health")).json()
        assert (health["status"], health["queue_depth"]) == ("healthy", 1), "the refused job was never stored"


async def test_a_poll_on_a_full_disk_logs_storage_failed_with_its_code(tmp_path: Path) -> None:
    """Drilled (the --db folder on a 4 MiB tmpfs filled mid-run): reports logged storage_failed code=SQLITE_FULL as
    documented, but each poll logged next_job_failed without a code, a line the docs never name."""
    import sqlite3

    from structlog.testing import capture_logs

    tiny = sqlite3.connect(":memory:")
    tiny.execute("PRAGMA max_page_count = 1")
    with pytest.raises(sqlite3.OperationalError) as full:
        tiny.execute("CREATE TABLE t (x)")  # a real SQLITE_FULL

    def full_disk(*args: Any, **kwargs: Any) -> Any:
        raise full.value

    async with QueueManagerServer(tmp_path / "queue.db") as queue, httpx.AsyncClient(base_url=queue.url) as client:
        queue.store.submit("alice", {"1": {}})
        queue.store.poll = full_disk  # type: ignore[method-assign]
        with capture_logs() as logs:
            answer = await client.get("/api/workers/next-job", params={"worker_id": "w1"})
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "10", answer.text
    assert [(e["event"], e["code"], e["path"]) for e in logs if e["log_level"] == "error"] == [
        ("storage_failed", "SQLITE_FULL", "/api/workers/next-job")
    ]


async def test_a_reaper_pass_on_a_full_disk_names_the_cause_without_a_traceback(tmp_path: Path) -> None:
    """Before: a traceback every pass (every 15 s with the default lease) while the disk stayed full."""
    import sqlite3

    from structlog.testing import capture_logs

    from queue_manager.reaper import JobReaper
    from queue_manager.store import JobStore

    tiny = sqlite3.connect(":memory:")
    tiny.execute("PRAGMA max_page_count = 1")
    with pytest.raises(sqlite3.OperationalError) as full:
        tiny.execute("CREATE TABLE t (x)")  # a real SQLITE_FULL
    store = JobStore(tmp_path / "queue.db")
    reaper = JobReaper(store, job_timeout_s=60, interval_s=0.01, clock=lambda: 0.0)

    def full_disk() -> None:
        raise full.value

    reaper.run_pass = full_disk  # type: ignore[method-assign]

    async def in_line(step: Any) -> None:
        step()

    stop = asyncio.Event()
    try:
        with capture_logs() as logs:
            task = asyncio.create_task(reaper.run(stop, in_line))
            async with asyncio.timeout(3):
                while len(logs) < 2:
                    await asyncio.sleep(0.01)
            stop.set()
            await task
    finally:
        store.close()
    assert {(e["event"], e["code"], "exc_info" in e) for e in logs} == {("reaper_pass_failed", "SQLITE_FULL", False)}


def test_a_commit_that_fails_leaves_no_transaction_open(tmp_path: Path) -> None:
    """SQLite may keep a transaction open when its COMMIT fails; the next BEGIN then failed with "cannot start a
    transaction within a transaction", and so did every write after it."""
    import sqlite3

    from queue_manager.store import JobStore

    class CommitFailsOnce:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn, self.failed = conn, False

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql == "COMMIT" and not self.failed:
                self.failed = True
                raise sqlite3.OperationalError("disk I/O error")  # the transaction stays open
            return self._conn.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

    store = JobStore(tmp_path / "queue.db")
    real = store._conn
    store._conn = CommitFailsOnce(real)  # type: ignore[assignment]
    try:
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            store.submit("alice", {"1": {}})
        assert not real.in_transaction
        store.submit("alice", {"1": {}})
        assert [job.user_id for job in store.list()] == ["alice"], "the failed one was rolled back"
    finally:
        store._conn = real
        store.close()


async def test_a_database_error_that_is_no_storage_fault_answers_503_retry_later_without_a_traceback(
    tmp_path: Path,
) -> None:
    """A database that refuses a write for another reason than its disk (here a trigger someone added to the file:
    SQLITE_CONSTRAINT_TRIGGER). Before: a submission got aiohttp's 500 page and a traceback, a poll 500 with
    SQLite's message and no Retry-After."""
    import sqlite3

    from structlog.testing import capture_logs

    db = tmp_path / "queue.db"
    async with QueueManagerServer(db) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        pending = queue.store.submit("alice", {"1": {}}).id
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("CREATE TRIGGER no_inserts BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, 'no inserts'); END")
        other.execute("CREATE TRIGGER no_updates BEFORE UPDATE ON jobs BEGIN SELECT RAISE(ABORT, 'no updates'); END")
        other.close()
        with capture_logs() as logs:
            submitted = await client.post("/api/jobs", json={"user_id": "alice", "workflow": {"1": {}}})
            polled = await client.get("/api/workers/next-job", params={"worker_id": "w1"})
        for answer, why in ((submitted, "no inserts"), (polled, "no updates")):
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "10"
            assert answer.json()["detail"] == (
                f"The queue's database refused the request: {why}; nothing was changed, retry later"
            )
        assert [(e["event"], e["code"], e["path"]) for e in logs if e["log_level"] == "error"] == [
            ("database_failed", "SQLITE_CONSTRAINT_TRIGGER", "/api/jobs"),
            ("database_failed", "SQLITE_CONSTRAINT_TRIGGER", "/api/workers/next-job"),
        ]
        assert queue.store.get(pending).status is JobStatus.PENDING
        assert [job.id for job in queue.store.list()] == [pending], "the refused submission was not stored"
