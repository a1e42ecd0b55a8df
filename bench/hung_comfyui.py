"""Benchmark: how long a replica lingers after its ComfyUI hangs (alive, answering nothing) mid-job.

The queue manager and the ComfyUI simulator in their own processes; the worker as `python -m worker` from
--worker-source (default: this checkout) with the production defaults for every timeout. Once the job runs, the
simulator gets SIGSTOP. Prints the seconds from the hang to the job being handed back and to the worker's exit
(with its code): the time a billed replica spends doing nothing. Not a test; with the defaults it takes minutes.

    ./dev python -m bench.hung_comfyui   (from the repository root)
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._processes import child
from bench.comfyui_reply_memory import REPO, wait_until_up
from demo.replicas import free_loopback_port

SLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
}


def wait_for_status(http: httpx.Client, job_id: str, done: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = http.get(f"/api/jobs/{job_id}").json()["status"]
        if status in done:
            return status
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} not {done} within {timeout_s} s")


def bench(source: Path, extra_env: dict[str, str]) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="hung-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # the bench's scratch goes with its process
    queue_port, comfy_port = free_loopback_port(), free_loopback_port()
    queue_url, comfy_url = f"http://127.0.0.1:{queue_port}", f"http://127.0.0.1:{comfy_port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": REPO}
    queue_command = [sys.executable, "-m", "queue_manager", "--port", str(queue_port), "--db", str(root / "queue.db")]
    comfyui_command = [sys.executable, "-m", "standins.comfyui", "--port", str(comfy_port), "--output-directory",
                       str(root / "comfy-out"), "--node-seconds", "ImageBlur=3600"]  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "QUEUE_MANAGER_URL": queue_url, "COMFYUI_URL": comfy_url,
        "OUTPUTS_PATH": str(root / "outputs"), "HEALTH_PORT": "0", "HEALTH_HOST": "127.0.0.1", "LOG_FORMAT": "json",
        "PYTHONPATH": str(source), **extra_env,
    }
    # grace_s=0 for the stopped ComfyUI: its SIGTERM would wait for a SIGCONT that never comes.
    with child(queue_command, **quiet), child(comfyui_command, grace_s=0, **quiet) as comfyui:
        wait_until_up(queue_url, "/health")
        wait_until_up(comfy_url, "/system_stats")
        with httpx.Client(base_url=queue_url, timeout=30) as http:
            job_id = http.post("/api/jobs", json={"user_id": "bench", "workflow": SLOW}).raise_for_status().json()["id"]
            with child([sys.executable, "-m", "worker"], cwd=source, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL) as worker:  # fmt: skip
                wait_for_status(http, job_id, {"running"}, 60)
                time.sleep(2)
                comfyui.send_signal(signal.SIGSTOP)
                hung_at = time.monotonic()
                wait_for_status(http, job_id, {"pending", "failed", "completed"}, 3600)
                handed_back_s = time.monotonic() - hung_at
                code = worker.wait(3600)
                exited_s = time.monotonic() - hung_at
            job = http.get(f"/api/jobs/{job_id}").json()
    return {
        "worker_source": str(source),
        "env": extra_env,
        "job_after_hang": job["status"],
        "hang_to_job_handed_back_s": round(handed_back_s, 1),
        "hang_to_worker_exit_s": round(exited_s, 1),
        "worker_exit_code": code,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-source", type=Path, default=REPO, help="checkout whose worker is measured")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra worker setting")
    args = parser.parse_args(argv)
    if unset := [item for item in args.env if "=" not in item]:
        parser.error(f"--env {unset[0]!r}: not NAME=VALUE")
    extra = dict(item.split("=", 1) for item in args.env)
    print(json.dumps(bench(args.worker_source.resolve(), extra), indent=2))


if __name__ == "__main__":
    main()
