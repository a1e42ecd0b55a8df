"""Benchmark: N jobs through one worker against the ComfyUI simulator at zero execution time.

Prints jobs/s and the worker's own overhead per job: from pickup (the queue manager marks the job running)
to the report accepted (it marks it completed), minus the time ComfyUI spent executing. Not a test.

    ./dev python bench/worker_overhead.py --jobs 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import structlog

from queue_manager.server import QueueManagerServer
from standins.comfyui import ComfyUISimulator
from worker.config import load_settings
from worker.execution import RunTimings
from worker.main import Worker

QUICK = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench(jobs: int, history_lag_s: float) -> dict:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sim = ComfyUISimulator(
            root / "comfy-out", root / "comfy-temp", history_lag_s=history_lag_s, cache_outputs=False
        )
        comfy_url = await sim.start()
        async with QueueManagerServer(max_queue_depth=jobs + 1) as qm:
            ids = [qm.store.submit(f"user{i % 20}", QUICK).id for i in range(jobs)]
            settings = load_settings(
                queue_manager_url=qm.url, comfyui_url=comfy_url, outputs_path=root / "outputs",
                poll_interval_s=0.01, serverless_mode=True, serverless_max_idle_polls=1, health_port=0,
                comfyui_output_dir=root / "comfy-out",
            )
            started = time.perf_counter()
            await Worker(settings, timings=RunTimings()).run()
            wall = time.perf_counter() - started
            overheads = []
            for job_id in ids:
                job = qm.store.get(job_id)
                assert job is not None and job.status == "completed", (job_id, job and job.error)
                execution = job.result["timings"]["execution_s"]
                overheads.append((job.completed_at - job.started_at - execution) * 1000)
        await sim.stop()
    return {
        "jobs": jobs,
        "history_lag_ms": history_lag_s * 1000,
        "wall_s": round(wall, 3),
        "jobs_per_s": round(jobs / wall, 1),
        "overhead_ms_p50": round(statistics.median(overheads), 2),
        "overhead_ms_p99": round(percentile(overheads, 0.99), 2),
        "overhead_ms_max": round(max(overheads), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--history-lag-ms", type=float, default=0.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args.jobs, args.history_lag_ms / 1000)), indent=2))


if __name__ == "__main__":
    main()
