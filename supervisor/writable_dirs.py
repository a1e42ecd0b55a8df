"""Fail fast on directories the container must write to: a mount that uid 10001 cannot write would otherwise give
a "ready" container whose every job fails at delivery."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path


def unwritable_directories(directories: Mapping[str, Path]) -> list[str]:
    """One line per variable whose directory cannot be created or written by this process; empty when all can."""
    problems = []
    for variable, path in directories.items():
        reason = _why_unwritable(path)
        if reason is not None:
            problems.append(_describe(variable, path, reason))
    return problems


def _why_unwritable(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)  # a missing scratch or outputs folder is made, as before
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def _describe(variable: str, path: Path, reason: str) -> str:
    uid, gid = os.getuid(), os.getgid()
    return (
        f"{variable}={path} is not a writable directory ({reason}): {_ownership(path)}; this container runs as "
        f"uid {uid} gid {gid}. Fix: chown the host directory mounted there to that uid "
        f"(sudo chown -R {uid}:{gid} <host dir>), or mount a named volume instead "
        f"(docker run -v <volume name>:{path}), which starts with the image's ownership."
    )


def _ownership(path: Path) -> str:
    """Owner and mode of the path, or of its nearest existing parent when it does not exist."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        info = probe.stat()
    except OSError as exc:
        return f"{probe} cannot be inspected ({exc.strerror})"
    where = "it" if probe == path else f"its nearest existing parent {probe}"
    return f"{where} is owned by uid {info.st_uid} gid {info.st_gid} with mode {stat.filemode(info.st_mode)}"
