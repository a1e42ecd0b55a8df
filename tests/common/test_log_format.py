"""What a process's log looks like with LOG_FORMAT and LOG_LEVEL left at their defaults: JSON lines off a terminal
(a container's log, a pipe), readable lines on one, in the encoding of the stream it writes to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_LOG_A_LINE = """
import logging, structlog, sys
from common.logs import configure_logging
configure_logging("auto", sys.argv[1])
structlog.get_logger().info("Worker started", node="Café")
logging.getLogger("httpx").info('HTTP Request: GET http://127.0.0.1:8188/history "HTTP/1.1 200 OK"')
"""


def _stderr_of(level: str, stderr: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _LOG_A_LINE, level], stderr=stderr, stdout=subprocess.DEVNULL, timeout=60, cwd=REPO,
        env={**os.environ, **env},
    )  # fmt: skip


def test_off_a_terminal_each_line_is_a_json_object() -> None:
    run = _stderr_of("info", subprocess.PIPE)
    assert run.returncode == 0, run.stderr
    [line] = [json.loads(line) for line in run.stderr.decode().splitlines()]
    assert (line["event"], line["level"], line["node"]) == ("Worker started", "info", "Café")


def test_on_a_terminal_lines_are_for_reading_in_the_terminals_encoding() -> None:
    """A terminal set to Latin-1 gets "é" as one byte: in UTF-8 it showed "Ã©"."""
    controller, terminal = os.openpty()
    try:
        run = _stderr_of("info", terminal, PYTHONIOENCODING="latin-1")
        os.close(terminal)
        shown = b""
        while chunk := _read_or_nothing(controller):
            shown += chunk
    finally:
        os.close(controller)
    assert run.returncode == 0
    assert b"Worker started" in shown and b"{" not in shown, shown
    assert b"Caf\xe9" in shown, shown


def _read_or_nothing(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the terminal's other end closed, everything read
        return b""


@pytest.mark.parametrize(("level", "kept"), [("info", False), ("debug", True)])
def test_httpxs_line_for_every_request_is_kept_for_log_level_debug_only(level: str, kept: bool) -> None:
    run = _stderr_of(level, subprocess.PIPE)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line)["event"] for line in run.stderr.decode().splitlines()]
    assert ("HTTP Request: GET http://127.0.0.1:8188/history \"HTTP/1.1 200 OK\"" in events) is kept, events
