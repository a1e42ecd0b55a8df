"""An exception nothing caught, in a process that logs into memory (a bench counting its own log lines)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_CRASH_LOGGING_INTO_MEMORY = """
import io
from common.logs import configure_logging, register_secret
configure_logging("json", "info", stream=io.StringIO())
register_secret("crash-secret-7f3a")
raise RuntimeError("gave up on https://worker:url-password-9@queue.example.com with crash-secret-7f3a")
"""


def test_a_crash_of_a_process_logging_into_memory_reaches_its_stderr_scrubbed(tmp_path: Path) -> None:
    """Before, the excepthook logged it into the in-memory log, which nobody read: exit 1, nothing printed."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _CRASH_LOGGING_INTO_MEMORY], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=30)  # fmt: skip
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr, done.stderr
    assert "RuntimeError: gave up on https://***@queue.example.com with ***" in done.stderr, done.stderr
    assert "crash-secret-7f3a" not in done.stderr and "url-password-9" not in done.stderr
