"""A process whose log cannot be written (a full disk, a reader gone, none at all) loses the lines and goes on: a log
call that raised ended it at its first line, its job never taken."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from queue_manager.server import QueueManagerServer
from standins.comfyui import ComfyUISimulator

from ..conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
FULL_DISK = Path("/dev/full")  # every write fails with ENOSPC, as a log file's on a full disk


def close_stderr() -> None:
    os.close(2)  # as a shell's `2>&-` starts it


@pytest.mark.skipif(not FULL_DISK.exists(), reason="no /dev/full")
async def test_a_worker_logging_to_a_full_disk_still_completes_its_job(tmp_path: Path, workflows) -> None:
    with FULL_DISK.open("w") as full:
        await a_job_completes(tmp_path, workflows, "json", stdout=full, stderr=full)


async def test_a_worker_started_with_no_stderr_still_completes_its_job(tmp_path: Path, workflows) -> None:
    # LOG_FORMAT=auto, the worker's default, asks stderr whether it is a terminal.
    await a_job_completes(tmp_path, workflows, "auto", stdout=asyncio.subprocess.DEVNULL, preexec_fn=close_stderr)


async def a_job_completes(tmp_path: Path, workflows: dict[str, dict], log_format: str, **output: Any) -> None:
    comfy = ComfyUISimulator(tmp_path / "comfy-output", tmp_path / "comfy-temp")
    await comfy.start()
    async with QueueManagerServer(test_hooks=True) as queue:
        job = queue.store.submit("alice", workflows["quick"])
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
            "QUEUE_MANAGER_URL": str(queue.url), "COMFYUI_URL": comfy.url,
            "COMFYUI_OUTPUT_DIR": str(comfy.output_dir), "OUTPUTS_PATH": str(tmp_path / "outputs"),
            "WORKER_ID": "w1", "HEALTH_PORT": "0", "HEALTH_HOST": "127.0.0.1", "WORKER_POLL_INTERVAL": "0.05",
            "LOG_FORMAT": log_format,
        }  # fmt: skip
        worker = await asyncio.create_subprocess_exec(sys.executable, "-m", "worker", env=env, cwd=tmp_path, **output)
        try:
            await wait_for(lambda: queue.reports.landed(job.id) or worker.returncode is not None)
            assert worker.returncode is None, "the worker ended at its first log line"
            assert [report.endpoint for report in queue.reports.landed(job.id)] == ["complete-job"]
        finally:
            if worker.returncode is None:
                worker.kill()
            await worker.wait()
            await comfy.stop()
