"""Jobs in SQLite: submit, atomic pop, report, cancel, reap. Synchronous; safe to share between threads.

Every write runs in a `BEGIN IMMEDIATE` transaction, so several queue processes may share one database file
and a job is still handed out once. WAL mode lets readers proceed while a writer holds the lock.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.handbacks import HandBackCause, gives_up
from queue_manager.models import MAX_ERROR_CHARS, MAX_RESULT_BYTES, JobPriority, JobStatus, QueueMode, answer_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    workflow TEXT NOT NULL,
    metadata TEXT NOT NULL,
    result TEXT,
    error TEXT,
    worker_id TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    attempt INTEGER NOT NULL DEFAULT 1,
    history TEXT NOT NULL DEFAULT '[]',
    lease_at REAL,
    poll_id TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, priority, seq);
CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs (user_id, seq);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (status, completed_at);
CREATE INDEX IF NOT EXISTS jobs_by_user_start ON jobs (user_id, started_at);
CREATE INDEX IF NOT EXISTS jobs_by_status_user ON jobs (status, user_id);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    last_seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS workers_by_last_seen ON workers (last_seen);
CREATE TABLE IF NOT EXISTS queue_alive (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS storage_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    room BLOB NOT NULL
);
"""

# Columns added after the first release: a database written by an older version gains them on open.
_ADDED_COLUMNS = {
    "attempt": "INTEGER NOT NULL DEFAULT 1",
    "history": "TEXT NOT NULL DEFAULT '[]'",
    "lease_at": "REAL",
    "poll_id": "TEXT",
    "finish_seq": "INTEGER",
    # The bytes of the result's text when it is stored as an answer writes it (see complete); NULL when an older
    # version wrote it (json.dumps' default spacing and escapes), or a later write by one left it stale.
    "result_bytes": "INTEGER",
}
# Made after the columns are there (a database from before poll ids gains the column first). At most one job per
# poll id: the one that poll was last answered with, while it runs.
_POLL_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_poll ON jobs (poll_id) WHERE poll_id IS NOT NULL"
# Finished jobs are listed newest first by the order they finished in: a number from one counter, taken by the
# write that finishes a job (completed_at would not do: a clock stepped back, two jobs in the same instant).
# Our own writes set the number in the UPDATE that finishes the job. The triggers number the jobs someone else
# finishes without one: an older version sharing the file during a rolling restart, a row inserted by hand. They
# fire only when the writing statement left finish_seq alone; numbering every finish by trigger instead rewrote
# the job's row a second time (8.7-10 ms against 3.7-4.7 ms a finish with a 1 MB result: bench/finish_order.py).
_FINISH_ORDER = (
    "CREATE INDEX IF NOT EXISTS jobs_by_finish_seq ON jobs (status, finish_seq)",
    "CREATE TABLE IF NOT EXISTS finish_counter (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS jobs_numbered_when_finished AFTER UPDATE OF status ON jobs
    WHEN NEW.status IN ('completed', 'failed', 'cancelled') AND NEW.finish_seq IS OLD.finish_seq
        AND (NEW.status IS NOT OLD.status OR NEW.finish_seq IS NULL)
    BEGIN
        UPDATE finish_counter SET last = last + 1;
        UPDATE jobs SET finish_seq = (SELECT last FROM finish_counter) WHERE seq = NEW.seq;
    END""",
    """CREATE TRIGGER IF NOT EXISTS jobs_numbered_when_inserted_finished AFTER INSERT ON jobs
    WHEN NEW.status IN ('completed', 'failed', 'cancelled') AND NEW.finish_seq IS NULL
    BEGIN
        UPDATE finish_counter SET last = last + 1;
        UPDATE jobs SET finish_seq = (SELECT last FROM finish_counter) WHERE seq = NEW.seq;
    END""",
)
# Jobs finished without a number (every one in a database from before finish numbers) are numbered on open in the
# order they finished, after every number already taken. Only then does opening the file write to it.
_TO_NUMBER = """
SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM finish_counter)
    OR EXISTS (SELECT 1 FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') AND finish_seq IS NULL)
"""
_START_COUNTER = "INSERT OR IGNORE INTO finish_counter (id, last) VALUES (1, 0)"
_NUMBER_UNNUMBERED = """
UPDATE jobs SET finish_seq = numbered.n + (SELECT last FROM finish_counter)
FROM (SELECT seq, ROW_NUMBER() OVER (ORDER BY completed_at, seq) AS n FROM jobs
      WHERE status IN ('completed', 'failed', 'cancelled') AND finish_seq IS NULL) AS numbered
WHERE jobs.seq = numbered.seq
"""
_COUNT_NUMBERED = "UPDATE finish_counter SET last = MAX(last, (SELECT COALESCE(MAX(finish_seq), 0) FROM jobs))"
# The next number, taken in the transaction of the write that finishes a job.
_NEXT_FINISH_SEQ = "UPDATE finish_counter SET last = last + 1 RETURNING last"

_BUSY_TIMEOUT_S = 10.0
_PLAIN_COLUMNS = (
    "seq, id, user_id, status, priority, error, worker_id, created_at, started_at, completed_at, attempt, lease_at,"
    " finish_seq"
)
# The JSON a read leaves out is empty and never decoded (a workflow or metadata is up to 11 MB, a result 50 MB):
# a list shows no workflow or metadata, ...
_COLUMNS_BUT_WORKFLOW = f"{_PLAIN_COLUMNS}, '{{}}' AS workflow, '{{}}' AS metadata, result, history"
# ... one job's view no workflow, and its result as the stored JSON text, never decoded (a 48 MB result took
# ~0.5 s of the database thread to decode, only for the answer to encode it again), ...
_SHOWN_AS_TEXT_COLUMNS = (
    f"{_PLAIN_COLUMNS}, '{{}}' AS workflow, metadata, NULL AS result, CAST(result AS BLOB) AS result_json,"
    " result_bytes, history"
)
# ... the bytes of stored JSON such a view holds, read from the row's header for a result this version stored, ...
_SHOWN_BYTES = (
    "SELECT COALESCE(result_bytes, length(result), 0) + length(metadata) + length(history) FROM jobs WHERE id = ?"
)
_LISTED_BYTES = "COALESCE(result_bytes, length(result), 0) + length(history)"  # a list shows no metadata
# ... and a heartbeat's, a report's or a cancel's check needs only who holds the job and its status.
_HOLDER_COLUMNS = f"{_PLAIN_COLUMNS}, '{{}}' AS workflow, '{{}}' AS metadata, NULL AS result, '[]' AS history"
# A list holds at most this much stored JSON (results, histories; workflows when asked for): 50 completed jobs of
# up to 50 MB results each made one GET /api/jobs hold 1.5 GB (8 of them: 1567 MB peak RSS, a 384 MB answer).
LIST_BUDGET_BYTES = 16 * 1024 * 1024
# A retention pass deletes at most PURGE_BATCH finished jobs, one transaction each, and stops once it has spent
# PURGE_BUDGET_S: freeing a job costs ~6 ms per MB of it (SQLite zeroes freed pages), so neither the write lock
# nor the queue's database thread is held long, even on a first pass over a large old database.
PURGE_BATCH = 1000
PURGE_BUDGET_S = 0.25
_EXISTING_IDS = "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?))"  # the unique index on id, covering
_DELETE_ONE_EXPIRED = (
    "DELETE FROM jobs WHERE seq IN ("
    " SELECT seq FROM jobs WHERE status IN (?, ?) AND completed_at < ?"  # jobs_by_finish
    " UNION ALL"
    " SELECT seq FROM jobs WHERE status = ? AND COALESCE(completed_at, lease_at, started_at) < ?"
    " LIMIT 1)"
    " RETURNING user_id, id"
)
# The queue was down since the later of its own last lease pass (or start) and the last worker it heard from. A lease
# whose worker was never recorded (an older version's) is renewed in full, as is one stored in the future (the clock
# stepped back while the queue was down).
_RENEW_FOR_DOWNTIME = """
UPDATE jobs SET lease_at = MIN(?1, COALESCE(lease_at, started_at, ?1)
    + MAX(0, ?1 - COALESCE((SELECT MAX(at) FROM (SELECT MAX(last_seen) AS at FROM workers
                                                UNION ALL SELECT at FROM queue_alive)), lease_at, started_at, ?1)))
WHERE status = ?2
"""
_STAMP_ALIVE = "INSERT INTO queue_alive (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at"
# How much a probe of the storage writes (see probe_storage): a write of a few bytes still fits in a database too
# full for a job's. After a fault of a bigger write (a job, a result), as much as it stored, up to the largest result.
STORAGE_PROBE_BYTES = 64 * 1024
STORAGE_PROBE_MAX_BYTES = MAX_RESULT_BYTES

# result.outputs[].path of one job: only from an array, only objects' text paths; the result parsed once (48 MB:
# ~0.1 s). As bytes: a lone surrogate's escape decodes to bytes that are not UTF-8, which no request can name (and
# sqlite3 would raise on as text).
_LISTED_OUTPUT_PATHS = (
    "SELECT CAST(json_extract(item.value, '$.path') AS BLOB) FROM jobs, json_each(jobs.result, '$.outputs') AS item"
    " WHERE jobs.id = ? AND typeof(item.key) = 'integer'"  # an array's items (an object's members have text keys)
    " AND item.type = 'object' AND json_type(item.value, '$.path') = 'text'"
)


class QueueFullError(Exception):
    def __init__(self, max_depth: int) -> None:
        super().__init__(f"Queue is full (max depth: {max_depth})")
        self.max_depth = max_depth


class UserLimitError(Exception):
    def __init__(self, user_id: str, pending: int, limit: int) -> None:
        super().__init__(f"User {user_id} has {pending} jobs pending (max per user: {limit})")
        self.user_id = user_id
        self.pending = pending
        self.limit = limit


class FencedOut(Exception):
    """A worker spoke for a job that is no longer running under it and that attempt."""


class PollIdTaken(Exception):
    """A poll id that answered another worker's poll, and that worker still runs the job: not this worker's."""


@dataclass(frozen=True)
class Poll:
    """What a poll was answered with: ``again`` when it is the answer an earlier try of the same poll got."""

    job: JobRecord | None
    again: bool = False
    # Without ``whole``: the job's workflow and metadata are left out, and this is how many bytes of JSON they hold.
    stored_bytes: int = 0


@dataclass(frozen=True)
class OutputListing:
    """What the outputs route needs of a job (JobStore.output_listing)."""

    user_id: str
    status: JobStatus
    paths: frozenset[str]  # result.outputs[].path, the text ones of the objects listed


@dataclass(frozen=True)
class PurgedJob:
    """A job the retention deleted: whose it was, to find its result folder <user_id>/<job_id>/."""

    user_id: str
    job_id: str


@dataclass(frozen=True)
class Fence:
    """Who a worker believes holds a job. A field left None is not checked (comfy-multi's clients send none)."""

    worker_id: str | None = None
    attempt: int | None = None

    def check(self, job: JobRecord) -> None:
        if self.worker_id is None and self.attempt is None:
            return
        holder = f"worker {job.worker_id} attempt {job.attempt}" if job.status is JobStatus.RUNNING else "nobody"
        if (
            job.status is not JobStatus.RUNNING
            or (self.worker_id is not None and job.worker_id != self.worker_id)
            or (self.attempt is not None and job.attempt != self.attempt)
        ):
            raise FencedOut(
                f"Job {job.id} is {job.status.value}, held by {holder}; "
                f"not by worker {self.worker_id} attempt {self.attempt}"
            )


@dataclass(frozen=True)
class JobRecord:
    id: str
    user_id: str
    status: JobStatus
    priority: int
    workflow: dict[str, Any]
    metadata: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    worker_id: str | None
    created_at: float
    started_at: float | None
    completed_at: float | None
    attempt: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    # Only from `shown`: the result as the UTF-8 JSON text an answer writes (result is None then).
    result_json: bytes | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        raw = row["result_json"] if "result_json" in row.keys() else None  # noqa: SIM118 (sqlite3.Row)
        if raw is not None and len(raw) != row["result_bytes"]:  # stored by an older version: decoded, as it was
            raw = answer_json(json.loads(raw)).encode()
        return cls(
            id=row["id"],
            user_id=row["user_id"],
            status=JobStatus(row["status"]),
            priority=row["priority"],
            workflow=json.loads(row["workflow"]),
            metadata=json.loads(row["metadata"]),
            result=None if row["result"] is None else json.loads(row["result"]),
            error=row["error"],
            worker_id=row["worker_id"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            attempt=row["attempt"],
            history=json.loads(row["history"]),
            result_json=raw,
        )


# SQLite's answers that say the database file cannot be written or read as it should (a full disk, an I/O error,
# a read-only or vanished file, a lock another process holds too long, corruption): the storage's fault, not the
# request's. https://www.sqlite.org/rescode.html
STORAGE_FAULTS = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_BUSY",
                  "SQLITE_LOCKED", "SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_PROTOCOL")


def is_storage_fault(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", None) or ""  # extended codes too: SQLITE_IOERR_WRITE is an IOERR
    return any(name == fault or name.startswith(f"{fault}_") for fault in STORAGE_FAULTS)


class JobStore:
    """The queue's state. `db_path=None` keeps it in a private temporary file removed on `close()`.

    ``storage_fault`` says why the last write failed when the database could not take it (a full disk, say),
    and is None again once a write taking ``probe_bytes`` of new room, or probe_storage, succeeds: STORAGE_PROBE_BYTES,
    or as much as the writes that failed meanwhile stored (bounded by STORAGE_PROBE_MAX_BYTES).
    ``numbered_on_open``: the finished jobs opening the file numbered (all of them in a database from before finish
    numbers, none later)."""

    storage_fault: str | None = None
    probe_bytes: int = STORAGE_PROBE_BYTES
    numbered_on_open: int = 0

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        round_robin_window_s: float = 0,
    ) -> None:
        self._clock = clock
        # The latest wall-clock time read, and the jobs started at an earlier one: on the clock stepped back, their
        # start already counts on the new clock (see renew_all_leases).
        self._latest_read = -math.inf
        self._started_after_a_step_back: set[tuple[str, int]] = set()
        self.round_robin_window_s = round_robin_window_s
        self._temp_dir = None if db_path is not None else tempfile.mkdtemp(prefix="queue-manager-")
        self.path = Path(db_path) if db_path is not None else Path(self._temp_dir) / "queue.db"
        # One connection guarded by a lock: the server's DB thread and a test calling in directly never
        # interleave statements of two transactions on it.
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit reaches the disk before its answer, so a submission answered 201, or a report
        # answered 200, survives a power loss or a host crash too (NORMAL loses the last commits then). It costs
        # an fsync per commit: 0.8 ms against 0.25 ms per submission on this VM, next to ~10 ms over HTTP.
        self._conn.execute("PRAGMA synchronous=FULL")
        # One transaction: a second process opening the same file waits for it, then finds nothing to do; an
        # older version sharing the file never sees the column without the triggers or a finished job unnumbered.
        with self._transaction() as conn:
            self.numbered_on_open = _create_or_upgrade(conn)

    def _now(self) -> float:
        now = self._clock()
        self._latest_read = max(self._latest_read, now)
        return now

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    @contextmanager
    def _transaction(self, *, write: bool = True, stores: int = 0) -> Iterator[sqlite3.Connection]:
        """`stores`: about how many bytes the write stores, when that is a lot (a job, a result)."""
        with self._lock:
            proving = write and self.storage_fault is not None
            grew = 0
            try:
                self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                pages_before = self._pages() if proving else 0
                yield self._conn
                grew = self._pages() - pages_before if proving else 0
                self._conn.execute("COMMIT")
            except BaseException as exc:
                # A COMMIT that failed (SQLITE_FULL, say) may leave the transaction open, and every later BEGIN
                # would then fail: roll back whatever is still open.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if write and isinstance(exc, sqlite3.Error) and is_storage_fault(exc):
                    self.storage_fault = f"{exc} ({exc.sqlite_errorname})"
                    self.probe_bytes = max(self.probe_bytes, min(stores, STORAGE_PROBE_MAX_BYTES))
                raise
            # A write of a few bytes (a lease pass, a poll) fits in a database too full for a job's: only one that
            # stored, or took as much new room, as the probe proves the fault gone.
            if proving and max(stores, grew * self._conn.execute("PRAGMA page_size").fetchone()[0]) >= self.probe_bytes:
                self._storage_proven()

    def _storage_proven(self) -> None:
        self.storage_fault = None
        self.probe_bytes = STORAGE_PROBE_BYTES

    def _pages(self) -> int:
        return self._conn.execute("PRAGMA page_count").fetchone()[0]

    # -- user side -------------------------------------------------------------------------------------

    def submit(
        self,
        user_id: str,
        workflow: dict[str, Any],
        *,
        priority: int = JobPriority.NORMAL,
        metadata: dict[str, Any] | None = None,
        max_depth: int | None = None,
        max_pending_per_user: int | None = None,
    ) -> JobRecord:
        """Queue a job. No validation here on purpose: tests may plant hostile values the HTTP layer refuses.

        Raises QueueFullError when `max_depth` (> 0) jobs are already pending, UserLimitError when
        `max_pending_per_user` (> 0) of this user's are. Counted in the insert's transaction: never passed.
        """
        job_id = str(uuid.uuid4())
        workflow_json, metadata_json = json.dumps(workflow), json.dumps(metadata or {})
        with self._transaction(stores=len(workflow_json) + len(metadata_json)) as conn:
            if max_depth and _count(conn, JobStatus.PENDING) >= max_depth:
                raise QueueFullError(max_depth)
            if max_pending_per_user and (mine := _pending_of(conn, user_id)) >= max_pending_per_user:
                raise UserLimitError(user_id, mine, max_pending_per_user)
            conn.execute(
                "INSERT INTO jobs (id, user_id, status, priority, workflow, metadata, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    user_id,
                    JobStatus.PENDING.value,
                    int(priority),
                    workflow_json,
                    metadata_json,
                    self._now(),
                ),
            )
            return _get(conn, job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> JobRecord | None:
        with self._transaction(write=False) as conn:
            return _get(conn, job_id)

    def shown_bytes(self, job_id: str) -> int | None:
        """How many bytes of stored JSON `shown` would read (result, metadata, history), read without them; None:
        no such job. What an answer reserves before it is built."""
        with self._transaction(write=False) as conn:
            row = conn.execute(_SHOWN_BYTES, (job_id,)).fetchone()
        return None if row is None else row[0]

    def shown(self, job_id: str) -> JobRecord | None:
        """The job as GET /api/jobs/{id} shows it: no workflow (200 reads of a job with a 9 MB one took the server
        from 344 MB to 2.8 GB decoding it to throw it away), and its result in ``result_json`` as the text an answer
        writes, not decoded (``result`` is None)."""
        with self._transaction(write=False) as conn:
            return _get(conn, job_id, _SHOWN_AS_TEXT_COLUMNS)

    def output_listing(self, job_id: str) -> OutputListing | None:
        """Whose the job is, its status and the paths its result lists in `outputs[].path`: what serving one of its
        files needs. SQLite picks the paths out of the stored result, so a download does not load a large
        workflow or result into Python (a whole row of 9 + 48 MB took ~285 ms of the database thread each)."""
        with self._transaction(write=False) as conn:
            row = conn.execute("SELECT user_id, status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            try:
                paths = conn.execute(_LISTED_OUTPUT_PATHS, (job_id,)).fetchall()
            except sqlite3.OperationalError as exc:
                if "malformed JSON" not in str(exc):
                    raise
                paths = []  # a result no version of ours wrote: it lists nothing
        return OutputListing(row["user_id"], JobStatus(row["status"]), frozenset(_texts(path for (path,) in paths)))

    def list(
        self,
        *,
        user_id: str | None = None,
        status: JobStatus | None = None,
        limit: int = 100,
        newest_first: bool = False,
        with_workflow: bool = True,
    ) -> list[JobRecord]:
        """The first page of `page` with these arguments: its jobs."""
        return self.page(
            user_id=user_id, status=status, limit=limit, newest_first=newest_first, with_workflow=with_workflow
        ).jobs

    def every(self, **filters: Any) -> Iterator[JobRecord]:
        """Every job `page` with these filters lists, page after page (one page of jobs in memory at a time):
        what a caller wanting them all uses, since a single page stops at LIST_BUDGET_BYTES."""
        after = None
        while True:
            page = self.page(**filters, after=after)
            yield from page.jobs
            if page.next is None:
                return
            after = page.next

    def page(
        self,
        *,
        user_id: str | None = None,
        status: JobStatus | None = None,
        limit: int = 100,
        newest_first: bool = False,
        with_workflow: bool = True,
        after: ListCursor | None = None,
    ) -> JobPage:
        """Jobs in submission order, filtered; ``newest_first``: latest first, finished ones by completion time.
        ``after``: only the jobs past that cursor in this order (raises ValueError when the cursor is of another
        order). The page stops before the jobs it holds pass ``LIST_BUDGET_BYTES`` (it holds one job at least).

        A job submitted while a client pages comes after every job it has listed (newest first: before), so pages
        taken one after another never repeat or skip a job that still matches.

        ``with_workflow=False`` leaves each job's workflow and metadata empty, unread: what GET /api/jobs shows
        (up to 1000 jobs of up to 11 MB each would otherwise be decoded to be thrown away).
        """
        order, filters, params = _listing(user_id, status, newest_first, after)
        where, where_params = _where(filters, params, after)
        rows, size, cut = [], 0, False
        with self._transaction(write=False) as conn:
            for row in conn.execute(
                f"SELECT {'*' if with_workflow else _COLUMNS_BUT_WORKFLOW} FROM jobs {where}"  # noqa: S608
                f" ORDER BY {_ORDER_BY[order]} LIMIT ?",
                (*where_params, max(limit, 0)),
            ):
                size += sum(len(row[column] or "") for column in ("workflow", "metadata", "result", "history"))
                if rows and size > LIST_BUDGET_BYTES:
                    cut = True
                    break
                rows.append(row)
            next_cursor = None
            if rows and (cut or len(rows) == limit):  # more may follow: say where, if any does
                last = ListCursor(order, rows[-1]["seq"], rows[-1]["finish_seq"])
                where, where_params = _where(filters, params, last)
                if conn.execute(f"SELECT 1 FROM jobs {where} LIMIT 1", where_params).fetchone():  # noqa: S608
                    next_cursor = last
        return JobPage([JobRecord.from_row(row) for row in rows], next_cursor, cut)

    def page_bytes(
        self,
        *,
        user_id: str | None = None,
        status: JobStatus | None = None,
        limit: int = 100,
        newest_first: bool = False,
        after: ListCursor | None = None,
    ) -> int:
        """About how many bytes of stored JSON `page(with_workflow=False)` would read now (results and histories),
        read without them: what a listing reserves before it is built."""
        order, filters, params = _listing(user_id, status, newest_first, after)
        where, where_params = _where(filters, params, after)
        total = 0
        with self._transaction(write=False) as conn:
            for (size,) in conn.execute(
                f"SELECT {_LISTED_BYTES} FROM jobs {where} ORDER BY {_ORDER_BY[order]} LIMIT ?",  # noqa: S608
                (*where_params, max(limit, 0)),
            ):
                if total and total + size > LIST_BUDGET_BYTES:
                    break
                total += size
        return total

    def cancel(self, job_id: str, *, user_id: str | None = None) -> JobStatus | None:
        """Cancel as the peer does: a pending job is deleted outright, a running one is marked `cancelled`
        (its worker is not told; a later report still lands). Returns the status the job had, or None (also for
        a job that is not `user_id`'s, when given)."""
        with self._transaction() as conn:
            job = _get(conn, job_id, _HOLDER_COLUMNS)
            if job is None or (user_id is not None and job.user_id != user_id):
                return None
            if job.status is JobStatus.PENDING:
                conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            elif job.status is JobStatus.RUNNING:
                conn.execute(
                    "UPDATE jobs SET status = ?, poll_id = NULL, finish_seq = ? WHERE id = ?",
                    (JobStatus.CANCELLED.value, _next_finish_seq(conn), job_id),
                )
            return job.status

    def pending_positions(self, mode: QueueMode) -> dict[str, int]:
        """0-based place of each pending job in the order `pop_next` would hand them out: every pending job
        ranked, the round-robin replay in full. What `positions_of` must agree with (tests, bench)."""
        with self._transaction(write=False) as conn:
            order = _pending_in_pop_order(conn, mode, served_since=self._served_since())
            return {job_id: index for index, job_id in enumerate(order)}

    def positions_of(self, mode: QueueMode, job_ids: Collection[str]) -> dict[str, int]:
        """The `pending_positions` of these jobs, those of them still pending, from indexes alone: a few are counted
        one by one, more are ranked with the others' index entries; no other job's row is read."""
        if not job_ids:
            return {}
        with self._transaction(write=False) as conn:
            shown = [
                job for job in conn.execute(SHOWN_JOBS, (json.dumps(list(job_ids)),)) if job["status"] == PENDING
            ]
            if not shown:
                return {}
            served = _served_per_user(conn, self._served_since()) if mode is QueueMode.ROUND_ROBIN else {}
            if len(shown) > COUNTED_ONE_BY_ONE:
                place_of = _pending_places(conn, mode, served)
                return {job["id"]: place_of[job["seq"]] for job in shown}
            return {job["id"]: _pending_place(conn, mode, served, job) for job in shown}

    def _served_since(self) -> float | None:
        """Round robin counts the jobs each user was handed since then; None: every job kept."""
        return self._now() - self.round_robin_window_s if self.round_robin_window_s > 0 else None

    # -- worker side -----------------------------------------------------------------------------------

    def pop_next(self, worker_id: str, mode: QueueMode, *, poll_id: str | None = None) -> JobRecord | None:
        """The job `poll` hands out, or None."""
        return self.poll(worker_id, mode, poll_id=poll_id).job

    def poll(self, worker_id: str, mode: QueueMode, *, poll_id: str | None = None, whole: bool = True) -> Poll:
        """Record the worker's heartbeat and hand it the next pending job, marked running, in one transaction.

        With a ``poll_id`` the poll is idempotent: a retry of a poll whose answer was lost on the way (a proxy's
        502, a reset, this process killed after the commit) gets the job that poll was answered with, same
        attempt, lease renewed, while it still runs under this worker; otherwise it pops as a new poll. The id
        is kept on the job row (one per running job, cleared when the job stops running), so it survives a
        restart; it is unique per poll, so replicas sharing a worker id never get each other's job. Raises
        PollIdTaken when the id names a job running under another worker.

        A new poll renews no job's lease: only a heartbeat naming the job does (or a retry of the very poll that
        handed it out, above: a successor process polls under poll ids of its own). A worker id outlives the
        process that polls with it (a fixed WORKER_ID, restarted in place; several replicas given the same one),
        and the polls of the living would keep a dead process's job `running` until the reaper fails it. A stored job
        that cannot be served as strict JSON (planted directly, or written by an older version) is failed
        instead of handed out. Without ``whole`` the job's workflow and metadata are not read (see Poll).
        """
        latest = self._latest_read
        now = self._now()
        stepped_back = now < latest
        with self._transaction() as conn:
            _seen(conn, worker_id, now)
            if poll_id is not None and (answered := _answered(conn, poll_id, worker_id)) is not None:
                conn.execute("UPDATE jobs SET lease_at = ? WHERE id = ?", (now, answered))
                return _polled(conn, answered, whole, again=True)
            while order := _pending_in_pop_order(conn, mode, first_only=True, served_since=self._served_since()):
                job_id = order[0]
                conn.execute(
                    "UPDATE jobs SET status = ?, worker_id = ?, started_at = ?, lease_at = ?, poll_id = ?"
                    " WHERE id = ?",
                    (JobStatus.RUNNING.value, worker_id, now, now, poll_id, job_id),
                )
                problem = _unservable(conn, job_id)
                if problem is None:
                    poll = _polled(conn, job_id, whole)
                    if stepped_back:
                        self._mark_started_after_a_step_back(conn, poll.job)  # type: ignore[arg-type]
                    return poll
                _fail(conn, job_id, f"Job cannot be served as JSON: {problem}", now)
            return Poll(None)

    def _mark_started_after_a_step_back(self, conn: sqlite3.Connection, job: JobRecord) -> None:
        """Only running jobs' marks count (see renew_all_leases): the others' go, or a step back too small for the
        reaper to apply, which never clears them, left one per job started in it for the process's life."""
        running = conn.execute("SELECT id, attempt FROM jobs WHERE status = ?", (JobStatus.RUNNING.value,))
        self._started_after_a_step_back.add((job.id, job.attempt))
        self._started_after_a_step_back.intersection_update((row["id"], row["attempt"]) for row in running)

    def heartbeat(self, worker_id: str, job_id: str, attempt: int | None) -> None:
        """Renew the lease of a job the worker holds. Raises FencedOut when it no longer holds it."""
        now = self._now()
        with self._transaction() as conn:
            _seen(conn, worker_id, now)
            job = _get(conn, job_id, _HOLDER_COLUMNS)
            if job is None:
                raise FencedOut(f"Job {job_id} does not exist")
            Fence(worker_id, attempt).check(job)
            conn.execute("UPDATE jobs SET lease_at = ? WHERE id = ?", (now, job_id))

    def complete(self, job_id: str, result: dict[str, Any], fence: Fence = Fence()) -> JobStatus | None:
        """Mark the job completed. Unfenced, whatever its state, as the peer does. Returns its previous
        status or None; raises FencedOut when the fence does not match."""
        # Stored as an answer writes it (compact, UTF-8), with its length: a view sends it as it is, undecoded.
        text: str = answer_json(result)
        try:
            size: int | None = len(text.encode())
        except UnicodeEncodeError:  # a lone surrogate (a request carrying one is refused): escaped, decoded when shown
            text, size = json.dumps(result), None
        return self._finish(job_id, JobStatus.COMPLETED, result=text, error=None, fence=fence, result_bytes=size)

    def fail(self, job_id: str, error: str, fence: Fence = Fence()) -> JobStatus | None:
        """Mark the job failed. Unfenced, whatever its state, as the peer does. Returns its previous status or
        None; raises FencedOut when the fence does not match."""
        return self._finish(job_id, JobStatus.FAILED, result=None, error=error, fence=fence)

    def _finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: str | None,
        error: str | None,
        fence: Fence,
        result_bytes: int | None = None,
    ) -> JobStatus | None:
        with self._transaction(stores=len(result or "")) as conn:
            job = _get(conn, job_id, _HOLDER_COLUMNS)
            if job is None:
                return None
            fence.check(job)
            conn.execute(
                "UPDATE jobs SET status = ?, result = ?, result_bytes = ?, error = ?, completed_at = ?,"
                " lease_at = NULL, poll_id = NULL, finish_seq = ? WHERE id = ?",
                (status.value, result, result_bytes, error, self._now(), _finish_seq_as(conn, job_id, status),
                 job_id),
            )
            return job.status

    def release(
        self,
        job_id: str,
        fence: Fence,
        reason: str,
        *,
        max_attempts: int,
        cause: HandBackCause = HandBackCause.FAULT,
    ) -> JobRecord | None:
        """Hand a running job back: pending again at its original place in line, attempt + 1, the reason and
        cause in its history; failed with every reason at its `max_attempts`-th fault or its
        MAX_SHUTDOWN_HANDBACKS-th shutdown. None if unknown."""
        with self._transaction() as conn:
            job = _get(conn, job_id)
            if job is None:
                return None
            fence.check(job)
            _hand_back(conn, job, reason, cause, now=self._now(), max_attempts=max_attempts)
            return _get(conn, job_id)

    def release_expired_leases(self, cutoff: float, *, max_attempts: int) -> list[JobRecord]:
        """The lease step: hand back every running job whose lease was last renewed before `cutoff`. A fault:
        a worker that stopped heartbeating (SIGKILL, OOM) cannot be told apart from one its job killed. Stamps the
        queue alive (see renew_leases_for_downtime)."""
        now = self._now()
        with self._transaction() as conn:
            conn.execute(_STAMP_ALIVE, (now,))
            rows = conn.execute(
                "SELECT id FROM jobs WHERE status = ? AND COALESCE(lease_at, started_at) < ? ORDER BY seq",
                (JobStatus.RUNNING.value, cutoff),
            ).fetchall()
            released = []
            for row in rows:
                job = _get(conn, row["id"])
                reason = f"worker {job.worker_id} stopped heartbeating"
                _hand_back(conn, job, reason, HandBackCause.FAULT, now=now, max_attempts=max_attempts)
                released.append(_get(conn, row["id"]))
            return released

    def renew_all_leases(self, *, clock_step_s: float = 0) -> int:
        """Renew every running job's lease now: time the queue itself was down is not a worker's silence. A step
        of the wall clock moves the running jobs' start with it: no job ran for it. Not a job started after the
        step, before this pass, already on the new clock: forward, one the step would move past now; back, one
        started at a time earlier than one read before. A step forward moves the finished jobs' times and the
        workers' last sightings too, but never past now: they did not age by it (the retention deleted them
        early). A step back leaves
        them, kept longer: one finished after the step, before a pass saw it, would move back and be deleted
        early."""
        now = self._now()
        started_after = self._started_after_a_step_back if clock_step_s < 0 else set()
        with self._transaction() as conn:
            started = conn.execute(
                "SELECT id, attempt, started_at FROM jobs WHERE status = ? AND started_at IS NOT NULL",
                (JobStatus.RUNNING.value,),
            ).fetchall()
            for job in started:
                moved = job["started_at"] + clock_step_s
                if moved <= now and (job["id"], job["attempt"]) not in started_after:
                    conn.execute("UPDATE jobs SET started_at = ? WHERE id = ?", (moved, job["id"]))
            renewed = conn.execute(
                "UPDATE jobs SET lease_at = ? WHERE status = ?", (now, JobStatus.RUNNING.value)
            ).rowcount
            if clock_step_s > 0:
                conn.execute(
                    "UPDATE jobs SET completed_at = completed_at + ?1, started_at = started_at + ?1,"
                    " lease_at = lease_at + ?1 WHERE status IN ('completed', 'failed', 'cancelled')"
                    " AND COALESCE(completed_at, lease_at, started_at) + ?1 <= ?2",
                    (clock_step_s, now),
                )
                conn.execute("UPDATE workers SET last_seen = last_seen + ?1 WHERE last_seen + ?1 <= ?2",
                             (clock_step_s, now))
        if clock_step_s:
            self._latest_read = now
            self._started_after_a_step_back.clear()
        return renewed

    def renew_leases_for_downtime(self) -> int:
        """On start: add to every running job's lease the time since a worker was last heard from (so at least the
        time the queue was down), never past now. Renewing them in full kept a dead worker's job running for ever
        under a queue restarting more often than the lease. Each lease pass stamps the queue alive: a restart that
        no worker reached in between would otherwise count every earlier outage again and renew the leases in full."""
        now = self._now()
        with self._transaction() as conn:
            renewed = conn.execute(_RENEW_FOR_DOWNTIME, (now, JobStatus.RUNNING.value)).rowcount
            conn.execute(_STAMP_ALIVE, (now,))
            return renewed

    def fail_running_started_before(self, cutoff: float, error: str) -> list[str]:
        """The reaper's step: fail every job still running that started before `cutoff`."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE status = ? AND started_at < ? ORDER BY started_at",
                (JobStatus.RUNNING.value, cutoff),
            ).fetchall()
            stale = [row["id"] for row in rows]
            now = self._now()
            for job_id in stale:
                _fail(conn, job_id, error, now)
            return stale

    def purge_finished_before(
        self, cutoff: float, *, limit: int = PURGE_BATCH, budget_s: float = PURGE_BUDGET_S
    ) -> list[PurgedJob]:
        """The retention step: delete finished jobs (completed, failed, cancelled) that finished before `cutoff`,
        one transaction each, at most `limit`, stopping after the one that used up `budget_s`. Returns those
        deleted; what is left goes on the next call.

        A cancelled job has no `completed_at` (as in comfy-multi): it counts from its last heartbeat, which is
        its start when its worker never sent one.
        """
        return list(self.purging_finished_before(cutoff, limit=limit, budget_s=budget_s))

    def purging_finished_before(
        self, cutoff: float, *, limit: int = PURGE_BATCH, budget_s: float = PURGE_BUDGET_S
    ) -> Iterator[PurgedJob]:
        """purge_finished_before, each job yielded once its deletion is committed: when a later one fails (a full
        disk), the caller still has those already gone."""
        expired = (
            JobStatus.COMPLETED.value,
            JobStatus.FAILED.value,
            cutoff,
            JobStatus.CANCELLED.value,
            cutoff,
        )
        started = time.perf_counter()
        for _ in range(limit):
            with self._transaction() as conn:
                deleted = conn.execute(_DELETE_ONE_EXPIRED, expired).fetchall()
            if not deleted:
                return
            yield from (PurgedJob(row["user_id"], row["id"]) for row in deleted)
            if time.perf_counter() - started >= budget_s:
                return

    def existing_job_ids(self, job_ids: Collection[str]) -> set[str]:
        """Which of these ids a job still has (the ids alone, never the rows; its unique index answers each). Ask
        a few hundred at a time: each call holds the database's thread for all of them."""
        if not job_ids:
            return set()
        with self._transaction(write=False) as conn:
            rows = conn.execute(_EXISTING_IDS, (json.dumps(list(job_ids)),)).fetchall()
        return {row["id"] for row in rows}

    def purge_workers_seen_before(self, cutoff: float, *, limit: int = PURGE_BATCH) -> int:
        """The retention step for workers: forget at most `limit` workers last seen before `cutoff` (serverless
        replicas come and go under new ids), never one that still holds a running job. Returns how many."""
        with self._transaction() as conn:
            return conn.execute(
                "DELETE FROM workers WHERE rowid IN ("
                " SELECT rowid FROM workers WHERE last_seen < ?"  # workers_by_last_seen
                " AND worker_id NOT IN (SELECT worker_id FROM jobs WHERE status = ? AND worker_id IS NOT NULL)"
                " LIMIT ?)",
                (cutoff, JobStatus.RUNNING.value, limit),
            ).rowcount

    # -- monitoring ------------------------------------------------------------------------------------

    def counts(self) -> dict[JobStatus, int]:
        with self._transaction(write=False) as conn:
            rows = conn.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        found = {JobStatus(row["status"]): row["n"] for row in rows}
        return {status: found.get(status, 0) for status in JobStatus}

    def workers_seen_since(self, since: float) -> int:
        with self._transaction(write=False) as conn:
            row = conn.execute("SELECT COUNT(*) AS n FROM workers WHERE last_seen >= ?", (since,)).fetchone()
        return row["n"]

    def last_heartbeat(self, worker_id: str) -> float | None:
        with self._transaction(write=False) as conn:
            row = conn.execute("SELECT last_seen FROM workers WHERE worker_id = ?", (worker_id,)).fetchone()
        return None if row is None else row["last_seen"]

    def probe_storage(self) -> None:
        """Write probe_bytes: storage_fault is None again once the database takes them, when nothing else
        writes (an idle queue). Raises sqlite3.Error while it cannot. Deleted in a second transaction, so the next
        probe needs that much room again (pages it held and rewrote in place would always fit). Writes nothing
        while the disk has less free room than that: the write would fail, after churning up to 50 MiB."""
        with suppress(OSError):  # the disk cannot say: the write will
            if shutil.disk_usage(self.path.parent).free < self.probe_bytes:
                return
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO storage_probe (id, room) VALUES (1, zeroblob(?))",
                         (self.probe_bytes,))
        self._storage_proven()  # its room may be the last probe's freed pages: not counted as growth
        with self._transaction() as conn:
            conn.execute("DELETE FROM storage_probe")

    def ping(self) -> bool:
        try:
            with self._transaction(write=False) as conn:
                conn.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True


def _create_or_upgrade(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date in the caller's transaction: tables, columns a database written by an older
    version lacks, indexes, the finish numbers. Returns how many finished jobs it numbered."""
    for statement in _SCHEMA.split(";"):
        conn.execute(statement)
    present = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
    for column, definition in _ADDED_COLUMNS.items():
        if column not in present:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {definition}")
    conn.execute(_POLL_INDEX)
    for statement in _FINISH_ORDER:
        conn.execute(statement)
    if conn.execute(_TO_NUMBER).fetchone() is None:
        return 0
    conn.execute(_START_COUNTER)
    numbered = conn.execute(_NUMBER_UNNUMBERED).rowcount
    conn.execute(_COUNT_NUMBERED)
    return numbered


def _seen(conn: sqlite3.Connection, worker_id: str, now: float) -> None:
    conn.execute(
        "INSERT INTO workers (worker_id, last_seen) VALUES (?, ?)"
        " ON CONFLICT (worker_id) DO UPDATE SET last_seen = excluded.last_seen",
        (worker_id, now),
    )


def _answered(conn: sqlite3.Connection, poll_id: str, worker_id: str) -> str | None:
    """The job this poll id was answered with, if it still runs under this worker (that same attempt: the id is
    cleared whenever the job stops running and replaced whenever it is handed out again)."""
    row = conn.execute("SELECT id, status, worker_id FROM jobs WHERE poll_id = ?", (poll_id,)).fetchone()
    if row is None:
        return None
    if row["status"] == JobStatus.RUNNING.value and row["worker_id"] == worker_id:
        return row["id"]
    if row["status"] == JobStatus.RUNNING.value:
        raise PollIdTaken(f"poll_id {poll_id} answered another worker's poll; send a new poll_id")
    # No longer running, yet still holding it: left by an older queue process sharing the file. Free it.
    conn.execute("UPDATE jobs SET poll_id = NULL WHERE id = ?", (row["id"],))
    return None


def _unservable(conn: sqlite3.Connection, job_id: str) -> str | None:
    """Why the job could not be sent as strict JSON, or None when it can."""
    try:
        job = _get(conn, job_id)
        # As the answer is sent: UTF-8, so a lone surrogate fails here (UnicodeEncodeError) rather than in a 500.
        json.dumps([job.workflow, job.metadata], allow_nan=False, ensure_ascii=False).encode()  # type: ignore[union-attr]
    except (ValueError, RecursionError) as exc:
        return str(exc)[:200] or type(exc).__name__
    return None


def _hand_back(
    conn: sqlite3.Connection, job: JobRecord, reason: str, cause: HandBackCause, *, now: float, max_attempts: int
) -> None:
    entry = {"attempt": job.attempt, "worker_id": job.worker_id, "reason": reason, "cause": cause.value, "at": now}
    history = [*job.history, entry]
    shutdowns = sum(1 for past in history if past.get("cause") == HandBackCause.SHUTDOWN)
    faults = len(history) - shutdowns  # an entry from before causes were recorded is a fault, as it was counted
    if gives_up(faults, shutdowns, max_attempts):
        reasons = "; ".join(entry["reason"] for entry in history)
        error = f"Gave up after {job.attempt} attempts: {reasons}"[:MAX_ERROR_CHARS]
        conn.execute(
            "UPDATE jobs SET status = ?, error = ?, completed_at = ?, lease_at = NULL, poll_id = NULL, history = ?,"
            " finish_seq = ? WHERE id = ?",
            (JobStatus.FAILED.value, error, now, json.dumps(history),
             _finish_seq_as(conn, job.id, JobStatus.FAILED), job.id),
        )
        return
    conn.execute(
        "UPDATE jobs SET status = ?, worker_id = NULL, started_at = NULL, lease_at = NULL, poll_id = NULL, attempt = ?,"
        " history = ?, finish_seq = NULL WHERE id = ?",
        (JobStatus.PENDING.value, job.attempt + 1, json.dumps(history), job.id),
    )


def _fail(conn: sqlite3.Connection, job_id: str, error: str, now: float) -> None:
    conn.execute(
        "UPDATE jobs SET status = ?, error = ?, completed_at = ?, poll_id = NULL, finish_seq = ? WHERE id = ?",
        (JobStatus.FAILED.value, error, now, _next_finish_seq(conn), job_id),
    )


def _finish_seq_as(conn: sqlite3.Connection, job_id: str, status: JobStatus) -> int:
    """The number of a job ending as `status` in this transaction. A job that already ended so (a report sent again,
    its first answer lost) keeps its number: a new one would move it past a client's cursor, unseen."""
    row = conn.execute("SELECT finish_seq FROM jobs WHERE id = ? AND status = ?", (job_id, status.value)).fetchone()
    if row is not None and row["finish_seq"] is not None:
        return row["finish_seq"]
    return _next_finish_seq(conn)


def _next_finish_seq(conn: sqlite3.Connection) -> int:
    """The number of a job finishing in this transaction: later than every job finished before it."""
    return conn.execute(_NEXT_FINISH_SEQ).fetchall()[0][0]


def _texts(encoded: Iterable[bytes]) -> Iterator[str]:
    for value in encoded:
        with suppress(UnicodeDecodeError):
            yield value.decode()


def _get(conn: sqlite3.Connection, job_id: str, columns: str = "*") -> JobRecord | None:
    row = conn.execute(f"SELECT {columns} FROM jobs WHERE id = ?", (job_id,)).fetchone()  # noqa: S608
    return None if row is None else JobRecord.from_row(row)


def _polled(conn: sqlite3.Connection, job_id: str, whole: bool, *, again: bool = False) -> Poll:
    if whole:
        return Poll(_get(conn, job_id), again=again)
    size = conn.execute("SELECT length(workflow) + length(metadata) FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    return Poll(_get(conn, job_id, _HOLDER_COLUMNS), again=again, stored_bytes=size)


def _count(conn: sqlite3.Connection, status: JobStatus) -> int:
    return conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status.value,)).fetchone()[0]


def _pending_of(conn: sqlite3.Connection, user_id: str) -> int:
    """From jobs_by_status_user alone: only that user's pending entries of the index are counted, no row read."""
    return conn.execute(
        "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND status = ?", (user_id, JobStatus.PENDING.value)
    ).fetchone()[0]


def list_order(status: JobStatus | None, newest_first: bool) -> str:
    """Which order a listing is in; finished jobs listed newest first come in the order they finished
    (jobs_by_finish_seq)."""
    if not newest_first:
        return "oldest"
    if status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
        return "finished"
    return "newest"


# Fixed ORDER BY clauses.
_ORDER_BY = {"oldest": "seq", "newest": "seq DESC", "finished": "finish_seq DESC, seq DESC"}
# Every finished job has a number (the finishing write's, a trigger's, the upgrade's); only a hand-edited row could
# lack one, and it is left out rather than hold a cursor no page could continue from.
_NUMBERED = "finish_seq IS NOT NULL"


@dataclass(frozen=True)
class ListCursor:
    """Where a page of a listing ended: the order it is in and the sort key of its last job. ``seq`` and
    ``finish_seq`` only grow (AUTOINCREMENT, a counter; committed one write at a time), so a job submitted, or
    finished, later always sorts after it."""

    order: str
    seq: int
    finish_seq: int | None = None  # in the finished order, always set

    def clause(self) -> str:
        return {"oldest": "seq > ?", "newest": "seq < ?", "finished": "finish_seq < ?"}[self.order]

    def params(self) -> tuple[Any, ...]:
        return (self.finish_seq if self.order == "finished" else self.seq,)

    def encode(self) -> str:
        if self.order != "finished":
            return f"{self.order}-{self.seq}"
        return f"finished-{self.finish_seq}-{self.seq}"

    @classmethod
    def decode(cls, text: str) -> ListCursor:
        """Raises ValueError for anything `encode` did not write."""
        if match := _SEQ_CURSOR.fullmatch(text):
            return cls(match["order"], int(match["seq"]))
        if match := _FINISHED_CURSOR.fullmatch(text):
            return cls("finished", int(match["seq"]), int(match["finish"]))
        raise ValueError("not a cursor this server gave")


# A seq fits SQLite's 64-bit integer (a longer one would not bind: OverflowError, a 500).
_SEQ_CURSOR = re.compile(r"(?P<order>oldest|newest)-(?P<seq>[0-9]{1,18})")
# Before finish numbers it held the completion time ("finished-1700000001.5-3", "finished-none-3" after a job
# cancelled without one), refused now: it would page wrong.
_FINISHED_CURSOR = re.compile(r"finished-(?P<finish>[0-9]{1,18})-(?P<seq>[0-9]{1,18})")


@dataclass(frozen=True)
class JobPage:
    """A page of a listing. ``next`` is where the next page starts, None when no job follows; ``cut`` when the
    page stopped at LIST_BUDGET_BYTES before its limit."""

    jobs: list[JobRecord]
    next: ListCursor | None
    cut: bool


def _listing(
    user_id: str | None, status: JobStatus | None, newest_first: bool, after: ListCursor | None
) -> tuple[str, list[str], list[Any]]:
    """A listing's order, filters and their parameters; ValueError when `after` is a cursor of another order."""
    order = list_order(status, newest_first)
    if after is not None and after.order != order:
        raise ValueError(f"this cursor is from a listing in another order ({after.order}, not {order})")
    filters, params = [], []
    if user_id is not None:
        filters.append("user_id = ?")
        params.append(user_id)
    if status is not None:
        filters.append("status = ?")
        params.append(status.value)
    if order == "finished":
        filters.append(_NUMBERED)
    return order, filters, params


def _where(filters: list[str], params: list[Any], after: ListCursor | None) -> tuple[str, tuple[Any, ...]]:
    clauses = [*filters, after.clause()] if after is not None else filters
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return where, (*params, *(after.params() if after is not None else ()))


def _pending_in_pop_order(
    conn: sqlite3.Connection, mode: QueueMode, *, first_only: bool = False, served_since: float | None = None
) -> list[str]:
    if mode is QueueMode.ROUND_ROBIN:
        return _round_robin_first(conn, served_since) if first_only else _round_robin_order(conn, served_since)
    order_by = "seq" if mode is QueueMode.FIFO else "priority, seq"
    limit = "LIMIT 1" if first_only else ""
    rows = conn.execute(
        f"SELECT id FROM jobs WHERE status = ? ORDER BY {order_by} {limit}",  # noqa: S608 - fixed fragments
        (JobStatus.PENDING.value,),
    ).fetchall()
    return [row["id"] for row in rows]


# Answered from jobs_by_user_start alone: reading the rows would read every workflow (28 ms a pop with 3,500
# finished jobs of 20 KiB, 0.7 ms from the index; docs/benchmarks.md).
SERVED_PER_USER = "SELECT user_id, COUNT(*) AS n FROM jobs WHERE started_at IS NOT NULL GROUP BY user_id"
SERVED_PER_USER_SINCE = "SELECT user_id, COUNT(*) AS n FROM jobs WHERE started_at >= ? GROUP BY user_id"
# Each waiting user's oldest job, from jobs_by_status_user alone (seq is the rowid every index holds).
OLDEST_PENDING_PER_USER = "SELECT user_id, MIN(seq) AS seq FROM jobs WHERE status = ? GROUP BY user_id"


def _served_per_user(conn: sqlite3.Connection, served_since: float | None) -> dict[str, int]:
    counted = conn.execute(SERVED_PER_USER) if served_since is None else conn.execute(
        SERVED_PER_USER_SINCE, (served_since,)
    )
    return {row["user_id"]: row["n"] for row in counted}


def _round_robin_first(conn: sqlite3.Connection, served_since: float | None) -> list[str]:
    """The head of `_round_robin_order` without ranking every pending job: 10,000 of them made each pop read
    them all (bench/queue_fairness.py)."""
    served = _served_per_user(conn, served_since)
    firsts = conn.execute(OLDEST_PENDING_PER_USER, (JobStatus.PENDING.value,)).fetchall()
    if not firsts:
        return []
    seq = min((served.get(row["user_id"], 0), row["seq"]) for row in firsts)[1]
    return [conn.execute("SELECT id FROM jobs WHERE seq = ?", (seq,)).fetchone()["id"]]


def _round_robin_order(conn: sqlite3.Connection, served_since: float | None) -> list[str]:
    """Serve next the user who has been handed the fewest jobs so far (since `served_since`, when given); ties go
    to the oldest waiting job.

    Replaying that rule over the pending jobs gives the whole order, so positions agree with pops.
    """
    served = _served_per_user(conn, served_since)
    waiting: dict[str, deque[tuple[int, str]]] = defaultdict(deque)
    for row in conn.execute("SELECT seq, id, user_id FROM jobs WHERE status = ? ORDER BY seq", ("pending",)):
        waiting[row["user_id"]].append((row["seq"], row["id"]))
    heap = [(served.get(user, 0), jobs[0][0], user) for user, jobs in waiting.items()]
    heapq.heapify(heap)
    order = []
    while heap:
        times_served, _, user = heapq.heappop(heap)
        order.append(waiting[user].popleft()[1])
        if waiting[user]:
            heapq.heappush(heap, (times_served + 1, waiting[user][0][0], user))
    return order


PENDING = JobStatus.PENDING.value
# The jobs shown, each by the id index (filtering on status here would scan jobs_by_finish's pending entries).
SHOWN_JOBS = "SELECT id, status, seq, user_id, priority FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
# A job's place in fifo and priority: the pending jobs ahead of it, counted on an index, no row read.
PENDING_BEFORE_SEQ = "SELECT COUNT(*) FROM jobs WHERE status = ? AND seq < ?"
PENDING_BEFORE_PRIORITY = "SELECT COUNT(*) FROM jobs WHERE status = ? AND (priority, seq) < (?, ?)"  # jobs_by_status
# Each waiting user's pending jobs, and how many of them are older than a given job, from jobs_by_status_user.
PENDING_PER_USER_BEFORE = (
    "SELECT user_id, COUNT(*) AS n, SUM(seq < ?) AS older FROM jobs WHERE status = ? GROUP BY user_id"
)
# Every pending job's sort key in pop order (see `_pending_place`), from an index alone.
PENDING_KEYS = {
    QueueMode.FIFO: "SELECT seq FROM jobs WHERE status = ?",
    QueueMode.PRIORITY: "SELECT priority, seq FROM jobs WHERE status = ?",
    QueueMode.ROUND_ROBIN: "SELECT user_id, seq FROM jobs WHERE status = ? ORDER BY user_id, seq",
}
# Up to this many places are counted one at a time, each count passing over up to every pending index entry;
# more (a page of pending jobs) are read off one ranking of every pending job's index entry.
COUNTED_ONE_BY_ONE = 4


def _pending_place(conn: sqlite3.Connection, mode: QueueMode, served: dict[str, int], job: sqlite3.Row) -> int:
    """The place `_pending_in_pop_order` gives this pending job, counted.

    Fifo hands out by seq, priority by (priority, seq): the place is the count of pending jobs with a smaller key.
    Round robin: the replay hands a user's pending jobs out oldest first, and while user v waits with its i-th
    pending job (0-based) at its head, that head's key is (served[v] + i, its seq); each pop takes the smallest
    key. A user's keys only grow, so the replay merges sorted runs: it is every pending job sorted by its key (no
    two tie: seqs are unique). This job's key is (t, seq), t = served[its user] + its user's pending jobs older
    than it. Ahead of it, of user v's n pending jobs, go those with i < t - served[v] (m, say), and the one with
    i = m when its seq is smaller, i.e. when m < v's pending jobs older than this one.
    """
    if mode is QueueMode.FIFO:
        return conn.execute(PENDING_BEFORE_SEQ, (PENDING, job["seq"])).fetchone()[0]
    if mode is QueueMode.PRIORITY:
        return conn.execute(PENDING_BEFORE_PRIORITY, (PENDING, job["priority"], job["seq"])).fetchone()[0]
    users = conn.execute(PENDING_PER_USER_BEFORE, (job["seq"], PENDING)).fetchall()
    turn = served.get(job["user_id"], 0) + next(user["older"] for user in users if user["user_id"] == job["user_id"])
    place = 0
    for user in users:
        ahead = turn - served.get(user["user_id"], 0)
        place += max(0, min(user["n"], ahead + 1 if ahead < user["older"] else ahead))
    return place


def _pending_places(conn: sqlite3.Connection, mode: QueueMode, served: dict[str, int]) -> dict[int, int]:
    """Every pending job's place by its seq: the keys of `_pending_place`, read off the index and sorted."""
    rows = conn.cursor()
    rows.row_factory = None  # plain tuples: half the time of sqlite3.Row for 10,000 entries
    keyed = rows.execute(PENDING_KEYS[mode], (PENDING,))
    if mode is QueueMode.FIFO:
        keys = [(seq,) for (seq,) in keyed]
    elif mode is QueueMode.PRIORITY:
        keys = keyed.fetchall()
    else:
        keys, user, turn = [], None, 0
        for user_id, seq in keyed:
            if user_id != user:
                user, turn = user_id, served.get(user_id, 0)
            keys.append((turn, seq))
            turn += 1
    keys.sort()
    return {key[-1]: place for place, key in enumerate(keys)}
