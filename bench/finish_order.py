"""The first open of a queue database written before finish numbers: how long numbering its finished jobs takes.

    ./dev python -m bench.finish_order --jobs 10000 --workflow-kb 20

Writes a database with the jobs table as it was before finish numbers (tests/queue_manager/test_finish_order.py's
SCHEMA_BEFORE), every job finished, each with a workflow of about `--workflow-kb` KiB, then times JobStore's first
open (the upgrade: one transaction numbering every finished job) and a second open (nothing left to number). The
queue answers no request until the first open is done.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from bench.queue_retention import workflow_of
from queue_manager.store import JobStore
from tests.queue_manager.test_finish_order import SCHEMA_BEFORE


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workflow-kb", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "queue.db"
        old_database(path, args.jobs, args.workflow_kb)
        size_mb = path.stat().st_size / 1e6
        first, second = timed_open(path), timed_open(path)
    print(f"{args.jobs} finished jobs, {args.workflow_kb} KiB workflows, {size_mb:.0f} MB: "
          f"first open (numbering) {first:.2f} s, second open {second * 1000:.1f} ms")


if __name__ == "__main__":
    main()
