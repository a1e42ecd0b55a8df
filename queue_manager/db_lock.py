"""One serving queue manager per database file. `python -m queue_manager` holds an exclusive lock on <db>.lock for as
long as it runs: a second one given the same --db refuses to start, naming the first. Two serving one file each
handed out its jobs and ran the lease passes, the reaper and the retention on its own. The lock is the kernel's
(flock): it goes with its process, SIGKILLed too, so none is ever left stale. Whatever only reads the database (the
demo's check, tests, the sqlite3 shell) never takes it. Likewise one per outputs folder (--outputs-dir)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

import structlog

log = structlog.get_logger()

OUTPUTS_LOCK = ".queue-manager.lock"  # a dot-name: the sweep and the retention never look at it


class DatabaseInUse(Exception):
    """Another process holds the database's lock, or the outputs folder's."""


def lock_database(db: str | Path) -> None:
    """Lock <db>.lock (beside the file a link named by `db` leads to) for the rest of the process's life, its
    descriptor never closed, and write this process's id in it. Nothing is locked when it cannot be created (no such
    folder, a read-only one): opening the database fails then too, saying why. Raises DatabaseInUse naming the
    holder."""
    try:
        path = Path(f"{Path(db).resolve()}.lock")
        holder = _hold(path)
    except FileNotFoundError:  # no such folder: opening the database fails next, saying so
        return
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of links; ELOOP: <db>.lock is a link
        log.warning("database_lock_not_taken", path=f"{db}.lock", error=f"{type(exc).__name__}: {exc}",
                    hint="a second queue manager on this --db would not be refused: remove what is in its place")
        return
    if holder is not None:
        raise DatabaseInUse(f"--db {db} is served by another queue manager (pid {holder}, holding {path})")


def lock_outputs(folder: Path) -> None:
    """Lock <folder>/.queue-manager.lock as lock_database locks the database: a second queue manager on the same
    outputs folder would take the first one's job folders for orphans and delete them. Nothing is locked on a
    folder this user cannot write to (mounted read-only): it deletes nothing there either. Raises DatabaseInUse
    naming the holder."""
    path = folder / OUTPUTS_LOCK
    try:
        holder = _hold(path)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            log.warning("outputs_lock_not_taken", path=str(path), error=f"{type(exc).__name__}: {exc}",
                        hint="a second queue manager on this --outputs-dir would not be refused: remove what is in "
                             "its place")
        return
    if holder is not None:
        raise DatabaseInUse(f"--outputs-dir {folder} is used by another queue manager (pid {holder}, holding "
                            f"{path}): its orphan sweep would delete this one's outputs, and this one's its")


def _hold(path: Path) -> str | None:
    """Lock `path` for the rest of the process's life and write this process's id in it: None. Another process
    holds it: what it wrote there (its id), "unknown" when nothing."""
    # O_NOFOLLOW: a link planted in its place would have its target truncated (the id is written over it).
    # O_NONBLOCK: a FIFO planted there, empty, held the read of the holder's id for good.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            said = os.read(fd, 20)
        except BlockingIOError:  # a FIFO with nothing in it
            said = b""
        os.close(fd)
        return said.decode(errors="replace").strip() or "unknown"  # empty: it is writing it now
    with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, only the id is missing
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return None
