"""The outputs' retention: when the retention deletes a job, its result folder QUEUE_MANAGER_OUTPUTS_DIR/<user_id>/
<job_id>/ goes too, then <user_id>/ if that leaves it empty. Nothing else on the volume is ever deleted (other tools
may share it), and no symbolic link is followed: a link at <user_id> or <job_id>, or inside the folder, is never
a way out of it. A folder that could not be deleted is not tried again: its job is gone."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import structlog

from queue_manager.store import PurgedJob

log = structlog.get_logger()

# Each folder opened from its parent's descriptor: a link (O_NOFOLLOW) or anything not a folder (O_DIRECTORY) there
# fails at once, a FIFO included (O_NONBLOCK: never waits for a writer), whatever was there a moment before.
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NOT_PRUNED_FIX = ("mount the outputs volume read-write into the queue manager, or prune {root} yourself: these jobs "
                  "are deleted, their folders will not be tried again")


class _Refused(Exception):
    """A name that is not a folder of ours to delete: a link, a file, an id that is not one folder name."""


def prune_job_folders(root: Path, jobs: Iterable[PurgedJob]) -> int:
    """Delete the folder of each job the retention deleted, and its user's folder when left empty. One log line for
    the deleted, one for the failed (the first error named). Returns how many were deleted. Touches the disk, for
    as long as a large folder takes: run it in a worker thread, never the database's."""
    jobs = list(jobs)
    if not jobs:
        return 0
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        _not_pruned(root, len(jobs), jobs[0], str(exc))
        return 0
    pruned, failed, first_failure = 0, 0, None
    try:
        for job in jobs:
            try:
                pruned += _remove_job_folder(root_fd, job)
            except _Refused as refusal:
                log.warning("output_folder_refused", job_id=job.job_id, user_id=job.user_id, reason=str(refusal))
            except OSError as exc:
                failed += 1
                first_failure = first_failure or (job, str(exc))
    finally:
        os.close(root_fd)
    if pruned:
        log.info("outputs_pruned", count=pruned, outputs_dir=str(root))
    if first_failure is not None:
        _not_pruned(root, failed, *first_failure)
    return pruned


def _remove_job_folder(root_fd: int, job: PurgedJob) -> bool:
    """Delete <user_id>/<job_id>/ under root_fd, then <user_id>/ if empty. False when there was no such folder."""
    for name in (job.user_id, job.job_id):
        if not _is_one_folder_name(name):
            raise _Refused(f"{name!r} is not a single folder name")
    try:
        user_fd = _open_folder(root_fd, job.user_id, job.user_id)
    except FileNotFoundError:
        return False
    try:
        try:
            _empty(_open_folder(user_fd, job.job_id, f"{job.user_id}/{job.job_id}"))
            os.rmdir(job.job_id, dir_fd=user_fd)
        except FileNotFoundError:  # no folder: the job wrote nothing, or it was deleted meanwhile
            return False
    finally:
        os.close(user_fd)
    try:
        os.rmdir(job.user_id, dir_fd=root_fd)  # never follows a link, deletes only an empty folder
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
            raise
    return True


def _open_folder(parent_fd: int, name: str, shown: str) -> int:
    try:
        return os.open(name, FOLDER_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW: a link; O_DIRECTORY: a file, a FIFO
            raise _Refused(f"{shown} is not a folder but a {_kind(parent_fd, name)}") from None
        raise


def _empty(folder_fd: int) -> None:
    """Delete everything in the folder (its descriptor, closed here): a link as a file, never followed."""
    try:
        for name in os.listdir(folder_fd):
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                if stat.S_ISDIR(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode):
                    _empty(_open_folder(folder_fd, name, name))
                    os.rmdir(name, dir_fd=folder_fd)
                else:
                    os.unlink(name, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)


def _is_one_folder_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def _kind(folder_fd: int, name: str) -> str:
    try:
        return f"symbolic link to {os.readlink(name, dir_fd=folder_fd)}"
    except OSError:
        return "file"  # or a FIFO, a socket, a device


def _not_pruned(root: Path, count: int, first: PurgedJob, error: str) -> None:
    log.error("outputs_not_pruned", count=count, outputs_dir=str(root), job_id=first.job_id, user_id=first.user_id,
              error=error, fix=NOT_PRUNED_FIX.format(root=root))
