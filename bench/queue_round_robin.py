"""What a round-robin pop costs as the finished jobs pile up (the fairness count reads every started job).

    ./dev python -m bench.queue_round_robin --finished 3500 15000 --users 20 --workflow-kb 20

For each size: a JobStore with that many finished jobs spread over the users (the retention keeps about
3,500 at 500 jobs a day), 20 pending jobs, then the median of 50 round-robin pops (each followed by the job's
completion, so the table does not change size) and of 50 position listings (`GET /api/jobs/{id}` and every
submit compute them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.job_lists import RESULT
from bench.queue_retention import workflow_of
from queue_manager.models import QueueMode
from queue_manager.store import JobStore

SAMPLES = 50
PENDING = 20


def measure(finished: int, users: int, workflow: dict) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = JobStore(Path(tmp) / "jobs.db")
        for n in range(finished):
            job = store.submit(f"user{n % users}", workflow)
            store.pop_next("bench", QueueMode.FIFO)
            store.complete(job.id, RESULT)
        for n in range(PENDING):
            store.submit(f"user{n % users}", workflow)
        pops, listings = [], []
        for n in range(SAMPLES):
            began = time.perf_counter()
            job = store.pop_next("bench", QueueMode.ROUND_ROBIN)
            pops.append(time.perf_counter() - began)
            assert job is not None
            store.complete(job.id, RESULT)
            store.submit(f"user{n % users}", workflow)
            began = time.perf_counter()
            store.pending_positions(QueueMode.ROUND_ROBIN)
            listings.append(time.perf_counter() - began)
        return statistics.median(pops) * 1000, statistics.median(listings) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finished", type=int, nargs="+", default=[3500, 15000])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--workflow-kb", type=int, default=20)
    args = parser.parse_args(argv)
    workflow = workflow_of(args.workflow_kb)
    print("| finished jobs | round-robin pop, median ms | positions, median ms |")
    print("|---:|---:|---:|")
    for finished in args.finished:
        pop_ms, positions_ms = measure(finished, args.users, workflow)
        print(f"| {finished:,} | {pop_ms:.2f} | {positions_ms:.2f} |")


if __name__ == "__main__":
    main()
