"""Child processes that end with their parent, even when the parent dies by SIGKILL."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PR_SET_DUMPABLE = 4


def _prctl() -> Callable[..., int] | None:
    """libc's prctl; None where there is none (not Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl
    return None


def die_with_parent(parent_pid: int, sig: signal.Signals = signal.SIGKILL) -> Callable[[], None]:
    """A preexec_fn: the child gets ``sig`` when its parent dies, even by SIGKILL outside a container (a child in
    its own session is stopped by nothing else). Linux only; elsewhere a no-op."""
    # Resolved here, in the parent: loading it in the forked child of a threaded parent takes the loader's lock,
    # which another thread (resolving a name, importing a module) may have held at the fork: the child stuck.
    prctl = _prctl()

    def arrange() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return arrange


def keep_environment_private() -> None:
    """Make this process's /proc/<pid>/environ (and its memory) unreadable to other processes of its user. Its
    environment holds the secrets it starts children without (ComfyUI and its custom nodes, a local worker), and
    any of them read it at /proc/<ppid>/environ. An exec resets the flag: the children stay as they were. Linux
    only; elsewhere a no-op. Root with CAP_SYS_PTRACE still reads it (containers run without that capability)."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
