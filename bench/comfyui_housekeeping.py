"""Benchmark: what a long-lived replica's ComfyUI keeps after N jobs: history entries, its memory, its disk.

N jobs of a workflow padded to --pad-mib MiB (a StringConcatenate input no output uses: ComfyUI stores the whole
prompt in the history entry, as a real one with long prompts or inline images would), each saving one image
(SaveImage: a result) and previewing it (PreviewImage: a `temp` file), with its own colour so ComfyUI's cache
replays nothing. The queue manager and the ComfyUI stand-in run in their own processes, the stand-in as the
supervisor starts ComfyUI (--output-directory, --temp-directory; ComfyUI keeps up to 10,000 history entries);
the worker runs as `python -m worker` from --worker-source (default: this checkout; give a checkout of main before
the housekeeping to compare) with COMFYUI_OUTPUT_DIR and COMFYUI_TEMP_DIR set as the supervisor sets them.
Prints, after the N jobs: ComfyUI's history entries and their JSON size (GET /history), the stand-in's RSS before
and after (it also keeps, for tests, every prompt it received: the same in every run), what one parsed prompt
costs in memory (real ComfyUI keeps that in each history entry; its execution.py cannot be imported without
torch), and the files and bytes left in ComfyUI's output and temp folders. Not a test.

    ./dev python -m bench.comfyui_housekeeping --jobs 300 --pad-mib 1   (from the repository root)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx

from bench._processes import child
from bench.comfyui_reply_memory import REPO, wait_until_up
from demo.replicas import free_loopback_port

BACKLOG = 20  # jobs waiting in the queue at a time: the manager's depth stays small, the worker never idles


def padded_workflow(pad_bytes: int, color: int) -> dict[str, Any]:
    pad = {"string_a": "x" * pad_bytes, "string_b": "", "delimiter": ""}
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench/result"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "StringConcatenate", "inputs": pad},
    }


def parsed_prompt_mib(pad_bytes: int) -> float:
    """What one history entry's prompt costs ComfyUI: it keeps the workflow as json.loads made it from the POST."""
    body = json.dumps({"prompt": padded_workflow(pad_bytes, color=0)})
    tracemalloc.start()
    parsed = json.loads(body)
    size, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del parsed
    return size / (1 << 20)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def folder_usage(folder: Path) -> dict[str, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def run_jobs(
    http: httpx.Client, jobs: int, pad_bytes: int, worker: subprocess.Popen, timeout_s: float
) -> dict[str, int]:
    """Submit the jobs BACKLOG at a time until the worker has finished them all (it exits at its job limit);
    TimeoutError if it is still running after `timeout_s` seconds."""
    submitted: list[str] = []
    deadline = time.monotonic() + timeout_s
    while worker.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{' '.join(worker.args)} still running after {timeout_s:g} s")
        waiting = len(http.get("/api/jobs", params={"status": "pending"}).json())
        while len(submitted) < jobs and waiting < BACKLOG:
            workflow = padded_workflow(pad_bytes, color=len(submitted))
            answer = http.post("/api/jobs", json={"user_id": "bench", "workflow": workflow}).raise_for_status()
            submitted.append(answer.json()["id"])
            waiting += 1
        time.sleep(0.2)
    statuses: dict[str, int] = {}
    for job_id in submitted:
        status = http.get(f"/api/jobs/{job_id}").json()["status"]
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def bench(source: Path, jobs: int, pad_mib: float, worker_timeout_s: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="housekeeping-bench-"))
    comfyui_dir = root / "comfyui"
    queue_port, comfy_port = free_loopback_port(), free_loopback_port()
    queue_url, comfy_url = f"http://127.0.0.1:{queue_port}", f"http://127.0.0.1:{comfy_port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": REPO}
    queue_command = [sys.executable, "-m", "queue_manager", "--port", str(queue_port), "--db", str(root / "queue.db"),
                     "--max-queue-depth", str(BACKLOG * 2)]  # fmt: skip
    comfyui_command = [sys.executable, "-m", "standins.comfyui", "--port", str(comfy_port), "--output-directory",
                       str(comfyui_dir / "output"), "--temp-directory", str(comfyui_dir)]  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "QUEUE_MANAGER_URL": queue_url, "COMFYUI_URL": comfy_url,
        "OUTPUTS_PATH": str(root / "outputs"), "COMFYUI_OUTPUT_DIR": str(comfyui_dir / "output"),
        "COMFYUI_TEMP_DIR": str(comfyui_dir / "temp"), "SERVERLESS_MODE": "true", "SERVERLESS_JOB_LIMIT": str(jobs),
        "SERVERLESS_MAX_IDLE_POLLS": "1000", "WORKER_POLL_INTERVAL": "0.05", "HEALTH_PORT": "0",
        "HEALTH_HOST": "127.0.0.1", "LOG_FORMAT": "json", "PYTHONPATH": str(source),
    }
    worker_output = {"stdout": subprocess.DEVNULL,
                     "stderr": None if os.environ.get("BENCH_VERBOSE") else subprocess.DEVNULL}  # fmt: skip
    try:
        with child(queue_command, **quiet), child(comfyui_command, **quiet) as comfyui:
            wait_until_up(queue_url, "/health")
            wait_until_up(comfy_url, "/system_stats")
            rss_before = rss_mib(comfyui.pid)
            with httpx.Client(base_url=queue_url, timeout=60) as http:
                started = time.monotonic()
                with child([sys.executable, "-m", "worker"], cwd=source, env=env, **worker_output) as worker:
                    statuses = run_jobs(http, jobs, int(pad_mib * (1 << 20)), worker, worker_timeout_s)
                seconds = time.monotonic() - started
            history = httpx.get(comfy_url + "/history", timeout=120).content
            rss_after = rss_mib(comfyui.pid)
            usage = {name: folder_usage(folder) for name, folder in (
                ("comfyui_output_folder", comfyui_dir / "output"), ("comfyui_temp_folder", comfyui_dir / "temp"),
                ("outputs_path", root / "outputs"),
            )}  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "worker_source": str(source),
        "jobs": statuses,
        "seconds": round(seconds, 1),
        "comfyui_history_entries": len(json.loads(history)),
        "comfyui_history_json_mib": round(len(history) / (1 << 20), 1),
        "comfyui_rss_mib": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
        "one_parsed_prompt_mib": round(parsed_prompt_mib(int(pad_mib * (1 << 20))), 2),
        **usage,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs to run; default 300")
    parser.add_argument("--pad-mib", type=float, default=1.0, help="workflow padding (MiB); default 1")
    parser.add_argument("--worker-source", type=Path, default=REPO, help="checkout whose worker is measured")
    parser.add_argument("--worker-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="a worker still running this long fails the bench; default 600")  # fmt: skip
    args = parser.parse_args(argv)
    print(json.dumps(bench(args.worker_source.resolve(), args.jobs, args.pad_mib, args.worker_timeout), indent=2))


if __name__ == "__main__":
    main()
