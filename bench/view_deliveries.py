"""Delivery of a large result fetched over ComfyUI's /view: time taken, how long the event loop stalls, and the
longest step (a write, an fsync) the delivery took without saying it moved, which DELIVERY_STALL_S bounds.

    ./dev python -m bench.view_deliveries               # 5 deliveries of a 200 MiB file
    ./dev python -m bench.view_deliveries --file-mib 50 --runs 3

The worker's health server and the job's lease renewal share the delivery's event loop, so the loop's stall is
what /health and the queue manager see. ComfyUI is replaced by a generator that yields the file in 64 KiB chunks,
as httpx does, so only the writing is measured. OUTPUTS_PATH is a temporary folder under --dir.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

from worker.comfyui import ComfyUIClient
from worker.outputs import OutputDelivery

CHUNK = 1 << 16
PROBE_S = 0.01


class ChunkedView:
    def __init__(self, file_mib: int) -> None:
        self.chunks = file_mib * (1 << 20) // CHUNK
        self.payload = os.urandom(CHUNK)

    async def download(self, filename: str, subfolder: str, folder_type: str) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            yield self.payload


async def longest_stall_while(work, delivery: OutputDelivery) -> tuple[float, float, float]:
    """(seconds the work took, the longest the event loop did not run a 10 ms timer on time, the longest the
    delivery did not say it moved: what DELIVERY_STALL_S is measured against)."""
    stalls: list[float] = [0.0]
    still: list[float] = [0.0]

    async def probe() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(PROBE_S)
            stalls.append(time.perf_counter() - started - PROBE_S)
            still.append(time.monotonic() - delivery.progressed_at)

    prober = asyncio.create_task(probe())
    started = time.perf_counter()
    await work
    took = time.perf_counter() - started
    prober.cancel()
    return took, max(stalls), max(still)


async def deliveries(file_mib: int, runs: int, folder: str | None) -> None:
    comfy = cast(ComfyUIClient, ChunkedView(file_mib))
    history = {"9": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}}
    with tempfile.TemporaryDirectory(dir=folder) as root:
        delivery = OutputDelivery(Path(root), comfy)
        for run in range(runs):
            took, stall, still = await longest_stall_while(delivery.deliver(history, "alice", f"job-{run}"), delivery)
            print(f"run {run + 1}: {file_mib} MiB in {took:.2f} s ({file_mib / took:.0f} MiB/s), "
                  f"longest event-loop stall {stall * 1000:.0f} ms, "
                  f"longest step without progress {still * 1000:.0f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file-mib", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where OUTPUTS_PATH is made (default: the system's temp folder)")
    arguments = parser.parse_args(argv)
    asyncio.run(deliveries(arguments.file_mib, arguments.runs, arguments.dir))


if __name__ == "__main__":
    main()
