"""A Ctrl-C while `python -m queue_manager` starts, before serve() takes SIGINT: one line and exit 130, no
traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from ..conftest import imports_held, interrupted_when

REPO = Path(__file__).resolve().parents[2]
INTERRUPTED = "queue manager: interrupted (SIGINT) while starting; exiting"


def test_importing_the_package_loads_no_server() -> None:
    """Before: `import queue_manager` loaded the server, aiohttp and structlog (0.4 s), before __main__ ran."""
    probe = "import queue_manager, sys; print(sorted({'aiohttp', 'structlog'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert loaded.stdout.strip() == "[]", loaded.stderr


async def test_ctrl_c_while_the_queue_manager_loads_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Before: a SIGINT during the imports printed a KeyboardInterrupt traceback and ended the process by the
    signal (-2)."""
    marker = tmp_path / "imports-held"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", imports_held("queue_manager"), str(marker), cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    code, stderr = await interrupted_when(process, marker.exists)
    assert code == 130, stderr
    assert stderr.splitlines() == [INTERRUPTED]
    assert not list(tmp_path.glob("queue-manager.db*"))
