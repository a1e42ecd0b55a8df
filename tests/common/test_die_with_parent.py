"""A child started with ``die_with_parent`` dies when its parent is killed outright. Its preexec function runs in
the forked child of a threaded parent (the log writer's thread, the event loop's executor resolving names): there
it must not dlopen libc, which takes the loader's lock another thread may have held at the fork, a child stuck for
good. libc's prctl is resolved in the parent; here the parent's ctypes.CDLL fails once die_with_parent returned."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from ..conftest import wait_for

PARENT = """
import ctypes, os, subprocess, sys, time
from common.children import die_with_parent

arrange = die_with_parent(os.getpid())

def no_dlopen(*args, **kwargs):
    raise AssertionError("dlopen in the forked child")

ctypes.CDLL = no_dlopen
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=arrange)
print(child.pid, flush=True)
time.sleep(60)
"""


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan nobody reaps, in a container without an init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_the_child_dies_with_its_parent_killed_and_its_preexec_function_never_loads_libc() -> None:
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child_pid = 0
    try:
        line = parent.stdout.readline() if parent.stdout else b""
        assert line.strip().isdigit(), (line + (parent.stderr.read() if parent.stderr else b"")).decode()
        child_pid = int(line)
        assert is_running(child_pid)
        parent.kill()
        parent.wait(timeout=10)
        await wait_for(lambda: not is_running(child_pid), timeout=10)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if child_pid and is_running(child_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)
