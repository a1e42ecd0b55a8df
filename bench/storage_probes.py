"""What /health's storage probe writes while a storage fault stands, and how soon /health is healthy again.

    ./dev python -m bench.storage_probes --mib 40 --seconds 600

An in-process queue manager on a simulated steady clock: a report of a ~MIB MiB result fails (the database is
capped 1 MiB short of it: SQLITE_FULL, what a nearly full disk answers), then GET /health is asked every simulated
second for SECONDS. Counts the probe writes /health tried (statements on the store's connection) and the bytes
this process handed to write() meanwhile (/proc/self/io wchar). Then the cap goes (room again) and /health is
asked every simulated second until it says "healthy".
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from pathlib import Path

import httpx

from queue_manager.models import JobStatus
from queue_manager.server import QueueManagerServer

_MiB = 1024 * 1024
WORKFLOW = {"1": {"class_type": "Noop", "inputs": {}}}


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def written_bytes() -> int:
    return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["wchar"])


async def measure(mib: float, seconds: int) -> None:
    steady = SimulatedClock()
    async with (
        QueueManagerServer(lease_timeout_s=0, steady_clock=steady) as queue,
        httpx.AsyncClient(base_url=queue.url, timeout=120.0) as client,
    ):
        store, conn = queue.store, queue.store._conn
        job = store.submit("alice", WORKFLOW)
        store.pop_next("bench", queue.mode)
        probes = []
        conn.set_trace_callback(lambda sql: probes.append(sql) if "INTO storage_probe" in sql else None)
        pages, page_size = (conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ["page_count", "page_size"])
        conn.execute(f"PRAGMA max_page_count = {pages + int((mib - 1) * _MiB) // page_size}")
        try:
            store.complete(job.id, {"text": "x" * int(mib * _MiB)})
        except sqlite3.Error as exc:
            print(f"the {mib:g} MiB report refused: {exc}")
        else:
            raise SystemExit("the report fitted: no storage fault to measure")
        statuses, before, started = set(), written_bytes(), time.perf_counter()
        for _ in range(seconds):
            statuses.add((await client.get("/health")).json()["status"])
            steady.now += 1
        took_s, written = time.perf_counter() - started, written_bytes() - before
        print(f"/health every 1 s for {seconds} s: {len(probes)} probe writes, {written / _MiB:.0f} MiB written, "
              f"{took_s:.1f} s; status {' and '.join(sorted(statuses))}")
        conn.execute("PRAGMA max_page_count = 1073741823")
        waited = 0
        while (await client.get("/health")).json()["status"] != "healthy":
            steady.now += 1
            waited += 1
        assert store.counts()[JobStatus.RUNNING] == 1  # the report was refused: its job still running
        print(f"room again: healthy after {waited} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=40.0, help="size of the report that fails (default: %(default)s)")
    parser.add_argument("--seconds", type=int, default=600, help="simulated seconds of /health (default: %(default)s)")
    arguments = parser.parse_args(argv)
    asyncio.run(measure(arguments.mib, arguments.seconds))


if __name__ == "__main__":
    main()
