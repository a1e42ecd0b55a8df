"""The queued log writer (common.log_writer) full when the process ends: its last lines (the shutdown line, a
crash's traceback) are what an operator reads first, and must not be the ones dropped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from common.log_writer import MAX_QUEUED_CHARS

REPO = Path(__file__).resolve().parents[2]
LINES = 2 * MAX_QUEUED_CHARS // 200  # twice what the queue holds
DROPPED = "Log lines dropped: the log's reader fell behind"

_FULL_QUEUE_THEN_CRASH = f"""
import os, structlog, sys
from common.logs import configure_logging
configure_logging("json", "info")
log = structlog.get_logger()
for i in range({LINES}):
    log.info("Filler", i=i, pad="x" * 200)
log.info("Worker shutdown complete")
def _say_when_exit_waits(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "wait_written":
        sys.setprofile(None)
        os.write(int(sys.argv[1]), b"exiting\\n")
sys.setprofile(_say_when_exit_waits)
raise RuntimeError("the fatal reason")
"""


def test_the_last_lines_written_to_a_full_queue_are_written_at_exit_after_the_report() -> None:
    """stderr unread until the exit waits for it, the queue full long before the last lines: they were dropped,
    only counted ("Log lines dropped" the last line, no "Worker shutdown complete", no traceback); now the report
    says how many were lost before them, and they follow it."""
    records = _records_of_a_crash_with_the_queue_full()
    reports = [record["dropped"] for record in records if record["event"] == DROPPED]
    written = [record for record in records if record["event"] != DROPPED]
    fillers = [record["i"] for record in written[:-2]]
    assert [record["event"] for record in written[-2:]] == ["Worker shutdown complete", "uncaught_exception"]
    assert "RuntimeError: the fatal reason" in written[-1]["exception"]
    assert fillers == sorted(set(fillers)) and len(reports) == 1
    assert reports[0] == LINES - len(fillers) > 0


def _records_of_a_crash_with_the_queue_full() -> list[dict]:
    read_end, write_end = os.pipe()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _FULL_QUEUE_THEN_CRASH, str(write_end)], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=[write_end])  # fmt: skip
    os.close(write_end)
    try:
        with open(read_end, "rb") as said:
            assert said.read(8) == b"exiting\n"  # stderr unread until the exit waits for it
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 1, err[-2000:]
    return [json.loads(line) for line in err.splitlines()]


def _stamped(record: dict) -> datetime:
    return datetime.fromisoformat(record["timestamp"])


def test_the_report_at_exit_is_stamped_no_later_than_the_lines_it_precedes() -> None:
    """It was stamped when made, at exit: after the last lines (held back to follow it) were, and a collector
    sorting by time put it after them, the traceback before the count of lines lost before it."""
    records = _records_of_a_crash_with_the_queue_full()
    report = next(n for n, record in enumerate(records) if record["event"] == DROPPED)
    assert _stamped(records[report]) <= min(map(_stamped, records[report + 1 :]))
