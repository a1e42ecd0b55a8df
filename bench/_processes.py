"""The one way a bench runs a server of its own process: started on entry, ended on exit, never left behind."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

GRACE_S = 20.0


@contextmanager
def child(command: list[str], grace_s: float = GRACE_S, **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """`command` in its own process (`popen`: subprocess.Popen's keywords), ended on exit however the block ends:
    SIGTERM, then SIGKILL if it is still there after `grace_s` seconds. In a coroutine the exit blocks the event
    loop until the child is gone: the benches leave it once their figures are taken."""
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
