"""A Ctrl-C while `python -m worker` starts, before serve() takes SIGINT: one line and exit 130, no traceback."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from ..conftest import imports_held, interrupted_when

REPO = Path(__file__).resolve().parents[2]
INTERRUPTED = "comfy-worker: interrupted (SIGINT) while starting; exiting"
IMPORTS_HELD = imports_held("worker")


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
            "QUEUE_MANAGER_URL": "http://127.0.0.1:9", "HEALTH_PORT": "0"}


async def test_ctrl_c_while_the_worker_loads_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Before: a SIGINT during the imports (0.6 s at every start) printed a KeyboardInterrupt traceback and ended
    the process by the signal (-2)."""
    marker = tmp_path / "imports-held"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", IMPORTS_HELD, str(marker), env=_env(), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    code, stderr = await interrupted_when(process, marker.exists)
    assert code == 130, stderr
    assert stderr.splitlines() == [INTERRUPTED]


async def test_ctrl_c_while_the_worker_reads_its_settings_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Before: a SIGINT while the settings were read printed a KeyboardInterrupt traceback (-2). The reading is held
    here by a FIFO in place of the .env file, which the worker opens once its imports are done."""
    dotenv = tmp_path / ".env"
    os.mkfifo(dotenv)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", env=_env(), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    writer: list[int] = []

    def reading() -> bool:  # a FIFO opens for writing without waiting only once a reader has it open
        try:
            writer.append(os.open(dotenv, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return False
        return True

    try:
        code, stderr = await interrupted_when(process, reading)
    finally:
        for fd in writer:
            os.close(fd)
    assert code == 130, stderr
    assert stderr.splitlines() == [INTERRUPTED]
