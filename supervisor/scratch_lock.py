"""One container per scratch disk: at start the supervisor locks SCRATCH_DIR for as long as it runs.

Each start empties ComfyUI's output and temp folders there (supervisor/scratch.py), and ComfyUI keeps its
database there. A second container given the same SCRATCH_DIR (a shared volume, a copied compose service)
would delete the results the first one's ComfyUI is writing, before its worker delivers them. The lock is
the kernel's (flock): it goes with the process, however it ends, so a restart in place finds it free.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

LOCK_NAME = ".supervisor.lock"


class ScratchInUse(Exception):
    """Another running supervisor holds SCRATCH_DIR."""


def lock_scratch(scratch_dir: Path) -> tuple[IO[str] | None, str | None]:
    """Hold SCRATCH_DIR's lock until this process ends: (the open lock file, None), or (None, why no lock
    could be taken) where the file system cannot lock (then the start goes on unguarded).

    Raises ScratchInUse, naming the holder's pid, when another process holds it.
    """
    path = scratch_dir / LOCK_NAME
    try:
        # Never truncated before it is ours: the holder's pid stays readable. Bytes that are not UTF-8 in it (another
        # tool's, a damaged disk) or in our hostname are replaced, not an error.
        handle = path.open("a+", encoding="utf-8", errors="replace")
    except OSError as exc:
        return None, f"{path}: {exc.strerror or type(exc).__name__}"
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read(200).strip() or "unknown"
        handle.close()
        raise ScratchInUse(f"SCRATCH_DIR={scratch_dir} is in use by another running container ({holder}): "
                           "give each container its own scratch disk") from None
    except OSError as exc:  # a file system without locks (some network mounts)
        handle.close()
        return None, f"{path}: cannot lock: {exc.strerror or type(exc).__name__}"
    try:  # who holds it, for the next one's message; a full disk may refuse the line, not the lock
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()}, pid {os.getpid()}\n")
        handle.flush()
    except OSError:
        pass
    return handle, None
