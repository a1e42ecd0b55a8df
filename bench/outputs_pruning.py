"""What the outputs' retention costs: deleting the result folders of a retention pass's jobs, and the API meanwhile.

    ./dev python -m bench.outputs_pruning --jobs 1000 --files 4 --file-kb 512

A queue manager (in this process, simulated clock) with QUEUE_MANAGER_OUTPUTS_DIR: `--jobs` jobs completed, each
with a folder of `--files` result files written under <user_id>/<job_id>/ as a worker delivers them, then the
clock moved past the retention and one retention pass run (the database pass, then the folders in a thread).
Meanwhile a client asks GET /api/queue/status back to back: its latency during the pass against before it. Then
the same without QUEUE_MANAGER_OUTPUTS_DIR (the database passes alone, the folders left): what the folders add.

    ./dev python -m bench.outputs_pruning --orphans 10000 --files 1 --file-kb 4

The orphan sweep instead: `--orphans` job folders (`--files` files each) no job of the database names, last modified
before the retention, and as many `--young` ones (a volume's kept jobs: walked, never looked up); one sweep, timed,
the status latency meanwhile, and the RSS of this process (the queue manager's and the client's) just before the
sweep and its peak during the sweep alone (the high-water mark reset through /proc/self/clear_refs first).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import structlog

from bench.queue_memory import rss_mb
from bench.queue_retention import SimulatedClock
from queue_manager import QueueManagerServer

RETENTION_S = 3600.0
USERS = 20
T = TypeVar("T")


async def latencies_ms(client: httpx.AsyncClient, stop: asyncio.Event) -> list[float]:
    samples = []
    while not stop.is_set():
        started = time.perf_counter()
        answer = await client.get("/api/queue/status")
        answer.raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def quiet_latencies_ms(client: httpx.AsyncClient) -> list[float]:
    """The status latency over 2 s with nothing else going on."""
    stop = asyncio.Event()
    sampler = asyncio.create_task(latencies_ms(client, stop))
    await asyncio.sleep(2)
    stop.set()
    return await sampler


async def latencies_during(
    client: httpx.AsyncClient, action: Callable[[], Awaitable[T]]
) -> tuple[list[float], T, float]:
    """The status latency while `action` runs; what it returned, and how long it took (s)."""
    stop = asyncio.Event()
    sampler = asyncio.create_task(latencies_ms(client, stop))
    started = time.perf_counter()
    result = await action()
    took_s = time.perf_counter() - started
    stop.set()
    return await sampler, result, took_s


def write_results(folder: Path, files: int, payload: bytes) -> None:
    """A job's result folder as a worker delivers it."""
    folder.mkdir(parents=True)
    for index in range(files):
        (folder / f"ComfyUI_{index:05}_.png").write_bytes(payload)


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    p50, worst = statistics.median(ordered), ordered[-1]
    return f"{len(samples)} requests, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms"


async def run(jobs: int, files: int, file_kb: int, *, serve_outputs: bool) -> None:
    payload = b"\x89PNG" + bytes(file_kb * 1024 - 4)
    with tempfile.TemporaryDirectory(prefix="outputs-pruning-") as tmp:
        volume = Path(tmp) / "outputs"
        volume.mkdir()
        clock = SimulatedClock()
        server = QueueManagerServer(db_path=Path(tmp) / "queue.db", clock=clock,
                                    outputs_dir=volume if serve_outputs else None,
                                    finished_job_retention_s=RETENTION_S, lease_timeout_s=0,
                                    job_timeout_s=100 * RETENTION_S, reaper_interval_s=3600)
        async with server as queue, httpx.AsyncClient(base_url=queue.url, timeout=30) as client:
            for n in range(jobs):
                user = f"user{n % USERS}"
                job_id = (await client.post("/api/jobs", json={"user_id": user, "workflow": {"1": {}}})).json()["id"]
                await client.get("/api/workers/next-job", params={"worker_id": "bench"})
                write_results(volume / user / job_id, files, payload)
                done = await client.post("/api/workers/complete-job", params={"job_id": job_id}, json={"result": {}})
                done.raise_for_status()

            before = await quiet_latencies_ms(client)

            async def purge_all() -> int:
                purged = 0
                while count := await queue.purge_finished():  # a pass deletes at most a batch (or 0.25 s of rows)
                    purged += count
                return purged

            clock.now += RETENTION_S + 1
            during, purged, pass_s = await latencies_during(client, purge_all)
            left = sum(1 for _ in volume.rglob("*"))
    mb = jobs * files * file_kb / 1024
    print(f"{jobs} jobs, {files} files of {file_kb} KiB each ({mb:,.0f} MB), {USERS} users, "
          f"{'with' if serve_outputs else 'without'} QUEUE_MANAGER_OUTPUTS_DIR")
    print(f"retention passes: {purged} jobs deleted in {pass_s:.2f} s; entries left on the volume: {left}")
    print(f"GET /api/queue/status before: {summary(before)}")
    print(f"GET /api/queue/status during: {summary(during)}")


def orphan_volume(volume: Path, now: float, orphans: int, young: int, files: int, file_kb: int) -> None:
    """`orphans` job folders older than the retention, `young` ones newer."""
    payload = b"\x89PNG" + bytes(file_kb * 1024 - 4)
    for n in range(orphans + young):
        folder = volume / f"user{n % USERS}" / str(uuid.uuid4())
        write_results(folder, files, payload)
        modified = now - 2 * RETENTION_S if n < orphans else now
        os.utime(folder, (modified, modified))


def rss_with_peak_reset_mb() -> float:
    """This process's RSS in MB, its peak (VmHWM) reset to it (/proc/self/clear_refs): what follows peaks alone."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_mb(os.getpid())[0]


async def sweep_orphans(orphans: int, young: int, files: int, file_kb: int) -> None:
    with tempfile.TemporaryDirectory(prefix="orphan-sweep-") as tmp:
        volume = Path(tmp) / "outputs"
        clock = SimulatedClock()
        orphan_volume(volume, clock.now, orphans, young, files, file_kb)
        server = QueueManagerServer(db_path=Path(tmp) / "queue.db", clock=clock, outputs_dir=volume,
                                    finished_job_retention_s=RETENTION_S, lease_timeout_s=0, reaper_interval_s=3600)
        async with server as queue, httpx.AsyncClient(base_url=queue.url, timeout=30) as client:
            before = await quiet_latencies_ms(client)
            rss_before = rss_with_peak_reset_mb()
            during, deleted, sweep_s = await latencies_during(client, queue.sweep_orphan_outputs)
            _, rss_peak = rss_mb(os.getpid())
        left = sum(1 for _ in volume.iterdir() for _ in _.iterdir())
    print(f"{orphans} orphan and {young} young job folders, {files} files of {file_kb} KiB each, {USERS} users")
    print(f"one sweep: {deleted} deleted in {sweep_s:.2f} s; job folders left: {left}; "
          f"RSS {rss_before:.0f} MB before it, peak {rss_peak:.0f} MB during it")
    print(f"GET /api/queue/status before: {summary(before)}")
    print(f"GET /api/queue/status during: {summary(during)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--file-kb", type=int, default=512)
    parser.add_argument("--orphans", type=int, default=None, help="time the orphan sweep instead, over this many")
    parser.add_argument("--young", type=int, default=0, help="with --orphans: folders too young to be swept")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # its own lines only
    if args.orphans is not None:
        asyncio.run(sweep_orphans(args.orphans, args.young, args.files, args.file_kb))
        return
    for serve_outputs in (True, False):  # without: the database passes alone, the folders left
        asyncio.run(run(args.jobs, args.files, args.file_kb, serve_outputs=serve_outputs))


if __name__ == "__main__":
    main()
