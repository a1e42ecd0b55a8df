"""Temporary folders a process owns while it runs, and the removal of those whose owner died without removing them.

The owner holds a lock (the kernel's flock) on a file inside its folder for as long as it runs; the lock goes with
the process however it ends (kill -9 included), so a lock another process can take marks a folder nobody uses. A pid
in the name would not: pids are reused. A folder without the lock file is left alone: its owner is making it right
now, or it was made before folders had owners (an earlier version's).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "owner.lock"


@dataclass
class OwnedFolder:
    path: Path
    lock_fd: int | None  # None where the file system cannot lock: the folder is then never taken for abandoned

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # after the removal: until then no other process takes the folder for abandoned
            self.lock_fd = None


def make_owned_folder(prefix: str) -> OwnedFolder:
    """A new folder ``<prefix>XXXXXXXX`` in the temporary directory ($TMPDIR, /tmp), locked by this process."""
    while True:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        lock_path = path / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            # Blocking: another process's remove_abandoned_folders may have taken the lock between the file's
            # creation and this line; it then removes the folder, and this one makes another.
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: a folder without the file, which no one removes but its owner
            os.close(fd)
            lock_path.unlink(missing_ok=True)
            return OwnedFolder(path, None)
        if _same_file(fd, lock_path):
            return OwnedFolder(path, fd)
        os.close(fd)


def remove_abandoned_folders(prefix: str) -> int:
    """Remove this user's folders ``<prefix>*`` in the temporary directory whose owner no longer runs; how many."""
    removed = 0
    for name in glob.glob(f"{glob.escape(prefix)}*", root_dir=tempfile.gettempdir()):
        path = Path(tempfile.gettempdir(), name)
        fd = open_own_plain_file(path, LOCK_NAME)
        if fd is None:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its owner runs (or the file system cannot lock)
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed += not path.exists()
        finally:
            os.close(fd)
    return removed


def open_own_plain_file(folder: Path, name: str) -> int | None:
    """A descriptor of ``name`` in a folder of this user's in a shared temporary folder; None for another user's
    folder, a link, a missing file (being made now, or an earlier version's) or one that is no plain file (a FIFO
    planted there held the open, or the read, for good)."""
    try:
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return None
        fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _same_file(fd: int, path: Path) -> bool:
    with contextlib.suppress(OSError):
        held, named = os.fstat(fd), path.stat(follow_symlinks=False)
        return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
    return False
