"""Benchmark: N jobs through one worker against the ComfyUI simulator at zero execution time.

The queue manager and the simulator run in their own processes, as in production; the worker runs here.
Prints jobs/s and the worker's overhead per job: from pickup (the queue manager marks the job running) to the
report accepted (it marks it completed), minus the time ComfyUI spent executing. Not a test.

    ./dev python -m bench.worker_overhead --jobs 300   (from the repository root)
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import structlog

from bench._processes import child
from bench.queue_load import percentile, wait_until_up
from demo.replicas import free_loopback_port
from worker.config import load_settings
from worker.execution import RunTimings
from worker.main import Worker

QUICK = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
}


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


async def bench(jobs: int, history_lag_s: float) -> dict:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    root = Path(tempfile.mkdtemp(prefix="worker-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # the bench's scratch goes with its process
    queue_port, comfy_port = free_loopback_port(), free_loopback_port()
    queue_url, comfy_url = f"http://127.0.0.1:{queue_port}", f"http://127.0.0.1:{comfy_port}"
    queue_command = [sys.executable, "-m", "queue_manager", "--port", str(queue_port), "--db", str(root / "queue.db"),
                     "--max-queue-depth", str(jobs + 1)]  # fmt: skip
    comfy_command = [sys.executable, "-m", "standins.comfyui", "--port", str(comfy_port), "--output-directory",
                     str(root / "comfy-out"), "--cache-none", "--history-lag", str(history_lag_s)]  # fmt: skip
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    with child(queue_command, **quiet), child(comfy_command, **quiet):
        await wait_until_up(queue_url, "/health")
        await wait_until_up(comfy_url, "/system_stats")
        async with httpx.AsyncClient(base_url=queue_url, timeout=10) as http:
            ids = []
            for index in range(jobs):
                response = await http.post("/api/jobs", json={"user_id": f"user{index % 20}", "workflow": QUICK})
                ids.append(response.raise_for_status().json()["id"])
            settings = load_settings(
                queue_manager_url=queue_url, comfyui_url=comfy_url, outputs_path=root / "outputs",
                poll_interval_s=0.01, serverless_mode=True, serverless_max_idle_polls=1, health_port=0,
                comfyui_output_dir=root / "comfy-out",
            )
            started = time.perf_counter()
            await Worker(settings, timings=RunTimings()).run()
            wall = time.perf_counter() - started
            overheads = []
            for job_id in ids:
                job = (await http.get(f"/api/jobs/{job_id}")).json()
                assert job["status"] == "completed", job
                busy = seconds_between(job["started_at"], job["completed_at"])
                overheads.append((busy - job["result"]["timings"]["execution_s"]) * 1000)
    return {
        "jobs": jobs,
        "history_lag_ms": history_lag_s * 1000,
        "wall_s": round(wall, 3),
        "jobs_per_s": round(jobs / wall, 1),
        "overhead_ms_p50": round(statistics.median(overheads), 2),
        "overhead_ms_p99": round(percentile(overheads, 0.99), 2),
        "overhead_ms_max": round(max(overheads), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--history-lag-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(bench(args.jobs, args.history_lag_ms / 1000)), indent=2))


if __name__ == "__main__":
    main()
