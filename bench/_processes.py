"""The one way a bench runs a server of its own process: started on entry, ended on exit, never left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

GRACE_S = 20.0


@contextmanager
def child(command: list[str], grace_s: float = GRACE_S, **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """`command` in its own process (`popen`: subprocess.Popen's keywords), ended on exit however the block ends:
    SIGTERM, then SIGKILL if it is still there after `grace_s` seconds. In a coroutine the exit blocks the event
    loop until the child is gone: the benches leave it once their figures are taken."""
    _exit_on_sigterm()
    process = subprocess.Popen(command, **popen)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def end(process: asyncio.subprocess.Process, signum: int = signal.SIGTERM, grace_s: float = GRACE_S) -> None:
    """`signum` to an asyncio `process`, then SIGKILL if it is still running after `grace_s` seconds (frozen, or
    deaf to `signum`) or if the wait is cancelled."""
    if process.returncode is not None:
        return
    process.send_signal(signum)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace_s)
    finally:
        if process.returncode is None:
            process.kill()
    await process.wait()


def _exit_on_sigterm() -> None:
    """A bench stopped with SIGTERM (timeout(1), a CI job cancelled) unwinds as on Ctrl-C, so every `child` block
    ends its process; by default Python dies at once and leaves them running. Only in a bench's own process
    (`python -m bench.<name>`): a program that imports `child` (pytest) keeps its own SIGTERM handling."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None or not spec.name.startswith("bench."):
        return
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def exit_and_peak_rss(process: subprocess.Popen[Any], timeout_s: float) -> tuple[int, float]:
    """(exit code, peak RSS in MiB: the kernel's ru_maxrss) of a `child` once it exits by itself; TimeoutError if
    it has not after `timeout_s` seconds (the `child` block then ends it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_maxrss / 1024  # KiB on Linux
        if time.monotonic() > deadline:
            raise TimeoutError(f"{' '.join(process.args)} still running after {timeout_s:g} s")
        time.sleep(0.05)
