"""Load: N jobs through the local queue manager (its own process) at R worker replicas against the ComfyUI
simulator at zero execution time. Prints jobs/s, queue-manager latency p50/p99 as a client sees it, and the
queue process's peak memory. Not a test.

    ./dev python -m bench.queue_load --jobs 500 --replicas 10   (from the repository root)
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench._processes import child
from demo.replicas import free_loopback_port, worker_env
from demo.workload import load_workflow
from scaler.providers.local import LocalBackend


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_until_up(url: str, path: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=1) as http:
        for _ in range(200):
            try:
                if (await http.get(path)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url}{path} never answered")


async def load(jobs: int, replicas: int, timeout_s: float) -> dict:
    root = Path(tempfile.mkdtemp(prefix="queue-load-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # the bench's scratch goes with its process
    queue_port, comfy_port = free_loopback_port(), free_loopback_port()
    queue_url, comfy_url = f"http://127.0.0.1:{queue_port}", f"http://127.0.0.1:{comfy_port}"
    queue_command = [sys.executable, "-m", "queue_manager", "--port", str(queue_port), "--db", str(root / "queue.db"),
                     "--max-queue-depth", str(jobs + 1)]  # fmt: skip
    comfy_command = [sys.executable, "-m", "standins.comfyui", "--port", str(comfy_port), "--output-directory",
                     str(root / "comfy-out"), "--cache-none", "--history-lag", "0"]  # fmt: skip
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    env = worker_env(queue_url, root / "outputs", idle_polls=100, poll_interval_s=0.05)
    backend = LocalBackend({**env, "COMFYUI_URL": comfy_url, "LOG_LEVEL": "warning"}, log_dir=root / "logs")
    latencies: list[float] = []
    with child(queue_command, **quiet) as queue, child(comfy_command, **quiet):
        try:
            await wait_until_up(queue_url, "/health")
            await wait_until_up(comfy_url, "/system_stats")
            await backend.apply(replicas)
            workflow = load_workflow("quick")
            async with httpx.AsyncClient(base_url=queue_url, timeout=10) as http:

                async def timed(method: str, path: str, **kwargs) -> httpx.Response:
                    started = time.perf_counter()
                    response = await http.request(method, path, **kwargs)
                    latencies.append((time.perf_counter() - started) * 1000)
                    return response

                started = time.perf_counter()
                for index in range(jobs):
                    body = {"user_id": f"user-{index % 20}", "workflow": workflow}
                    (await timed("POST", "/api/jobs", json=body)).raise_for_status()
                while True:
                    status = (await timed("GET", "/api/queue/status")).json()
                    ended = status["completed_jobs"] + status["failed_jobs"]
                    if ended >= jobs:
                        break
                    if time.perf_counter() - started > timeout_s:
                        raise TimeoutError(f"{ended} of {jobs} jobs ended in {timeout_s:g} s (--timeout)")
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
            peak = peak_rss_mib(queue.pid)
        finally:
            await backend.aclose()
    return {
        "jobs": jobs, "replicas": replicas, "completed": status["completed_jobs"], "failed": status["failed_jobs"],
        "wall_s": round(elapsed, 2), "jobs_per_s": round(jobs / elapsed, 1),
        "queue_latency_ms_p50": round(percentile(latencies, 0.5), 2),
        "queue_latency_ms_p99": round(percentile(latencies, 0.99), 2),
        "queue_requests_timed": len(latencies), "queue_peak_rss_mib": round(peak, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="jobs not all ended this long after the first was submitted fail the bench; default 600")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(load(args.jobs, args.replicas, args.timeout)), indent=2))


if __name__ == "__main__":
    main()
