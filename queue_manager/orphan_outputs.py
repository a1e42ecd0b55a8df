"""The orphan sweep: result folders QUEUE_MANAGER_OUTPUTS_DIR/<user_id>/<job_id>/ whose job is gone from the database
but which the retention never deleted (a queue manager killed while it deleted a pass's folders, jobs purged by a
version before the outputs' retention, or while the volume was mounted read-only). Such a folder is deleted, as the
retention deletes one, once it has not been modified for FINISHED_JOB_RETENTION_S: nothing goes that the retention
would have kept, even against a fresh database. Only <user_id>/<job_id>/ names a job could have are looked at: a
dot-name (the workers' .partial/ staging), another tool's file, a link, anything else on the volume is left alone."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from common.timespans import DAY_S
from queue_manager.models import USER_ID_PATTERN, UUID_PATTERN
from queue_manager.outputs_retention import FOLDER_FLAGS, delete_job_folders
from queue_manager.store import JobStore, PurgedJob

log = structlog.get_logger()

# An orphan is at least a retention (7 days by default) old: a day's wait costs nothing, a walk of the whole volume
# every reaper pass would.
SWEEP_EVERY_S = DAY_S
# Ids looked up in one call on the database's thread: each a lookup in the jobs' unique index on id.
LOOKUP_BATCH = 500
NOT_SWEPT_FIX = ("mount the outputs volume read-write into the queue manager, as the user the workers write as "
                 "(uid 10001 in the image); the sweep tries again at the next start and every 24 h")


@dataclass
class OldFolders:
    """What the walk found: job folders not modified since the cutoff, and folders it could not read."""

    found: list[PurgedJob] = field(default_factory=list)
    unreadable: int = 0
    first_error: OSError | None = None


def old_job_folders(root: Path, modified_before: float) -> OldFolders:
    """Every <user_id>/<job_id>/ under root whose names are a user id and a job id and which is itself a folder (not
    a link: lstat) last modified before `modified_before`. Reads the disk: run it in a worker thread."""
    walk = OldFolders()
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return OldFolders(unreadable=1, first_error=exc)
    try:
        for user_id in os.listdir(root_fd):
            if USER_ID_PATTERN.fullmatch(user_id):
                _add_old_folders_of(root_fd, user_id, modified_before, walk)
    except OSError as exc:
        walk.unreadable += 1
        walk.first_error = walk.first_error or exc
    finally:
        os.close(root_fd)
    return walk


def _add_old_folders_of(root_fd: int, user_id: str, modified_before: float, walk: OldFolders) -> None:
    try:
        user_fd = os.open(user_id, FOLDER_FLAGS, dir_fd=root_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):  # a link or a file: not ours; gone meanwhile
            walk.unreadable += 1
            walk.first_error = walk.first_error or exc
        return
    try:
        for job_id in os.listdir(user_fd):
            if not UUID_PATTERN.fullmatch(job_id):  # as submit makes every job id
                continue
            with contextlib.suppress(FileNotFoundError):
                found = os.stat(job_id, dir_fd=user_fd, follow_symlinks=False)
                if stat.S_ISDIR(found.st_mode) and found.st_mtime < modified_before:
                    walk.found.append(PurgedJob(user_id, job_id))
    except OSError as exc:
        walk.unreadable += 1
        walk.first_error = walk.first_error or exc
    finally:
        os.close(user_fd)


class OrphanSweeper:
    """Deletes orphan job folders: shortly after start, then every SWEEP_EVERY_S. The walk and the deletions run in
    a worker thread, the lookups on the database's thread a batch at a time, so neither it nor the event loop is
    held for a whole volume."""

    def __init__(
        self,
        store: JobStore,
        outputs_dir: Path,
        *,
        retention_s: float,
        clock: Callable[[], float],
        run_in_db: Callable[[Callable[[], set[str]]], Awaitable[set[str]]],
    ) -> None:
        self._store = store
        self._outputs_dir = outputs_dir
        self._retention_s = retention_s
        self._clock = clock
        self._run_in_db = run_in_db

    async def sweep(self, stop: asyncio.Event | None = None) -> int:
        """One sweep; returns how many folders it deleted. Logs orphan_outputs_pruned when it deleted some, and one
        warning, orphan_outputs_not_pruned, when some could not be read or deleted. `stop` set: ends after the batch
        in hand."""
        started = time.perf_counter()
        walk = await asyncio.to_thread(old_job_folders, self._outputs_dir, self._clock() - self._retention_s)
        deleted, failed, first_error = 0, walk.unreadable, walk.first_error
        for start in range(0, len(walk.found), LOOKUP_BATCH):
            if stop is not None and stop.is_set():
                break
            batch = walk.found[start:start + LOOKUP_BATCH]
            kept = await self._run_in_db(lambda batch=batch: self._store.existing_job_ids([j.job_id for j in batch]))
            orphans = [job for job in batch if job.job_id not in kept]
            deletion = await asyncio.to_thread(delete_job_folders, self._outputs_dir, orphans)
            deleted += deletion.deleted
            failed += deletion.failed
            if deletion.first_failure is not None:
                first_error = first_error or deletion.first_failure[1]
        if deleted:
            log.info("orphan_outputs_pruned", count=deleted, outputs_dir=str(self._outputs_dir),
                     retention_s=self._retention_s, took_s=round(time.perf_counter() - started, 2))
        if first_error is not None:
            log.warning("orphan_outputs_not_pruned", failed=failed, outputs_dir=str(self._outputs_dir),
                        error=str(first_error), fix=NOT_SWEPT_FIX)
        return deleted

    async def run(self, stop: asyncio.Event, *, first_after_s: float, every_s: float = SWEEP_EVERY_S) -> None:
        """Sweep `first_after_s` after start, then every `every_s`, until `stop` is set. A failed sweep is logged
        and tried again at the next."""
        wait_s = first_after_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait_s)
            if stop.is_set():
                return
            try:
                await self.sweep(stop)
            except sqlite3.Error as exc:  # the ids could not be looked up: the cause is named, a traceback adds nothing
                log.error("orphan_outputs_sweep_failed", error=str(exc), code=exc.sqlite_errorname)
            except Exception:
                log.exception("orphan_outputs_sweep_failed")
            wait_s = every_s
