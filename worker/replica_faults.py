"""Which ComfyUI execution errors only a fresh replica can cure, decided from what a user cannot write.

ComfyUI's `execution_error` carries `exception_type`, the module-qualified class of what the node raised
(docs/comfyui-protocol.md). Its `exception_message` often echoes user input (a SaveImage `filename_prefix`,
a prompt), so text alone never decides:

- A CUDA error. Since torch 2.8 every CUDA runtime error is a `torch.AcceleratorError` whose message is CUDA's
  own error string; only with that type is the message trusted, and then only to tell the errors that leave
  the CUDA context usable (out of memory, a bad launch configuration) from the ones that poison it (illegal
  memory access, device-side assert, launch failure, ECC, ...).
- ComfyUI's own disk full, over quota or failing. A builtin `OSError` is printed by Python as
  `[Errno N] <strerror>`, the number first: a node writing to a full disk cannot be told from the job at fault,
  and every later job on this replica would fail the same way. Video and audio nodes write through PyAV, whose
  `av.error.OSError` prints FFmpeg's errno the same way; FFmpeg also answers bad input data with EIO, so from
  PyAV only full and over quota count.
- ComfyUI's own folders read-only: the kernel remounts a failing disk read-only (ext4's errors=remount-ro), and
  every later job would fail there in milliseconds. Only a builtin `OSError` naming, after its errno, a file
  inside ComfyUI's output or temp folder: a node writing where it may not (the read-only /models) is the job's
  fault.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from pathlib import Path

# full_type_name() of ComfyUI's execution.py: module + "." + qualname ("builtins" omitted).
CUDA_ERROR_TYPES = frozenset({"torch.AcceleratorError", "torch.cuda.CudaError"})

# CUDA errors after which the context still works: the job failed, the worker need not die.
RECOVERABLE_CUDA_ERRORS = (
    "out of memory",
    "invalid configuration argument",
    "invalid argument",
    "too many resources requested for launch",
    "operation not supported",
)

# ComfyUI's disk: full, over quota, failing. Read-only only in ComfyUI's own folders (_read_only_in).
BROKEN_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)
# The same from PyAV (SaveVideo, SaveWEBM write with it), whose class ComfyUI names with its module.
BROKEN_DISK_ERRNOS_BY_TYPE = {"OSError": BROKEN_DISK_ERRNOS, "av.error.OSError": (errno.ENOSPC, errno.EDQUOT)}


# How Python prints an OSError with one file name: "[Errno 30] Read-only file system: '/a/b.png'".
_READ_ONLY_FILE = re.compile(rf"\[Errno {errno.EROFS}\] [^:']*: '(?P<name>[^'\\]*)'")


def replica_fault(exception_type: str, exception_message: str, own_folders: Sequence[Path] = ()) -> str | None:
    """What is broken on this replica ("fatal GPU error", "ComfyUI's disk failed"), or None: the job failed.
    own_folders: ComfyUI's output and temp folders, where only a broken disk makes a write fail read-only."""
    message = exception_message.strip()
    first_line = message.splitlines()[0] if message else ""
    if exception_type in CUDA_ERROR_TYPES:
        cuda_error = first_line.removeprefix("CUDA error:").strip().lower()
        return None if cuda_error.startswith(RECOVERABLE_CUDA_ERRORS) else "fatal GPU error"
    broken_disk = BROKEN_DISK_ERRNOS_BY_TYPE.get(exception_type, ())
    if broken_disk and first_line.startswith(tuple(f"[Errno {n}] " for n in broken_disk)):
        return "ComfyUI's disk failed"
    if exception_type == "OSError" and _read_only_in(first_line, own_folders):
        return "ComfyUI's disk failed"
    return None


def _read_only_in(first_line: str, folders: Sequence[Path]) -> bool:
    match = _READ_ONLY_FILE.fullmatch(first_line)
    if match is None or not os.path.isabs(match["name"]):
        return False
    path = Path(os.path.normpath(match["name"]))  # a ".." leading out of the folder does not count
    return any(path.is_relative_to(os.path.normpath(folder)) for folder in folders)
