"""Benchmark: the worker's peak RSS when a workflow makes ComfyUI's answers huge.

A small workflow doubles a string with StringConcatenate until it is --mb MB and shows it with PreviewAny (both
ComfyUI 0.8.0 core nodes): the text lands in the prompt's history entry (and its `executed` event). The queue
manager and the ComfyUI simulator run in their own processes; the worker runs as `python -m worker` from
--worker-source (default: this checkout; give another checkout, e.g. one of main before the fix, to compare), and
its peak RSS is the kernel's ru_maxrss for that child. A quick job first gives the baseline. Not a test.

    ./dev python -m bench.comfyui_reply_memory --mb 60   (from the repository root)
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._processes import child, exit_and_peak_rss
from demo.replicas import free_loopback_port

REPO = Path(__file__).resolve().parents[1]
QUICK = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
}


def text_output_workflow(text_bytes: int, doublings: int = 16) -> dict[str, Any]:
    """A workflow of a few KB whose PreviewAny shows a text of text_bytes (rounded up to 2**doublings): each
    StringConcatenate joins the previous one's output to itself."""
    seed = "x" * -(-text_bytes // 2**doublings)
    workflow: dict[str, Any] = {
        "1": {"class_type": "StringConcatenate", "inputs": {"string_a": seed, "string_b": seed, "delimiter": ""}},
    }
    for node in range(2, doublings + 1):
        upstream = [str(node - 1), 0]
        workflow[str(node)] = {
            "class_type": "StringConcatenate", "inputs": {"string_a": upstream, "string_b": upstream, "delimiter": ""},
        }  # fmt: skip
    workflow[str(doublings + 1)] = {"class_type": "PreviewAny", "inputs": {"source": [str(doublings), 0]}}
    return workflow


def wait_until_up(url: str, path: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + path, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}{path} did not come up")
        time.sleep(0.1)


def run_worker(source: Path, env: dict[str, str], timeout_s: float) -> tuple[int, float]:
    """(exit code, peak RSS in MiB) of one `python -m worker` run to its idle exit."""
    with child(
        [sys.executable, "-m", "worker"], cwd=source, env={**env, "PYTHONPATH": str(source)},
        stdout=subprocess.DEVNULL, stderr=None if os.environ.get("BENCH_VERBOSE") else subprocess.DEVNULL,
    ) as worker:  # fmt: skip
        return exit_and_peak_rss(worker, timeout_s)


def one_job(
    http: httpx.Client, source: Path, env: dict[str, str], workflow: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    job_id = http.post("/api/jobs", json={"user_id": "bench", "workflow": workflow}).raise_for_status().json()["id"]
    code, peak_mib = run_worker(source, env, timeout_s)
    job = http.get(f"/api/jobs/{job_id}").json()
    return {"worker_exit": code, "worker_peak_rss_mib": round(peak_mib, 1), "job_status": job["status"],
            "job_error": (job.get("error") or "")[:160] or None}


def bench(text_mb: float, source: Path, worker_timeout_s: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="reply-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # the bench's scratch goes with its process
    queue_port, comfy_port = free_loopback_port(), free_loopback_port()
    queue_url, comfy_url = f"http://127.0.0.1:{queue_port}", f"http://127.0.0.1:{comfy_port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": REPO}
    queue_command = [sys.executable, "-m", "queue_manager", "--port", str(queue_port), "--db", str(root / "queue.db")]
    comfyui_command = [sys.executable, "-m", "standins.comfyui", "--port", str(comfy_port), "--output-directory",
                       str(root / "comfy-out"), "--cache-none"]  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "QUEUE_MANAGER_URL": queue_url, "COMFYUI_URL": comfy_url,
        "OUTPUTS_PATH": str(root / "outputs"), "SERVERLESS_MODE": "true", "SERVERLESS_MAX_IDLE_POLLS": "1",
        "WORKER_POLL_INTERVAL": "0.1", "HEALTH_PORT": "0", "HEALTH_HOST": "127.0.0.1", "LOG_FORMAT": "json",
    }
    workflow = text_output_workflow(int(text_mb * 1_000_000))
    with child(queue_command, **quiet), child(comfyui_command, **quiet):
        wait_until_up(queue_url, "/health")
        wait_until_up(comfy_url, "/system_stats")
        with httpx.Client(base_url=queue_url, timeout=30) as http:
            baseline = one_job(http, source, env, QUICK, worker_timeout_s)
            hostile = one_job(http, source, env, workflow, worker_timeout_s)
    return {
        "worker_source": str(source),
        "workflow_bytes": len(json.dumps(workflow)),
        "text_output_mb": round(len(workflow["1"]["inputs"]["string_a"]) * 2**16 / 1e6, 2),
        "quick_job": baseline,
        "text_output_job": hostile,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=60.0, help="size of the text output (MB); default 60")
    parser.add_argument("--worker-source", type=Path, default=REPO, help="checkout whose worker is measured")
    parser.add_argument("--worker-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="a worker still running this long fails the bench; default 600")
    args = parser.parse_args(argv)
    print(json.dumps(bench(args.mb, args.worker_source.resolve(), args.worker_timeout), indent=2))


if __name__ == "__main__":
    main()
