"""Finish numbers: the first open of an older queue database, a page of finished jobs, and a finishing write.

    ./dev python -m bench.finish_order --jobs 10000 --workflow-kb 20

1. Writes a database with the schema as it was before finish numbers (tests/queue_manager/test_finish_order.py's
   SCHEMA_BEFORE), every job finished, each with a workflow of about `--workflow-kb` KiB, then times JobStore's
   first open (the upgrade: one transaction numbering every finished job) and a second open (nothing to do). The
   queue answers no request until the first open is done.
2. On that database, a page of 100 completed jobs newest first as GET /api/jobs reads it: the first page and one
   from a cursor halfway down, by completion time as before (jobs_by_finish) and by finish number now
   (jobs_by_finish_seq). Best of 20.
3. What a finishing write costs with its number set in its own UPDATE (what the queue does) against a trigger
   numbering every finish, for a small and a 1 MB result (synchronous=OFF: the fsync would hide the difference).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.queue_retention import workflow_of
from queue_manager.models import JobStatus
from queue_manager.store import _COLUMNS_BUT_WORKFLOW, JobStore
from tests.queue_manager.test_finish_order import SCHEMA_BEFORE

PAGE = 100
REPEATS = 20


def old_database(path: Path, jobs: int, workflow_kb: int) -> None:
    workflow = json.dumps(workflow_of(workflow_kb))
    statuses = ("completed", "completed", "completed", "failed", "cancelled")
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_BEFORE)
        db.executemany(
            "INSERT INTO jobs (id, user_id, status, priority, workflow, metadata, created_at, started_at,"
            " completed_at) VALUES (?, 'alice', ?, 1, ?, '{}', ?, ?, ?)",
            [(f"job-{n}", statuses[n % 5], workflow, 1.7e9 + n, 1.7e9 + n,
              None if statuses[n % 5] == "cancelled" else 1.7e9 + n + (n * 7919) % 600)
             for n in range(jobs)],
        )
    db.close()


def timed_open(path: Path) -> float:
    started = time.perf_counter()
    JobStore(path).close()
    return time.perf_counter() - started


def best_ms(read: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        read()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


# The page as GET /api/jobs reads it, first and from a cursor: before finish numbers by completion time, its cursor
# (completed_at, seq); now by finish number (JobStore.page's query).
_SELECT = f"SELECT {_COLUMNS_BUT_WORKFLOW} FROM jobs WHERE status = ?"
PAGE_QUERIES = {
    "before": (
        f"{_SELECT} ORDER BY completed_at DESC, seq DESC LIMIT ?",
        f"{_SELECT} AND (completed_at < ? OR (completed_at = ? AND seq < ?) OR completed_at IS NULL)"
        " ORDER BY completed_at DESC, seq DESC LIMIT ?",
    ),
    "after": (
        f"{_SELECT} AND finish_seq IS NOT NULL ORDER BY finish_seq DESC, seq DESC LIMIT ?",
        f"{_SELECT} AND finish_seq IS NOT NULL AND finish_seq < ? ORDER BY finish_seq DESC, seq DESC LIMIT ?",
    ),
}


def page_times(path: Path) -> dict[str, float]:
    db = sqlite3.connect(path)
    try:
        status = JobStatus.COMPLETED.value
        rows = db.execute("SELECT completed_at, seq, finish_seq FROM jobs WHERE status = ? ORDER BY finish_seq DESC",
                          (status,)).fetchall()
        completed_at, seq, finish_seq = rows[len(rows) // 2]
        cursors = {"before": (completed_at, completed_at, seq), "after": (finish_seq,)}
        times = {}
        for version, (first, halfway) in PAGE_QUERIES.items():
            times[f"{version}, first page"] = best_ms(lambda q=first: db.execute(q, (status, PAGE)).fetchall())
            times[f"{version}, halfway"] = best_ms(
                lambda q=halfway, v=version: db.execute(q, (status, *cursors[v], PAGE)).fetchall()
            )
        return times
    finally:
        db.close()


FINISH = "UPDATE jobs SET status = 'completed', result = ?, completed_at = ?, lease_at = NULL, poll_id = NULL"


def finish_write_us(numbered_by: str, result_bytes: int, jobs: int) -> float:
    """Microseconds a finishing write takes, its number set by the UPDATE ("update") or by a trigger ("trigger")."""
    with tempfile.TemporaryDirectory() as scratch:
        store = JobStore(Path(scratch) / "queue.db")
        conn = store._conn  # the store's own connection and schema, triggers included
        if numbered_by == "trigger":  # our triggers fire for a finish whose statement leaves finish_seq alone
            conn.execute("DROP TRIGGER jobs_numbered_when_finished")
            conn.execute(
                "CREATE TRIGGER every_finish AFTER UPDATE OF status ON jobs WHEN NEW.status = 'completed'"
                " BEGIN UPDATE finish_counter SET last = last + 1;"
                " UPDATE jobs SET finish_seq = (SELECT last FROM finish_counter) WHERE seq = NEW.seq; END"
            )
        conn.execute("PRAGMA synchronous=OFF")
        workflow = json.dumps(workflow_of(20))
        conn.executemany("INSERT INTO jobs (id, user_id, status, priority, workflow, metadata, created_at)"
                         " VALUES (?, 'alice', 'running', 1, ?, '{}', 0)", [(f"j{n}", workflow) for n in range(jobs)])
        result = "r" * result_bytes
        started = time.perf_counter()
        for n in range(jobs):
            conn.execute("BEGIN IMMEDIATE")
            if numbered_by == "trigger":
                conn.execute(f"{FINISH} WHERE id = ?", (result, time.time(), f"j{n}"))
            else:
                number = conn.execute("UPDATE finish_counter SET last = last + 1 RETURNING last").fetchall()[0][0]
                conn.execute(f"{FINISH}, finish_seq = ? WHERE id = ?", (result, time.time(), number, f"j{n}"))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
        assert conn.execute("SELECT COUNT(DISTINCT finish_seq) FROM jobs").fetchone()[0] == jobs
        store.close()
    return elapsed / jobs * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workflow-kb", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "queue.db"
        old_database(path, args.jobs, args.workflow_kb)
        size_mb = path.stat().st_size / 1e6
        first, second = timed_open(path), timed_open(path)
        print(f"{args.jobs} finished jobs, {args.workflow_kb} KiB workflows, {size_mb:.0f} MB: "
              f"first open (numbering) {first:.2f} s, second open {second * 1000:.1f} ms")
        for label, ms in page_times(path).items():
            print(f"a page of {PAGE} completed jobs, newest first, {label}: {ms:.2f} ms (best of {REPEATS})")
    for result_bytes, jobs in ((2, 2000), (1_000_000, 200)):
        for numbered_by in ("update", "trigger"):
            us = finish_write_us(numbered_by, result_bytes, jobs)
            print(f"a finish numbered by the {numbered_by}, {result_bytes}-byte result: {us:.0f} us ({jobs} jobs)")


if __name__ == "__main__":
    main()
