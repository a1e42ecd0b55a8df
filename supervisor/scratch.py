"""At start, before ComfyUI runs: empty ComfyUI's folders (output, temp, input) on the container's scratch disk.

When ComfyUI's own disk fills, the worker hands the job back and exits 1 so the platform replaces the replica
(worker/replica_faults.py). A platform that restarts the container in place keeps the scratch volume, and the
full disk with it: every later job would be handed back too, each losing an attempt. A ComfyUI that just started
has an empty cache, so no prompt can name a file left in these folders again: all of them can go. The input
folder holds the images jobs carried (worker/input_images.py): the worker deletes them once a job's prompt is
over, but a run killed mid-job leaves them, and a later job naming one would load another user's image.

Only the supervisor's own folders under SCRATCH_DIR/comfyui are emptied, and the folders themselves stay. Never a
folder an operator chose (COMFYUI_OUTPUT_DIR or COMFYUI_INPUT_DIR set elsewhere), one that is a symbolic link, or
one that is, holds or sits inside OUTPUTS_PATH or MODELS_DIR. No symbolic link inside is followed: the link itself
is removed. What cannot be removed is counted and logged; the start goes on.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from supervisor.config import SupervisorSettings

log = structlog.get_logger()


@dataclass
class Removed:
    files: int = 0
    subfolders: int = 0
    bytes: int = 0
    not_removed: int = 0
    first_error: str | None = None

    def failed(self, path: Path, exc: OSError) -> None:
        self.not_removed += 1
        if self.first_error is None:
            self.first_error = f"{path}: {exc.strerror or type(exc).__name__}"


def scratch_folders(config: SupervisorSettings, outputs_path: Path) -> tuple[list[Path], dict[str, str]]:
    """The folders to empty, and those left alone with the reason."""
    candidates: list[Path] = []
    kept: dict[str, str] = {}
    for setting, folder, own in (("COMFYUI_OUTPUT_DIR", config.output_dir, config.comfyui_dir / "output"),
                                 ("COMFYUI_INPUT_DIR", config.input_dir, config.comfyui_dir / "input")):  # fmt: skip
        if os.path.normpath(folder) == os.path.normpath(own):
            candidates.append(folder)
        else:
            kept[str(folder)] = (
                f"{setting} names a folder of the operator's, not the container's scratch: never emptied"
            )
    candidates.append(config.temp_dir)  # always the container's own
    to_empty = []
    for folder in candidates:
        reason = _why_kept(folder, {"OUTPUTS_PATH": outputs_path, "MODELS_DIR": config.models_dir})
        if reason is not None:
            kept[str(folder)] = reason
        elif folder.is_dir():
            to_empty.append(folder)
    return to_empty, kept


def _why_kept(folder: Path, protected: dict[str, Path]) -> str | None:
    if folder.is_symlink():
        return f"it is a symbolic link (to {os.readlink(folder)}): not followed"
    try:
        real = folder.resolve()
        resolved = {variable: path.resolve() for variable, path in protected.items()}
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of symbolic links
        return f"it cannot be resolved ({exc})"
    for variable, other in resolved.items():
        if real.is_relative_to(other) or other.is_relative_to(real):
            return f"it is {variable}, inside it or holds it"
    return None


def empty_folder(folder: Path, removed: Removed) -> None:
    """Remove everything in `folder` (not the folder), deepest first, without following a symbolic link."""
    stack: list[tuple[Path, bool]] = [(folder, False)]
    while stack:
        directory, emptied = stack.pop()
        if emptied:
            if directory != folder:
                _remove_subfolder(directory, removed)
            continue
        stack.append((directory, True))
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            removed.failed(directory, exc)
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((path, False))
                    continue
                size = entry.stat(follow_symlinks=False).st_size
                path.unlink()
            except OSError as exc:
                removed.failed(path, exc)
                continue
            removed.files += 1
            removed.bytes += size


def _remove_subfolder(directory: Path, removed: Removed) -> None:
    try:
        directory.rmdir()
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:  # not empty: what stayed inside was already counted
            removed.failed(directory, exc)
        return
    removed.subfolders += 1


def empty_scratch_folders(config: SupervisorSettings, outputs_path: Path) -> Removed:
    """Empty the folders and log what went in one line (a warning when something could not be removed)."""
    folders, kept = scratch_folders(config, outputs_path)
    for folder, reason in kept.items():
        log.info("supervisor.scratch_folder_kept", folder=folder, reason=reason)
    removed = Removed()
    for folder in folders:
        empty_folder(folder, removed)
    report = log.warning if removed.not_removed else log.info
    report(
        "supervisor.scratch_emptied",
        folders=[str(folder) for folder in folders],
        files=removed.files,
        subfolders=removed.subfolders,
        bytes=removed.bytes,
        not_removed=removed.not_removed,
        first_error=removed.first_error,
    )
    return removed
