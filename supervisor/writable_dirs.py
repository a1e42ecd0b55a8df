"""Fail fast on directories the container must write to: a mount that uid 10001 cannot write would otherwise give
a "ready" container whose every job fails at delivery. Likewise a folder it only reads (COMFYUI_INPUT_DIR): missing
or unreadable, every job loading a file from it would fail with "Invalid image file".

The check writes a `.write-check-*` file and removes it at once. One left by a process killed in between is
removed by a later check once it is STALE_WRITE_CHECK_S old by the directory's own clock (the mtime of the new
probe): OUTPUTS_PATH may be a volume several replicas share, and a younger one may be another replica's check.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

PROBE_PREFIX = ".write-check-"
STALE_WRITE_CHECK_S = 3600.0  # a live check lives for a few milliseconds
SLOW_CHECK_S = 5.0  # a local disk answers in milliseconds; a hung network mount never does


def unwritable_directories(directories: Mapping[str, Path]) -> list[str]:
    """One line per variable whose directory cannot be created or written by this process; empty when all can."""
    problems = []
    for variable, path in directories.items():
        with _said_if_slow(variable, path):
            error = _why_unwritable(path)
        if error is not None:
            problems.append(_describe(variable, path, error))
    return problems


def unwritable_file(variable: str, path: Path, content: bytes = b"") -> str | None:
    """Why this process cannot write the file at path, as much as content (its folder made if missing), or None when
    it can."""
    with _said_if_slow(variable, path):
        if not path.name or path.is_dir():
            return f"{variable}={path} is a folder, not a file. Fix: name a file in a writable folder."
        error = _why_unwritable(path.parent, content)
    return None if error is None else _describe(variable, path, error, folder=path.parent)


def unreadable_directories(directories: Mapping[str, Path]) -> list[str]:
    """One line per variable whose directory this process cannot list; empty when all can."""
    problems = []
    for variable, path in directories.items():
        try:
            with _said_if_slow(variable, path), os.scandir(path) as entries:
                next(entries, None)
        except OSError as exc:
            problems.append(
                f"{variable}={path} is not a readable directory ({exc.strerror or type(exc).__name__}): "
                f"{_ownership(path)}; this container runs as uid {os.getuid()} gid {os.getgid()}. "
                f"Fix: {_fix_reading(variable, path, exc.errno)}"
            )
    return problems


def _said_if_slow(variable: str, path: Path) -> contextlib.AbstractContextManager[None]:
    """A line on stderr once the check of path has taken SLOW_CHECK_S, before the start has logged anything."""
    line = (f"comfy-supervisor: checking {variable}={path} has taken {SLOW_CHECK_S:g} s and goes on: a network "
            "mount that does not answer? The start waits for it.\n")
    return said_if_slow(lambda: _say(line))


@contextlib.contextmanager
def said_if_slow(say: Callable[[], object]) -> Iterator[None]:
    """say() once the step inside has taken SLOW_CHECK_S: on a mount that does not answer (a hung NFS server, its
    lock daemon) a step blocks without end, and nothing said where it waits."""
    timer = threading.Timer(SLOW_CHECK_S, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no stderr, or a closed one
        sys.stderr.write(line)
        sys.stderr.flush()


def _fix_reading(variable: str, path: Path, number: int | None) -> str:
    if number == errno.ENOENT:
        return f"mount the volume holding the files there, or unset {variable}."
    if number == errno.ENOTDIR:
        return f"a file stands where a folder should be; mount a folder at {path}."
    return "let every user read it and enter its folders (chmod -R a+rX <host dir>), or chown it to that uid."


def _why_unwritable(path: Path, content: bytes = b"") -> OSError | None:
    try:
        path.mkdir(parents=True, exist_ok=True)  # a missing scratch or outputs folder is made, as before
        fd, probe = tempfile.mkstemp(dir=path, prefix=PROBE_PREFIX)
    except OSError as exc:
        return exc
    error = None
    try:
        os.write(fd, content)  # a full disk still makes an empty file
    except OSError as exc:
        error = exc
    with contextlib.suppress(OSError):
        _remove_stale_probes(path, now=os.fstat(fd).st_mtime)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return error


def _remove_stale_probes(path: Path, now: float) -> None:
    """The `.write-check-*` files of checks killed before they removed theirs (files only, no link followed)."""
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.name.startswith(PROBE_PREFIX) or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime >= STALE_WRITE_CHECK_S:
                    os.unlink(entry.path)


def _describe(variable: str, path: Path, error: OSError, folder: Path | None = None) -> str:
    uid, gid = os.getuid(), os.getgid()
    reason = error.strerror or type(error).__name__
    what = "is" if folder is None else f"cannot be written: its folder {folder} is"
    folder = folder or path
    return (
        f"{variable}={path} {what} not a writable directory ({reason}): {_ownership(folder)}; this container runs as "
        f"uid {uid} gid {gid}. Fix: {_fix(folder, error.errno, uid, gid)}"
    )


def _fix(path: Path, number: int | None, uid: int, gid: int) -> str:
    """What cures this error: a chown cures a permission, not a read-only mount or a file in the way."""
    if number == errno.EROFS:
        return (
            "the volume is mounted read-only; mount it read-write (drop ':ro' or 'read_only' from the mount): "
            "the container writes there."
        )
    if number in (errno.EEXIST, errno.ENOTDIR):
        return f"a file stands where a folder should be; mount or create a folder at {path}."
    if number in (errno.EACCES, errno.EPERM):
        return (
            f"chown the host directory mounted there to that uid (sudo chown -R {uid}:{gid} <host dir>), or mount "
            f"a named volume instead (docker run -v <volume name>:{path}), which starts with the image's ownership."
        )
    return "check the volume mounted there (full, over quota or failing: the reason above says which)."


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
