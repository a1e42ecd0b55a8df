"""What the scaler's read of recent completions costs the queue manager, per tick: bytes and latency.

    ./dev python -m bench.job_lists --completed 20000

Fills an in-process queue manager with finished jobs (each result four output records, as the worker reports
them), then times the list the scaler asked for before (the oldest 500 completed jobs, of which it kept the
50 latest by completion time) and the one it asks for now (the 50 latest, newest first).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from queue_manager.server import QueueManagerServer

WORKFLOW = {"1": {"class_type": "Noop", "inputs": {}}}
RESULT = {
    "prompt_id": "0" * 36,
    "outputs": [
        {"filename": f"ComfyUI_{n:05d}_.png", "subfolder": "alice", "type": "output", "bytes": 1_234_567,
         "sha256": "0" * 64, "path": f"/outputs/alice/ComfyUI_{n:05d}_.png"}
        for n in range(4)
    ],
}
QUERIES = {
    "before: status=completed&limit=500": {"status": "completed", "limit": 500},
    "after: status=completed&limit=50&order=newest": {"status": "completed", "limit": 50, "order": "newest"},
}


async def measure(completed: int, repeats: int) -> None:
    async with QueueManagerServer() as server:
        store = server.store
        for _ in range(completed):
            job = store.submit("alice", WORKFLOW)
            store.pop_next("bench", server.mode)
            store.complete(job.id, RESULT)
        async with httpx.AsyncClient(base_url=server.url) as client:
            for label, params in QUERIES.items():
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    response = await client.get("/api/jobs", params=params)
                    times.append(time.perf_counter() - started)
                print(f"{label}: {len(response.content)} bytes, {min(times) * 1000:.1f} ms (best of {repeats})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completed", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(measure(args.completed, args.repeats))


if __name__ == "__main__":
    main()
