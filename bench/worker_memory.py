"""Benchmark: the worker's memory over many jobs, and against a custom node that makes a job's outputs huge.

The queue manager and the ComfyUI stand-in run in this process; the worker runs as `python -m worker` from
--worker-source (default: this checkout; give another, e.g. an export of main before a fix, to compare). Three
runs, each with a worker of its own:

- many jobs: --jobs quick jobs (EmptyImage -> SaveImage) through one worker; its RSS (VmRSS) is sampled every
  tenth of them, so growth per job shows;
- executed flood: one job whose SaveImage, a custom node here, sends --flood-mb MB of `executed` events for
  the running prompt, each naming another node; the worker's peak RSS (the kernel's ru_maxrss);
- many outputs: one job whose SaveImage lists --outputs output files; peak RSS, time, and how the job ended.

    ./dev python -m bench.worker_memory --jobs 500 --flood-mb 200 --outputs 100000   (from the repository root)

Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from bench._processes import child, exit_and_peak_rss
from queue_manager.server import QueueManagerServer
from standins.comfyui import ComfyUISimulator
from standins.comfyui_nodes import NodeEnv, NodeResult

REPO = Path(__file__).resolve().parents[1]
QUICK = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
}
EVENT_BYTES = 1 << 20  # each `executed` event of the flood


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def worker_run(source: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """One `python -m worker` from `source`, ended on exit if it is still running (bench._processes)."""
    with child(
        [sys.executable, "-m", "worker"], cwd=source, env={**env, "PYTHONPATH": str(source)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as worker:  # fmt: skip
        yield worker


async def wait_for(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not finish in time")
        await asyncio.sleep(0.05)


async def many_jobs(
    qm: QueueManagerServer, source: Path, env: dict[str, str], jobs: int, timeout_s: float
) -> dict[str, Any]:
    ids = [qm.store.submit(f"user{index % 20}", QUICK).id for index in range(jobs)]
    samples = []
    with worker_run(source, {**env, "SERVERLESS_MAX_IDLE_POLLS": "20"}) as worker:
        for index, job_id in enumerate(ids, 1):
            await wait_for(lambda job_id=job_id: qm.store.get(job_id).status in ("completed", "failed"), timeout_s)
            if index == 1 or index % max(1, jobs // 10) == 0:
                samples.append(f"{index}: {rss_mib(worker.pid):.1f}")
        _code, peak_mib = await asyncio.to_thread(exit_and_peak_rss, worker, timeout_s)
    completed = sum(qm.store.get(job_id).status == "completed" for job_id in ids)
    return {"jobs": jobs, "completed": completed, "rss_mib_after_n_jobs": samples, "peak_rss_mib": round(peak_mib, 1)}


async def one_job(qm: QueueManagerServer, source: Path, env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    job = qm.store.submit("bench", QUICK)
    started = time.monotonic()
    with worker_run(source, env) as worker:
        code, peak_mib = await asyncio.to_thread(exit_and_peak_rss, worker, timeout_s)
    done = qm.store.get(job.id)
    return {
        "worker_exit": code, "worker_peak_rss_mib": round(peak_mib, 1),
        "seconds": round(time.monotonic() - started, 2), "job_status": done.status,
        "job_error": (done.error or "")[:200] or None,
    }  # fmt: skip


def flooding_save(comfy: ComfyUISimulator, megabytes: int) -> None:
    save = comfy.catalogue["SaveImage"]

    def run(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
        text = "x" * (EVENT_BYTES - 200)
        for index in range(megabytes):
            event = {"node": f"spoof-{index}", "output": {"text": [text]}, "prompt_id": comfy.running_prompt_id}
            comfy.send_sync("executed", event)
        return save.run(inputs, env)

    comfy.catalogue["SaveImage"] = replace(save, run=run)


def listing_save(comfy: ComfyUISimulator, outputs: int) -> None:
    save = comfy.catalogue["SaveImage"]

    def run(inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
        result = save.run(inputs, env)
        [image] = result.ui["images"]
        return NodeResult(result.outputs, {"images": [image] * outputs})

    comfy.catalogue["SaveImage"] = replace(save, run=run)


async def bench(source: Path, jobs: int, flood_mb: int, outputs: int, timeout_s: float) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    root = Path(tempfile.mkdtemp(prefix="worker-memory-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # the bench's scratch goes with its process
    comfy = ComfyUISimulator(root / "comfy-out", root / "comfy-temp", cache_outputs=False)
    report: dict[str, Any] = {"worker_source": str(source)}
    async with QueueManagerServer(max_queue_depth=jobs + 10) as qm:
        await comfy.start()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "QUEUE_MANAGER_URL": str(qm.url), "COMFYUI_URL": comfy.url,
            "COMFYUI_OUTPUT_DIR": str(comfy.output_dir), "OUTPUTS_PATH": str(root / "outputs"),
            "SERVERLESS_MODE": "true", "SERVERLESS_MAX_IDLE_POLLS": "1", "WORKER_POLL_INTERVAL": "0.05",
            "HEALTH_PORT": "0", "HEALTH_HOST": "127.0.0.1", "LOG_FORMAT": "json",
        }  # fmt: skip
        try:
            report["many_jobs"] = await many_jobs(qm, source, env, jobs, timeout_s)
            report["quick_job"] = await one_job(qm, source, env, timeout_s)
            save = comfy.catalogue["SaveImage"]
            flooding_save(comfy, flood_mb)
            report[f"executed_flood_{flood_mb}_mb"] = await one_job(qm, source, env, timeout_s)
            comfy.catalogue["SaveImage"] = save
            listing_save(comfy, outputs)
            report[f"listing_{outputs}_outputs"] = await one_job(qm, source, env, timeout_s)
        finally:
            await comfy.stop()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-source", type=Path, default=REPO, help="checkout whose worker is measured")
    parser.add_argument("--jobs", type=int, default=500, help="quick jobs through one worker; default 500")
    parser.add_argument("--flood-mb", type=int, default=200, help="MB of `executed` events of one job; default 200")
    parser.add_argument("--outputs", type=int, default=100_000, help="output files one job lists; default 100000")
    parser.add_argument("--worker-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="a worker still running (or a job unfinished) this long fails the bench; default 600")
    args = parser.parse_args(argv)
    report = asyncio.run(bench(args.worker_source.resolve(), args.jobs, args.flood_mb, args.outputs,
                               args.worker_timeout))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
