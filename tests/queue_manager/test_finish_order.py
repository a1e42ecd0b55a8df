"""Finished jobs newest first come in the order they finished, by a number the finishing write takes, not by their
completion time: a client paging through them sees each once even when the wall clock steps back, a report
arrives twice, or jobs finish in the same instant. A database from before the numbers is numbered on open, and jobs
an older version still finishes in the shared file (a rolling restart) are numbered as they finish."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from queue_manager import QueueManagerServer
from queue_manager.models import JobStatus
from queue_manager.store import Fence, JobStore

from .conftest import FakeClock
from .test_list_paging import page

# The schema as the queue manager wrote it before finish numbers (commit 80ea68f), for a database to upgrade.
SCHEMA_BEFORE = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL, status TEXT NOT NULL,
    priority INTEGER NOT NULL, workflow TEXT NOT NULL, metadata TEXT NOT NULL, result TEXT, error TEXT,
    worker_id TEXT, created_at REAL NOT NULL, started_at REAL, completed_at REAL,
    attempt INTEGER NOT NULL DEFAULT 1, history TEXT NOT NULL DEFAULT '[]', lease_at REAL, poll_id TEXT
);
CREATE INDEX jobs_by_status ON jobs (status, priority, seq);
CREATE INDEX jobs_by_user ON jobs (user_id, seq);
CREATE INDEX jobs_by_finish ON jobs (status, completed_at);
CREATE INDEX jobs_by_user_start ON jobs (user_id, started_at);
CREATE INDEX jobs_by_status_user ON jobs (status, user_id);
CREATE TABLE workers (worker_id TEXT PRIMARY KEY, last_seen REAL NOT NULL);
CREATE INDEX workers_by_last_seen ON workers (last_seen);
CREATE UNIQUE INDEX jobs_by_poll ON jobs (poll_id) WHERE poll_id IS NOT NULL;
"""


async def test_a_client_paging_finished_jobs_sees_each_once_across_a_clock_step_and_a_second_report(
    queue: QueueManagerServer, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Paged by completion time, a job listed on the first page that got a second report after the clock stepped
    back an hour sorted below the cursor and came again on the next page, with a job finished after the paging
    began; the client saw 5 jobs for 4, one twice."""
    jobs = [queue.store.submit("alice", {"1": {}}).id for _ in range(5)]
    for job_id in jobs[:4]:
        queue.store.pop_next("w1", queue.mode)
        clock.advance(1)
        queue.store.complete(job_id, {"ok": True})
    first, response = await page(client, status="completed", order="newest", limit=2)
    assert first == [jobs[3], jobs[2]]

    clock.advance(-3600)  # NTP corrects the host's clock
    queue.store.complete(jobs[3], {"ok": True})  # a report sent again (its answer was lost)
    queue.store.pop_next("w1", queue.mode)
    queue.store.complete(jobs[4], {"ok": True})
    second, response = await page(client, status="completed", order="newest", limit=2,
                                  after=response.headers["X-Next-Cursor"])
    assert second == [jobs[1], jobs[0]] and "X-Next-Cursor" not in response.headers

    whole, _ = await page(client, status="completed", order="newest", limit=100)
    assert whole == [jobs[4], jobs[3], jobs[2], jobs[1], jobs[0]], "the last to finish first"


async def test_every_way_a_job_ends_takes_a_number_in_the_order_it_happened(
    queue: QueueManagerServer, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Failed by a report, by giving up after hand-backs, by the reaper; cancelled while running."""
    reported, handed_back, reaped, cancelled = (queue.store.submit("alice", {"1": {}}).id for _ in range(4))
    queue.store.pop_next("w1", queue.mode)
    queue.store.fail(reported, "boom")
    for _ in range(3):
        queue.store.pop_next("w1", queue.mode)
        queue.store.release(handed_back, Fence(), "worker gone", max_attempts=3)
    queue.store.pop_next("w1", queue.mode)
    queue.store.pop_next("w1", queue.mode)
    clock.advance(-60)  # each ends earlier by the clock than the one before
    assert queue.store.fail_running_started_before(clock() + 3600, "timed out") == [reaped, cancelled]
    clock.advance(-60)
    later = queue.store.submit("alice", {"1": {}}).id
    queue.store.pop_next("w1", queue.mode)
    queue.store.cancel(later)

    failed, _ = await page(client, status="failed", order="newest", limit=100)
    assert failed == [cancelled, reaped, handed_back, reported]
    listed, _ = await page(client, status="cancelled", order="newest", limit=100)
    assert listed == [later]


async def test_a_cursor_from_before_finish_numbers_is_422_naming_after(
    queue: QueueManagerServer, client: httpx.AsyncClient
) -> None:
    """It held a completion time; read as a number it would page from the wrong place without a word."""
    queue.store.submit("alice", {"1": {}})
    for old in ("finished-1700000001.5-3", "finished-1700000001.0-3", "finished-1.7e9-3"):
        response = await client.get("/api/jobs", params={"status": "completed", "order": "newest", "after": old})
        assert response.status_code == 422, old
        [error] = response.json()["detail"]
        assert error["loc"] == ["query", "after"], error


async def test_a_report_sent_again_keeps_the_job_in_its_place_for_a_client_paging_towards_it(
    queue: QueueManagerServer, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Four jobs finished in the same second; a client listed the first page. Numbered anew by a report sent again
    after the clock stepped back (a comfy-multi worker retrying a report whose answer was lost), the job it had not
    reached jumped above its cursor: the client saw 3 jobs of 4."""
    jobs = [queue.store.submit("alice", {"1": {}}).id for _ in range(4)]
    for job_id in jobs:
        queue.store.pop_next("w1", queue.mode)
        report = await client.post("/api/workers/complete-job", params={"job_id": job_id}, json={"result": {}})
        assert report.status_code == 200, report.text
    first, response = await page(client, status="completed", order="newest", limit=2)
    assert first == [jobs[3], jobs[2]]

    clock.advance(-3600)
    again = await client.post("/api/workers/complete-job", params={"job_id": jobs[0]}, json={"result": {}})
    assert again.status_code == 200, again.text
    second, response = await page(client, status="completed", order="newest", limit=2,
                                  after=response.headers["X-Next-Cursor"])
    assert second == [jobs[1], jobs[0]] and "X-Next-Cursor" not in response.headers


async def test_jobs_an_older_version_finishes_in_the_shared_file_are_numbered_as_they_finish(
    queue: QueueManagerServer, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """During a rolling restart a queue process of the version before finish numbers writes to the same file with
    its own statements (below), and a row may be inserted by hand. Left unnumbered, those jobs were listed after
    every numbered one until the next start, and a client paging past them saw them on no page."""
    ours, theirs, cancelled = (queue.store.submit("alice", {"1": {}}).id for _ in range(3))
    for _ in range(3):
        queue.store.pop_next("w1", queue.mode)
    queue.store.complete(ours, {"ok": True})
    older = sqlite3.connect(queue.store.path, isolation_level=None)
    try:
        finish = ("UPDATE jobs SET status = ?, result = ?, error = ?, completed_at = ?, lease_at = NULL, poll_id = NULL"
                  " WHERE id = ?")
        older.execute(finish, ("completed", "{}", None, clock() - 60, theirs))
        older.execute("UPDATE jobs SET status = ?, poll_id = NULL WHERE id = ?", ("cancelled", cancelled))
        older.execute(
            "INSERT INTO jobs (id, user_id, status, priority, workflow, metadata, result, created_at, completed_at)"
            " VALUES ('by-hand', 'alice', 'completed', 1, '{}', '{}', '{}', ?, ?)", (clock(), clock())
        )
        listed, _ = await page(client, status="completed", order="newest", limit=2)
        assert listed == ["by-hand", theirs]
        assert (await page(client, status="cancelled", order="newest"))[0] == [cancelled]

        older.execute(finish, ("completed", "{}", None, clock(), ours))  # its second report moves nothing either
        listed, _ = await page(client, status="completed", order="newest", limit=100)
        assert listed == ["by-hand", theirs, ours]
    finally:
        older.close()


async def test_a_cursor_an_older_version_gave_for_cancelled_jobs_is_422_naming_after(
    queue: QueueManagerServer, client: httpx.AsyncClient
) -> None:
    """Cancelled jobs had no completion time, so paging them gave `finished-none-<n>`; read now, it listed nothing
    and the client believed it had them all."""
    job = queue.store.submit("alice", {"1": {}}).id
    queue.store.pop_next("w1", queue.mode)
    queue.store.cancel(job)
    older = {"status": "cancelled", "order": "newest", "after": "finished-none-9"}
    response = await client.get("/api/jobs", params=older)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "after"], error


def test_two_queue_processes_starting_on_one_older_database_both_open_it_numbered_once(tmp_path: Path) -> None:
    """Each read which columns the file lacked, then both added finish_seq: the second start failed with
    "duplicate column name". The upgrade is one write transaction: the second waits for it, then has nothing to do."""
    path = tmp_path / "queue.db"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_BEFORE)
        db.execute("PRAGMA journal_mode=WAL")
        db.executemany(
            "INSERT INTO jobs (id, user_id, status, priority, workflow, metadata, created_at, completed_at)"
            " VALUES (?, 'alice', 'completed', 1, '{}', '{}', 1700000000.0, ?)",
            [(f"job-{n}", 1_700_000_000.0 + n) for n in range(5)],
        )
    db.close()
    opened: list[JobStore] = []
    failed: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(JobStore(path))
        except BaseException as exc:  # reported by the assertion below
            failed.append(exc)

    writer = sqlite3.connect(path, isolation_level=None)  # another process writing: both starts wait for it
    writer.execute("BEGIN IMMEDIATE")
    starts = [threading.Thread(target=start) for _ in range(2)]
    for thread in starts:
        thread.start()
    time.sleep(0.5)  # both reach their first write while the lock is held; on a slower machine the test only passes
    writer.execute("COMMIT")
    writer.close()
    for thread in starts:
        thread.join()
    try:
        assert failed == []
        numbers = dict(opened[0]._conn.execute("SELECT id, finish_seq FROM jobs").fetchall())
        assert numbers == {f"job-{n}": n + 1 for n in range(5)}
        assert sorted(store.numbered_on_open for store in opened) == [0, 5]
    finally:
        for store in opened:
            store.close()


def test_a_database_from_before_finish_numbers_lists_its_finished_jobs_as_before_and_new_ones_first(
    tmp_path: Path,
) -> None:
    """Upgraded on open: finished jobs numbered by completion time (then submission), a cancelled job (no
    completion time) before them all; a job finished after the upgrade comes first even with the clock behind."""
    path = tmp_path / "queue.db"
    rows = [  # id, status, completed_at
        ("a", "completed", 1_700_000_030.0),
        ("b", "completed", 1_700_000_010.0),
        ("c", "failed", 1_700_000_020.0),
        ("d", "completed", 1_700_000_030.0),
        ("e", "cancelled", None),
        ("f", "pending", None),
        ("g", "running", None),
    ]
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_BEFORE)
        db.executemany(
            "INSERT INTO jobs (id, user_id, status, priority, workflow, metadata, created_at, started_at,"
            " completed_at) VALUES (?, 'alice', ?, 1, ?, '{}', 1700000000.0, 1700000001.0, ?)",
            [(job_id, status, json.dumps({"1": {}}), at) for job_id, status, at in rows],
        )
    db.close()

    clock = FakeClock(1_700_000_000.0)  # behind every completion time in the file
    store = JobStore(path, clock=clock)
    try:
        assert [job.id for job in store.list(status=JobStatus.COMPLETED, newest_first=True)] == ["d", "a", "b"]
        store.complete("g", {"ok": True})
        assert [job.id for job in store.list(status=JobStatus.COMPLETED, newest_first=True)] == ["g", "d", "a", "b"]
        numbers = dict(store._conn.execute("SELECT id, finish_seq FROM jobs").fetchall())
    finally:
        store.close()
    assert numbers == {"e": 1, "b": 2, "c": 3, "a": 4, "d": 5, "f": None, "g": 6}

    reopened = JobStore(path, clock=clock)  # numbered once: opening again changes nothing
    try:
        assert dict(reopened._conn.execute("SELECT id, finish_seq FROM jobs").fetchall()) == numbers
    finally:
        reopened.close()
