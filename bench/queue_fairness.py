"""What a submit, a status poll, a listing and a next-job cost over HTTP with 10,000 jobs pending (a batch beside
a workshop), in each queue mode.

    ./dev python -m bench.queue_fairness --pending 10000 --finished 3500
    ./dev python -m bench.queue_fairness --mode fifo
    ./dev python -m bench.queue_fairness --max-pending-per-user 50 --round-robin-window-s 3600

One in-process queue manager (`--mode`, default `round_robin`; its own temporary database): `--finished` jobs
handed out and completed over the past 7 days, then a batch user's jobs (priority 3) and 25 workshop users' 20
each (priority 1), `--pending` in all. Then the median of 30 `POST /api/jobs` by a workshop user (each answer
carries the job's place in line), of 30 `GET /api/jobs/{id}` of the batch's last pending job, of 30
`GET /api/jobs?status=pending&limit=1000` (a page of 1000 pending jobs, each with its place), and of 30
`GET /api/workers/next-job` (each job then completed), and the submit and pop store calls alone (the submit's depth
and per-user checks and insert; the pop).
The new settings are passed only when given, so the same file measures a version without them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx

from bench.job_lists import RESULT
from bench.queue_retention import workflow_of
from common.timespans import DAY_S
from queue_manager import QueueManagerServer
from queue_manager.models import JobPriority, QueueMode

SAMPLES = 30
PAGE = 1000
WORKSHOP_USERS = 25
WORKSHOP_JOBS = 20


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def measure(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, float]:
    clock = Clock()
    today = clock.now
    workflow = workflow_of(args.workflow_kb)
    depth = 2 * args.pending  # checked on every submit, as it would be in a queue sized for this
    mode = QueueMode(args.mode)
    async with QueueManagerServer(mode=mode.value, max_queue_depth=depth, clock=clock, **settings) as queue:
        store = queue.store
        for n in range(args.finished):  # the batch user's share of the week, then everyone else's
            clock.now = today - 7 * DAY_S + n * (7 * DAY_S / args.finished)
            store.submit("batch" if n % 2 else f"user{n % WORKSHOP_USERS}", workflow)
            job = store.pop_next("bench", QueueMode.FIFO)
            store.complete(job.id, RESULT)  # type: ignore[union-attr]
        clock.now = today
        for n in range(WORKSHOP_USERS * WORKSHOP_JOBS):
            store.submit(f"user{n % WORKSHOP_USERS}", workflow, priority=JobPriority.HIGH)
        for _ in range(args.pending - WORKSHOP_USERS * WORKSHOP_JOBS):
            last_of_batch = store.submit("batch", workflow, priority=JobPriority.LOW)
        submits, statuses, pages, pops, store_submits, store_pops = [], [], [], [], [], []
        async with httpx.AsyncClient(base_url=queue.url, timeout=60) as http:
            for n in range(SAMPLES):
                began = time.perf_counter()
                submission = {"user_id": f"user{n % WORKSHOP_USERS}", "workflow": workflow, "priority": 1}
                answer = await http.post("/api/jobs", json=submission)
                submits.append(time.perf_counter() - began)
                assert answer.status_code == 201, answer.text
                began = time.perf_counter()
                answer = await http.get(f"/api/jobs/{last_of_batch.id}")
                statuses.append(time.perf_counter() - began)
                assert answer.json()["position_in_queue"] is not None, answer.text
                began = time.perf_counter()
                answer = await http.get("/api/jobs", params={"status": "pending", "limit": str(PAGE)})
                pages.append(time.perf_counter() - began)
                assert len(answer.json()) == PAGE, answer.text
                began = time.perf_counter()
                job = (await http.get("/api/workers/next-job", params={"worker_id": "bench"})).json()["job"]
                pops.append(time.perf_counter() - began)
                store.complete(job["id"], RESULT)
                began = time.perf_counter()
                store.submit(
                    f"user{n % WORKSHOP_USERS}", workflow, priority=1, max_depth=depth, **args.submit_kwargs
                )
                store_submits.append(time.perf_counter() - began)
                began = time.perf_counter()
                job = store.pop_next("bench", mode)
                store_pops.append(time.perf_counter() - began)
                store.complete(job.id, RESULT)  # type: ignore[union-attr]
    return {
        "POST /api/jobs": median_ms(submits),
        "GET /api/jobs/{id} (pending)": median_ms(statuses),
        "GET /api/jobs, 1000 pending": median_ms(pages),
        "GET next-job": median_ms(pops),
        "store.submit": median_ms(store_submits),
        "store.poll": median_ms(store_pops),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=[mode.value for mode in QueueMode], default="round_robin")
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--finished", type=int, default=3_500)
    parser.add_argument("--workflow-kb", type=int, default=2)
    parser.add_argument("--max-pending-per-user", type=int, default=None)
    parser.add_argument("--round-robin-window-s", type=float, default=None)
    args = parser.parse_args(argv)
    if args.pending < PAGE:  # every sample lists a full page of pending jobs, the batch's last among them
        parser.error(f"--pending must be at least {PAGE} (a full page of pending jobs), not {args.pending}")
    settings: dict[str, Any] = {}
    args.submit_kwargs = {}
    if args.max_pending_per_user is not None:
        settings["max_pending_per_user"] = args.max_pending_per_user
        args.submit_kwargs["max_pending_per_user"] = args.max_pending_per_user
    if args.round_robin_window_s is not None:
        settings["round_robin_window_s"] = args.round_robin_window_s
    figures = asyncio.run(measure(args, settings))
    print(f"{args.mode}, pending {args.pending:,}, finished {args.finished:,}, settings {settings or 'none'};"
          f" median of {SAMPLES}:")
    for name, ms in figures.items():
        print(f"  {name}: {ms:.1f} ms")


if __name__ == "__main__":
    main()
