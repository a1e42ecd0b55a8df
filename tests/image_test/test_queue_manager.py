"""The image test's queue manager is stopped when it does not answer in time: it was left running on the host,
holding its port, after the test had ended with the TimeoutError."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def running_children() -> list[int]:
    """This process's children that have not exited (a zombie has)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


def test_a_queue_manager_that_does_not_answer_in_time_is_stopped(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    checks = importlib.import_module("image_test.checks")
    before = set(running_children())
    try:
        with pytest.raises(TimeoutError):
            checks.QueueManager(tmp_path, start_timeout_s=0)
        assert set(running_children()) - before == set()
    finally:
        for pid in set(running_children()) - before:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
