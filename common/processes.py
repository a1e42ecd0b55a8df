"""Whether a process named by a pid left in a file or a folder name is still running."""

from __future__ import annotations

import os


def pid_running(pid: int) -> bool:
    """Another user's process (EPERM), or a pid this platform cannot ask about, counts as running: what it left is
    not ours to remove."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True
