"""What a download of one small output costs when its job carries a large workflow and result.

    ./dev python -m bench.output_lookups --workflow-mb 9 --result-mb 48 --downloads 20

A queue manager in this process with QUEUE_MANAGER_OUTPUTS_DIR: one job completed with a `--workflow-mb` workflow
and a `--result-mb` result listing one 16 KiB output, then `--downloads` sequential downloads of that output; the
time per download and the peak of memory Python allocated meanwhile (tracemalloc, the client's included).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx
import structlog

from queue_manager import QueueManagerServer

OUTPUT = "alice/{job_id}/ComfyUI_00001_.png"


async def run(workflow_mb: int, result_mb: int, downloads: int) -> None:
    node = {"class_type": "CLIPTextEncode", "inputs": {"text": "x" * 1000, "clip": ["4", 1]}}
    workflow = {str(n): node for n in range(workflow_mb * 1000)}
    with tempfile.TemporaryDirectory(prefix="output-lookups-") as tmp:
        volume = Path(tmp) / "outputs"
        volume.mkdir()
        server = QueueManagerServer(db_path=Path(tmp) / "queue.db", outputs_dir=volume)
        async with server as queue, httpx.AsyncClient(base_url=queue.url, timeout=120) as client:
            job_id = (await client.post("/api/jobs", json={"user_id": "alice", "workflow": workflow})).json()["id"]
            await client.get("/api/workers/next-job", params={"worker_id": "bench"})
            path = OUTPUT.format(job_id=job_id)
            (volume / path).parent.mkdir(parents=True)
            (volume / path).write_bytes(b"\x89PNG" + bytes(16 * 1024))
            result = {"outputs": [{"path": path}], "blob": "y" * (result_mb * 1000 * 1000)}
            done = await client.post("/api/workers/complete-job", params={"job_id": job_id}, json={"result": result})
            done.raise_for_status()
            del workflow, result
            times = []
            tracemalloc.start()
            for _ in range(downloads):
                started = time.perf_counter()
                answer = await client.get(f"/api/jobs/{job_id}/outputs/{path}")
                times.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200 and len(answer.content) == 16 * 1024 + 4, answer.status_code
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    print(f"workflow ~{workflow_mb} MB, result ~{result_mb} MB, {downloads} downloads of a 16 KiB output: "
          f"median {statistics.median(times):.1f} ms, max {max(times):.1f} ms; Python's peak allocation "
          f"{peak / 1e6:.1f} MB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow-mb", type=int, default=9)
    parser.add_argument("--result-mb", type=int, default=48)
    parser.add_argument("--downloads", type=int, default=20)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(run(args.workflow_mb, args.result_mb, args.downloads))


if __name__ == "__main__":
    main()
