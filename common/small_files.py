"""Reading a small file an operator names (a spec, a saved state, a participants list, a trace) without a FIFO,
a device or a huge file there holding the process: opened without waiting, a regular file only, read up to a
bound."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class NotARegularFile(OSError):
    """A FIFO, a device or a socket where a file was expected (a FIFO with no writer held a plain open for good)."""


class FileTooLarge(OSError):
    """More bytes than the reader's bound (/dev/zero read whole took memory without end)."""


def read_small_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path``. IsADirectoryError for a folder, NotARegularFile for a FIFO, a
    device or a socket, FileTooLarge past ``max_bytes``; any other OSError as opening or reading raised it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise NotARegularFile(errno.EINVAL, "a FIFO, a device or a socket, not a file", str(path))
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise FileTooLarge(errno.EFBIG, f"more than {max_bytes} bytes", str(path))
    return data
