"""Making a file, a rename or a new folder entry survive a power loss: the file and the folder holding it are
synced to disk."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

# A file system that cannot sync (some network and shared-folder mounts answer these) has nothing more to do.
_CANNOT_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.ENOSYS})


def sync(descriptor: int) -> None:
    """fsync, unless the file system cannot; any other error (EIO: the write did not reach the disk) is raised."""
    try:
        os.fsync(descriptor)
    except OSError as exc:
        if exc.errno not in _CANNOT_SYNC:
            raise


def sync_folder(folder: Path) -> None:
    """Sync the folder itself, so the entries made, renamed or removed in it are on disk."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sync(descriptor)
    finally:
        os.close(descriptor)


def replace_whole(path: Path, text: str, partial: Path, mode: int | None = None) -> None:
    """``path`` holds ``text`` whole or keeps what it held: written to ``partial`` beside it (given ``mode``), synced,
    renamed onto it, the folder synced (unsynced, a power loss could undo the rename: a participant removed came
    back). A reader never sees half a file, and a failure (a full disk, a folder in its place, a Ctrl-C) leaves no
    ``partial`` behind."""
    try:
        with partial.open("w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            sync(file.fileno())
        if mode is not None:
            os.chmod(partial, mode)
        os.replace(partial, path)
        sync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise
