"""The outputs' retention: when the retention deletes a job, its result folder QUEUE_MANAGER_OUTPUTS_DIR/<user_id>/
<job_id>/ goes too, then <user_id>/ if that leaves it empty. Nothing else on the volume is ever deleted (other tools
may share it), and no symbolic link is followed: a link at <user_id> or <job_id>, or inside the folder, is never
a way out of it. A folder that could not be deleted is left to the orphan sweep (orphan_outputs): its job is gone."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from queue_manager.store import PurgedJob

log = structlog.get_logger()

# Each folder opened from its parent's descriptor: a link (O_NOFOLLOW) or anything not a folder (O_DIRECTORY) there
# fails at once, a FIFO included (O_NONBLOCK: never waits for a writer), whatever was there a moment before.
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Descriptors one deletion holds at most: one per level of folders. ComfyUI's subfolders are a few levels deep.
MAX_FOLDER_DEPTH = 4096
NOT_PRUNED_FIX = ("mount the outputs volume read-write into the queue manager (as the workers' user): these jobs are "
                  "deleted, their folders go in the orphan sweep once it can (shortly after start, then every 24 h)")


class _Refused(Exception):
    """A name that is not a folder of ours to delete: a link, a file, an id that is not one folder name."""


@dataclass
class Deletion:
    """What delete_job_folders did: folders deleted, folders that could not be, and the first of those with why."""

    deleted: int = 0
    failed: int = 0
    first_failure: tuple[PurgedJob, OSError] | None = None


def prune_job_folders(root: Path, jobs: Iterable[PurgedJob]) -> int:
    """Delete the folder of each job the retention deleted, and its user's folder when left empty. One log line for
    the deleted, one for the failed (the first error named). Returns how many were deleted. Touches the disk, for
    as long as a large folder takes: run it in a worker thread, never the database's."""
    deletion = delete_job_folders(root, jobs)
    if deletion.deleted:
        log.info("outputs_pruned", count=deletion.deleted, outputs_dir=str(root))
    if deletion.first_failure is not None:
        first, error = deletion.first_failure
        log.error("outputs_not_pruned", count=deletion.failed, outputs_dir=str(root), job_id=first.job_id,
                  user_id=first.user_id, error=str(error), fix=NOT_PRUNED_FIX)
    return deletion.deleted


def delete_job_folders(root: Path, jobs: Iterable[PurgedJob]) -> Deletion:
    """Delete <user_id>/<job_id>/ under root for each job, then <user_id>/ when left empty; a link or a file there is
    refused (logged output_folder_refused), never followed. Says nothing else: the caller logs the outcome."""
    jobs = list(jobs)
    deletion = Deletion()
    if not jobs:
        return deletion
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return Deletion(failed=len(jobs), first_failure=(jobs[0], exc))
    try:
        for job in jobs:
            try:
                deletion.deleted += _remove_job_folder(root_fd, job)
            except _Refused as refusal:
                log.warning("output_folder_refused", job_id=job.job_id, user_id=job.user_id, reason=str(refusal))
            except OSError as exc:
                deletion.failed += 1
                deletion.first_failure = deletion.first_failure or (job, exc)
    finally:
        os.close(root_fd)
    return deletion


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
    """Delete everything in the folder (its descriptor, closed here): a link as a file, never followed. A loop with
    one descriptor open per level, not recursion: a folder nested 1000 deep (a hostile worker's) raised
    RecursionError, which stopped the whole batch; one deeper than MAX_FOLDER_DEPTH is an OSError for its job alone."""
    levels = [(folder_fd, "")]  # the folders open, from folder_fd down to the one being emptied: (descriptor, name)
    names_left: list[Iterator[str]] = []  # in each of them, the names not yet looked at
    try:
        names_left.append(iter(os.listdir(folder_fd)))
        while levels:
            fd = levels[-1][0]
            name = next(names_left[-1], None)
            if name is None:  # it is empty: close it, then delete it from the folder above
                names_left.pop()
                _, emptied = levels.pop()
                os.close(fd)
                if levels:
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        os.rmdir(emptied, dir_fd=levels[-1][0])
                continue
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                if not stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=fd)
                elif len(levels) >= MAX_FOLDER_DEPTH:
                    raise OSError(errno.ELOOP, f"folders nested more than {MAX_FOLDER_DEPTH} deep", name)
                else:
                    levels.append((_open_folder(fd, name, name), name))
                    names_left.append(iter(os.listdir(levels[-1][0])))
    finally:
        for fd, _ in levels:
            os.close(fd)


def _is_one_folder_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def _kind(folder_fd: int, name: str) -> str:
    try:
        return f"symbolic link to {os.readlink(name, dir_fd=folder_fd)}"
    except OSError:
        return "file"  # or a FIFO, a socket, a device
