"""A full listing of a large queue through GET /api/jobs, in pages of 1000 followed by X-Next-Cursor: time, bytes.

    ./dev python -m bench.job_pages --jobs 10000

Fills an in-process queue manager with jobs, half finished (each result four output records, as the worker
reports them) and half pending, then lists them all, oldest first and newest first, and times each page: the
first and the last page cost the same (a cursor is a key in the primary index, not an offset to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from bench.job_lists import RESULT, WORKFLOW
from common.logs import scrubbed_excerpt
from queue_manager.server import QueueManagerServer

ANSWER_QUOTED = 300  # characters of an answer that is not a page, in the error


async def list_all(client: httpx.AsyncClient, params: dict[str, str | int], jobs: int) -> tuple[int, int, list[float]]:
    """Jobs listed, bytes received and each page's seconds. A server whose next-page cursor never moves on, or
    that lists more pages than its ``jobs`` jobs fill, fails the bench: it was asked for pages for ever."""
    listed, received, seconds, cursors = 0, 0, [], set()
    while True:
        started = time.perf_counter()
        response = await client.get("/api/jobs", params=params)
        seconds.append(time.perf_counter() - started)
        listed += len(jobs_of(response))
        received += len(response.content)
        cursor = response.headers.get("X-Next-Cursor")
        if cursor is None:
            return listed, received, seconds
        if cursor in cursors:
            raise RuntimeError(f"GET /api/jobs gave the next-page cursor {cursor[:100]!r} twice, after {listed} jobs")
        if len(seconds) > jobs:
            raise RuntimeError(f"GET /api/jobs listed {len(seconds)} pages ({listed} jobs) of {jobs} jobs, and more")
        cursors.add(cursor)
        params = {**params, "after": cursor}


def jobs_of(response: httpx.Response) -> list[object]:
    """The page's jobs; RuntimeError quoting the answer when it is none (a 401, a 500's page): a 401's object was
    counted as one job listed, a 500's HTML a JSONDecodeError that named neither the request nor its status."""
    try:
        page = response.json() if response.status_code == 200 else None
    except (ValueError, RecursionError):  # RecursionError: JSON nested past what the parser reads
        page = None
    if not isinstance(page, list):
        answer = scrubbed_excerpt(response.text, ANSWER_QUOTED)
        raise RuntimeError(f"GET /api/jobs answered {response.status_code}, not a list of jobs: {answer}")
    return page


async def measure(jobs: int, page: int) -> None:
    async with QueueManagerServer(max_queue_depth=0) as server:
        store = server.store
        for n in range(jobs):
            job = store.submit(f"user{n % 20}", WORKFLOW)
            if n < jobs // 2:
                store.pop_next("bench", server.mode)
                store.complete(job.id, RESULT)
        async with httpx.AsyncClient(base_url=server.url, timeout=60.0) as client:
            one = await client.get("/api/jobs", params={"limit": page})
            print(f"one page (all a client could see before): {len(jobs_of(one))} jobs, {len(one.content)} bytes")
            for order in ("oldest", "newest"):
                listed, received, seconds = await list_all(client, {"limit": page, "order": order}, jobs)
                print(f"order={order}: {listed} jobs in {len(seconds)} pages, {received} bytes, "
                      f"{sum(seconds):.2f} s; first page {seconds[0] * 1000:.0f} ms, last {seconds[-1] * 1000:.0f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--page", type=int, default=1000)
    args = parser.parse_args(argv)
    asyncio.run(measure(args.jobs, args.page))


if __name__ == "__main__":
    main()
