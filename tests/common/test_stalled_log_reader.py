"""A log reader that stops reading (a log collector stalled, `docker run` attached to a paused terminal) must not
stall the process: before, once the pipe was full (64 KiB) the next line blocked the event loop and /health went
unanswered until the platform killed the replica."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from common.log_writer import MAX_QUEUED_CHARS

REPO = Path(__file__).resolve().parents[2]
LINES = 2 * MAX_QUEUED_CHARS // 200  # twice what the queue holds: over 60 times a pipe's 64 KiB

_WORKER_LIKE = f"""
import asyncio, sys, structlog
from common.logs import configure_logging
from health.server import HealthServer
from worker.state import WorkerState

configure_logging("json", "info")

async def main():
    state = WorkerState(worker_id="w", provider="local", version="t", max_idle_polls=0, serverless=False)
    print(await HealthServer(state, host="127.0.0.1", port=0).start(), flush=True)
    log = structlog.get_logger()
    for i in range({LINES}):
        log.info("Filler", i=i, pad="x" * 200)
    print("logged", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    log.info("Worker shutdown complete")

asyncio.run(main())
"""


def _start(code: str) -> subprocess.Popen:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _lines_of(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def test_a_log_nobody_reads_does_not_stall_health_and_the_dropped_lines_are_counted() -> None:
    child = _start(_WORKER_LIKE)
    try:
        said = _lines_of(child.stdout)
        port = int(said.get(timeout=60))
        assert said.get(timeout=60) == "logged\n"  # before: never, the loop blocked on its ~300th line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            assert answer.status == 200
        logged = _lines_of(child.stderr)
        records = []
        while not records or "dropped" not in records[-1]:
            records.append(json.loads(logged.get(timeout=60)))
        child.stdin.close()
        records.append(json.loads(logged.get(timeout=60)))
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
    fillers = [record["i"] for record in records if record["event"] == "Filler"]
    assert fillers == sorted(set(fillers)) and 0 < len(fillers) < LINES
    assert records[-2]["event"] == "Log lines dropped: the log's reader fell behind"
    assert records[-2]["dropped"] == LINES - len(fillers)
    assert records[-1]["event"] == "Worker shutdown complete"


def test_lines_waiting_at_exit_are_written_in_order_the_last_last() -> None:
    """Read only once the process is on its way out: all but the pipe's 64 KiB still wait in the queue."""
    code = _WORKER_LIKE.replace(f"range({LINES})", "range(5000)").replace("await asyncio.to_thread", "# ")
    child = _start(code)
    try:
        said = _lines_of(child.stdout)
        said.get(timeout=60)
        assert said.get(timeout=60) == "logged\n"
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines()]
    assert events == ["health.started", *["Filler"] * 5000, "Worker shutdown complete"]


def test_flush_logs_writes_the_queued_lines_before_an_exit_that_runs_no_exit_handler() -> None:
    """os._exit (the worker left holding a hung write to OUTPUTS_PATH) runs no atexit: the lines queued were lost."""
    code = ("import os, structlog\nfrom common.logs import configure_logging, flush_logs\n"
            "configure_logging('json', 'info')\nfor i in range(1000):\n"
            "    structlog.get_logger().warning('Line', i=i)\nflush_logs()\nos._exit(3)\n")  # fmt: skip
    child = _start(code)
    try:
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 3
    assert [json.loads(line)["i"] for line in err.splitlines()] == list(range(1000))
