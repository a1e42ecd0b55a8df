"""How big the queue manager's database gets, with and without FINISHED_JOB_RETENTION_S.

    ./dev python -m bench.queue_retention --days 30 --jobs-per-day 500 --workflow-kb 20

Replays a studio's days on a JobStore with a simulated clock: jobs submitted evenly over each day, each run and
completed at once with a four-output result, the reaper's passes every minute of simulated time. Prints, every
few days, the rows kept and the file size (database + WAL) with the default retention (7 days) and with 0
(keep for good), then what a purge transaction and a status count cost at the end of each run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.job_lists import RESULT
from common.timespans import DAY_S
from queue_manager.models import JobStatus, QueueMode
from queue_manager.reaper import JobReaper
from queue_manager.server import DEFAULT_FINISHED_JOB_RETENTION_S
from queue_manager.store import JobStore

PASS_S = 60.0


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def workflow_of(kb: int) -> dict[str, dict]:
    """An API-format workflow of about `kb` KiB (nodes with a long prompt each)."""
    node = {"class_type": "CLIPTextEncode", "inputs": {"text": "x" * 900, "clip": ["4", 1]}}
    return {str(n): node for n in range(max(1, kb))}


def file_mb(path: Path) -> float:
    wal = path.with_name(path.name + "-wal")
    return (path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 1e6


def replay(db: Path, retention_s: float, days: int, jobs_per_day: int, workflow: dict, report_every: int) -> dict:
    clock = SimulatedClock()
    store = JobStore(db, clock=clock)
    reaper = JobReaper(store, job_timeout_s=3600, interval_s=PASS_S, clock=clock,
                       finished_job_retention_s=retention_s)
    rows_by_day, slowest_pass_s, next_pass = {}, 0.0, clock.now + PASS_S
    step = DAY_S / jobs_per_day
    for day in range(1, days + 1):
        for _ in range(jobs_per_day):
            job = store.submit("alice", workflow)
            store.pop_next("bench", QueueMode.FIFO)
            store.complete(job.id, RESULT)
            clock.now += step
            while clock.now >= next_pass:
                started = time.perf_counter()
                reaper.run_pass()
                slowest_pass_s = max(slowest_pass_s, time.perf_counter() - started)
                next_pass += PASS_S
        if day % report_every == 0 or day == days:
            rows_by_day[day] = (store.counts()[JobStatus.COMPLETED], file_mb(db))
    started = time.perf_counter()
    for _ in range(20):
        store.counts()
    count_ms = (time.perf_counter() - started) / 20 * 1000
    store.close()
    return {"rows": rows_by_day, "slowest_pass_ms": slowest_pass_s * 1000, "count_ms": count_ms}


def first_purge(db: Path, retention_s: float) -> tuple[int, float]:
    """Open the kept-for-good database with the retention on: what its first (largest) pass costs."""
    clock = SimulatedClock()
    store = JobStore(db, clock=clock)
    clock.now = 1e12
    started = time.perf_counter()
    purged = JobReaper(store, job_timeout_s=3600, interval_s=PASS_S, clock=clock,
                       finished_job_retention_s=retention_s).purge_finished()
    elapsed = time.perf_counter() - started
    store.close()
    return purged, elapsed * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--jobs-per-day", type=int, default=500)
    parser.add_argument("--workflow-kb", type=int, default=20)
    parser.add_argument("--report-every", type=int, default=5)
    args = parser.parse_args(argv)
    workflow = workflow_of(args.workflow_kb)
    retention = DEFAULT_FINISHED_JOB_RETENTION_S
    with tempfile.TemporaryDirectory(prefix="queue-retention-") as tmp:
        kept = replay(Path(tmp) / "kept.db", retention, args.days, args.jobs_per_day, workflow, args.report_every)
        forever = replay(Path(tmp) / "forever.db", 0, args.days, args.jobs_per_day, workflow, args.report_every)
        purged, purge_ms = first_purge(Path(tmp) / "forever.db", retention)
    print(f"{args.jobs_per_day} jobs/day, workflow ~{args.workflow_kb} KiB")
    print(f"| day | rows, retention {retention:g} s | file MB | rows, retention 0 | file MB |")
    print("|---:|---:|---:|---:|---:|")
    for day, (rows, mb) in kept["rows"].items():
        rows_0, mb_0 = forever["rows"][day]
        print(f"| {day} | {rows:,} | {mb:.1f} | {rows_0:,} | {mb_0:.1f} |")
    print(f"slowest reaper pass with retention: {kept['slowest_pass_ms']:.1f} ms")
    print(f"status count: {kept['count_ms']:.2f} ms (retention) vs {forever['count_ms']:.2f} ms (kept for good)")
    print(f"first pass over the kept-for-good database: {purged} rows purged in {purge_ms:.1f} ms")


if __name__ == "__main__":
    main()
