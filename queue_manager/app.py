"""The HTTP surface of the comfy-multi Queue Manager contract, plus our extensions (attempts, fenced reports,
heartbeat, hand back), on aiohttp.

Middlewares, outermost first: write answers over 64 KiB within a stall timeout → check the bearer token →
[test hooks only: record reports → inject faults] → close the connection after a body left unread → shape
errors → bound the bodies read together.
Nothing reads a body before the token is checked; each route reads at most its own limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from common.log_throttle import LogThrottle, held_back_logger
from common.send_progress import drop
from common.waiting_connections import WaitingConnections
from queue_manager.faults import FaultInjector
from queue_manager.models import (
    MAX_METADATA_BYTES,
    MAX_RESULT_BYTES,
    MAX_WORKFLOW_BYTES,
    HealthResponse,
    HeartbeatQuery,
    JobCompletionRequest,
    JobFailureRequest,
    JobResponse,
    JobStatus,
    JobSubmitRequest,
    ListJobsQuery,
    NextJobQuery,
    PagedListJobsQuery,
    PolledNextJobQuery,
    QueueMode,
    QueueStatusResponse,
    ReleaseQuery,
    ReleaseRequest,
    ReportQuery,
    answer_json,
    created_at_datetime,
    event_datetime,
)
from queue_manager.outputs import NOT_SERVED, OutputFileResponse, OutputNotServed, download_headers, listed_output
from queue_manager.participants import ParticipantsFile
from queue_manager.refusal_log import REFUSAL_LOG_EVERY_S, RefusalLog
from queue_manager.reports import Report, ReportLog
from queue_manager.store import (
    Fence,
    FencedOut,
    JobRecord,
    JobStore,
    ListCursor,
    PollIdTaken,
    QueueFullError,
    UserLimitError,
    is_storage_fault,
    list_order,
)
from queue_manager.validation import RefusedJson, ValidationErrors, parse_json_body, parse_query

log = structlog.get_logger()

T = TypeVar("T")

_MiB = 1024 * 1024
# What each route may read. A workflow (≤ 10 MiB) + metadata (≤ 1 MiB) leave room for indentation; a result
# (≤ 50 MiB) leaves 1 MiB for its envelope; an error is ≤ 10000 characters, a reason ≤ 2000, even escaped.
BODY_LIMITS = {
    "submit-job": MAX_WORKFLOW_BYTES + MAX_METADATA_BYTES + 5 * _MiB,
    "complete-job": MAX_RESULT_BYTES + _MiB,
    "fail-job": 256 * 1024,
    "release-job": 64 * 1024,
}
MAX_REQUEST_BYTES = max(BODY_LIMITS.values())
BODY = web.RequestKey("body", bytearray)
# What aiohttp's parser decodes (brotli and zstd only with libraries this project does not install).
DECODED_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})
# A client that sends nothing for this long mid-body has gone or is stalling on purpose, holding what it sent
# (up to its route's limit); nginx's client_body_timeout is the same idea, 60 s there too.
BODY_IDLE_TIMEOUT_S = 60.0
# That bounds each read, not the body: a client sending a byte every 59 s was read for ever, holding its place in
# the bodies' budget below. So a body must also keep an average rate: after BODY_GRACE_S it must have sent
# BODY_MIN_BYTES_PER_S for every second past the grace (Apache's RequestReadTimeout body=…,MinRate=… works so).
# 16 KiB/s is 128 kbit/s, below any uplink one would submit a workflow over: a 16 MiB submission may take 17 min,
# a 51 MiB report 55 min. A client dripping bytes is cut off BODY_GRACE_S after its body began.
BODY_GRACE_S = 30.0
BODY_MIN_BYTES_PER_S = 16 * 1024
# Bytes of request bodies held at once, across requests: each route bounded its own and nothing bounded them
# together (20 concurrent 50 MB reports peaked at 904 MB). A request declaring more than UNCOUNTED_BODY_BYTES
# (or chunked: its route's limit) reserves that before its body is read and keeps it until answered: two of the
# largest reports fit. One that finds no room within BODY_BUDGET_WAIT_S is 503; the worker retries.
BODIES_IN_FLIGHT_BYTES = 128 * _MiB
BODY_BUDGET_WAIT_S = 10.0
# Requests waiting for that room at once: aiohttp reads on into each one's buffers meanwhile (~0.65 MB), so 200
# waiting took the queue manager from 63 to 196 MB. Past this many, one that finds no room is 503 at once.
BODIES_WAITING_MAX = 16
# A body declaring at most this reserves nothing before it arrives: a reservation is taken before a byte does, so
# three clients declaring 51 MiB and sending a byte a minute held the whole budget and every report of a few KB
# waited, then 503. Such bodies take what their clients really send, as it arrives, from a budget of their own
# (reservations never crowd them out), and one that finds no room there is 503: counted nowhere, 800 clients each
# holding 1 MiB less a byte took the queue manager from 63 to 1018 MB.
UNCOUNTED_BODY_BYTES = _MiB
ARRIVING_BODIES_BYTES = 64 * _MiB
# Bytes of answers held at once, across requests, the same way: a GET of a job holding a 48 MB result built the
# whole answer for each client (16 at once: 1.7 GB), and kept it for as long as a client left it unread. A job's
# view of more than UNCOUNTED_ANSWER_BYTES of stored JSON reserves that before it is read and keeps it until the
# answer is written: two of the largest fit. One that finds no room within ANSWER_BUDGET_WAIT_S is 503.
ANSWERS_IN_FLIGHT_BYTES = 128 * _MiB
ANSWER_BUDGET_WAIT_S = 10.0
UNCOUNTED_ANSWER_BYTES = 64 * 1024
# An answer larger than that is written ANSWER_CHUNK_BYTES at a time, each within ANSWER_STALL_TIMEOUT_S, or the
# connection is closed and what it held freed: a client that stops reading (or reads under ~17 KiB/s) is cut off,
# as a client that stops sending its body is (nginx's send_timeout is the same idea, 60 s there too).
ANSWER_CHUNK_BYTES = _MiB
ANSWER_STALL_TIMEOUT_S = 60.0
# A worker counts towards total_workers while its last poll is this recent (the peer's heartbeat TTL).
WORKER_HEARTBEAT_TIMEOUT_S = 60.0
REPORT_ENDPOINTS = frozenset({"complete-job", "fail-job"})
# A full disk or a failing one is fixed by a person, not in a second: clients wait this long before retrying.
STORAGE_RETRY_AFTER_S = 10
# While a storage fault stands, /health tries a write at most this often: a flood of /health is no flood of writes
# to a failing disk, nor of waits of up to 10 s for a lock another process holds (every other request behind them).
STORAGE_PROBE_EVERY_S = STORAGE_RETRY_AFTER_S
# Each write that fails doubles the wait for the next, up to this: a probe writes up to 50 MiB, and every 10 s
# that was 2.2 GiB in 10 minutes to a disk an operator is fixing (bench/storage_probes.py).
STORAGE_PROBE_MAX_EVERY_S = 16 * STORAGE_PROBE_EVERY_S
# Set by the fault middleware for the report recorder outside it.
HANDLED_STATUS = web.RequestKey("handled_status", int)
DROPPED = web.RequestKey("dropped", bool)

_dumps = answer_json


@dataclass(frozen=True)
class QueueSettings:
    mode: QueueMode
    max_queue_depth: int
    token: str | None
    version: str
    max_pending_per_user: int = 0
    max_attempts: int = 3
    lease_timeout_s: float = 0  # told with each job handed out, so a worker beats within it; 0 = no lease
    # Off: answer exactly as comfy-multi does (no attempt, no heartbeat or release-job route, reports unfenced),
    # so a test can run the worker's comfy-multi fallback against this server.
    extensions: bool = True
    # Where the workers' OUTPUTS_PATH is mounted here (resolved), to serve completed jobs' files; None: not served.
    outputs_dir: Path | None = None


class BodyTooLarge(web.HTTPRequestEntityTooLarge):
    def __init__(self, limit: int, size: int | None) -> None:
        super().__init__(max_size=limit, actual_size=size or limit + 1)
        told = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        self.detail = f"Request body too large: {told}; this endpoint accepts at most {limit} bytes"


class UnreadableBody(Exception):
    """The body was not read to its end, by the client's doing: it is not what its headers announce (400), in an
    encoding not decoded here (415), the client hung up (400, to nobody) or stopped sending (408). Never a 500; the
    connection is closed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BodyBudgetFull(Exception):
    pass


class BodyBudget:
    """Bytes reserved by the request bodies being read, parsed or stored (BODIES_IN_FLIGHT_BYTES at most), or,
    with ``answers``, by the answers being built and written (ANSWERS_IN_FLIGHT_BYTES at most)."""

    def __init__(self, *, answers: bool = False) -> None:
        self.held = 0
        self.waiting = 0
        self._answers = answers
        self._changed = asyncio.Condition()

    @property
    def limit(self) -> int:
        return ANSWERS_IN_FLIGHT_BYTES if self._answers else BODIES_IN_FLIGHT_BYTES

    def take(self, size: int) -> None:
        """Hold `size` more bytes now, without waiting (BodyBudgetFull when they do not fit); `give_back` them."""
        if self.held + size > self.limit:
            raise BodyBudgetFull
        self.held += size

    async def give_back(self, size: int) -> None:
        async with self._changed:
            self.held -= size
            self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def reserve(self, size: int, *, until_room: bool = False) -> AsyncIterator[None]:
        """Hold `size` bytes for the block; BodyBudgetFull when there is no room within BODY_BUDGET_WAIT_S (for
        answers ANSWER_BUDGET_WAIT_S, or never with `until_room`); for bodies at once when BODIES_WAITING_MAX wait
        already."""
        if self.held + size > self.limit and not self._answers and self.waiting >= BODIES_WAITING_MAX:
            raise BodyBudgetFull
        self.waiting += 1
        wait_s = None if until_room else ANSWER_BUDGET_WAIT_S if self._answers else BODY_BUDGET_WAIT_S
        try:
            async with self._changed, asyncio.timeout(wait_s):
                await self._changed.wait_for(lambda: self.held + size <= self.limit)
                self.held += size
        except TimeoutError:
            raise BodyBudgetFull from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            await self.give_back(size)


class ArrivingBudget(BodyBudget):
    """Bytes received of the bodies that reserved nothing (ARRIVING_BODIES_BYTES at most)."""

    @property
    def limit(self) -> int:
        return ARRIVING_BODIES_BYTES


@dataclass
class ArrivingBody:
    """What a body that reserved nothing has taken of the budget so far, as its bytes arrived."""

    budget: BodyBudget
    taken: int = 0

    def take(self, size: int) -> None:
        self.budget.take(size)
        self.taken += size


ARRIVING = web.RequestKey("arriving", ArrivingBody)


async def read_body(request: web.Request) -> bytearray:
    """The request body, read once, refused (413) as soon as it passes its route's limit."""
    if BODY in request:
        return request[BODY]
    limit = BODY_LIMITS.get(_endpoint(request) or "", 0)
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit, request.content_length)
    encoding = _content_encoding(request)
    if encoding not in DECODED_ENCODINGS:  # aiohttp would hand these over undecoded, as if sent as they are
        raise UnreadableBody(415, f"Content-Encoding {encoding!r} is not supported: send the body as it is, or gzip")
    body = bytearray()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        while True:
            too_slow_at = started + BODY_GRACE_S + len(body) / BODY_MIN_BYTES_PER_S
            async with asyncio.timeout_at(min(loop.time() + BODY_IDLE_TIMEOUT_S, too_slow_at)):
                chunk = await request.content.readany()
            if not chunk:
                break
            if (arriving := request.get(ARRIVING)) is not None:
                arriving.take(len(chunk))
            body += chunk
            if len(body) > limit:
                raise BodyTooLarge(limit, None)
    except web.RequestPayloadError as exc:
        request.content.feed_eof()  # nothing more to read (aiohttp would read on and log the same error again)
        cause = exc.__cause__
        why = cause.message if isinstance(cause, HttpProcessingError) else "malformed"
        raise UnreadableBody(400, f"Request body could not be read: {why}") from None
    except ConnectionResetError:
        log.info("request_body_cut_short", method=request.method, path=request.path, bytes_read=len(body))
        raise UnreadableBody(400, "Request body could not be read: the connection closed before it ended") from None
    except TimeoutError:
        now = loop.time()
        elapsed = now - started
        if now < too_slow_at:  # the per-read deadline came first
            log.info("request_body_stalled", method=request.method, path=request.path, bytes_read=len(body))
            raise UnreadableBody(408, f"Request body stalled: nothing received for {BODY_IDLE_TIMEOUT_S:g} s") from None
        log.info("request_body_too_slow", method=request.method, path=request.path, bytes_read=len(body),
                 seconds=round(elapsed, 1))
        raise UnreadableBody(
            408,
            f"Request body too slow: {len(body)} bytes in {elapsed:.0f} s; past the first {BODY_GRACE_S:g} s a body "
            f"must arrive at {BODY_MIN_BYTES_PER_S} bytes a second or more",
        ) from None
    request[BODY] = body
    return body


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


async def send_json(request: web.Request, parts: list[bytes | bytearray], headers: Any = None, status: int = 200,
                    *, keep_alive: bool = True) -> web.StreamResponse:
    """An answer of these bytes, written here (the caller holds what it reserved until it is), ANSWER_CHUNK_BYTES
    at a time, each within ANSWER_STALL_TIMEOUT_S, else the connection is closed: a client that stops reading
    holds its answer no longer than that."""
    response = web.StreamResponse(status=status, headers=headers)
    if "Content-Type" not in response.headers:
        response.content_type, response.charset = "application/json", "utf-8"
    response.content_length = sum(len(part) for part in parts)
    if not keep_alive:
        response.force_close()
    await response.prepare(request)
    sent = 0
    try:
        for part in parts:
            view = memoryview(part)
            for start in range(0, len(view), ANSWER_CHUNK_BYTES):
                chunk = view[start : start + ANSWER_CHUNK_BYTES]
                async with asyncio.timeout(ANSWER_STALL_TIMEOUT_S):
                    await response.write(chunk)
                sent += len(chunk)
    except TimeoutError:
        log.info("answer_write_stalled", method=request.method, path=request.path, bytes_sent=sent,
                 bytes=response.content_length, timeout_s=ANSWER_STALL_TIMEOUT_S)
        if request.transport is not None:
            drop(request.transport)  # abort() alone left the kernel offering its client what it had queued
    except ConnectionError:
        pass  # the client hung up: nothing to send to
    return response


@web.middleware
async def _send_large_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Any answer over UNCOUNTED_ANSWER_BYTES built whole (a list, a job handed to a worker) is written by
    send_json: aiohttp would hand it to the connection and hold it for as long as its client left it unread."""
    return await _written_if_large(request, await handler(request))


async def _written_if_large(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    if type(response) is web.Response and isinstance(response.body, bytes | bytearray) and not response.prepared:
        body = response.body
        if len(body) > UNCOUNTED_ANSWER_BYTES:
            headers = {name: value for name, value in response.headers.items() if name != "Content-Length"}
            return await send_json(request, [body], headers, response.status,
                                   keep_alive=response.keep_alive is not False)
    return response


def _detail(status: int, detail: Any) -> web.Response:
    return _json({"detail": detail}, status)


def _database_failure(exc: sqlite3.Error) -> web.Response:
    """503 and Retry-After for any database error: the transaction was rolled back, so nothing changed and a
    retry is safe."""
    why = "cannot be written" if is_storage_fault(exc) else "refused the request"
    response = _detail(503, f"The queue's database {why}: {exc}; nothing was changed, retry later")
    response.headers["Retry-After"] = str(STORAGE_RETRY_AFTER_S)
    return response


class QueueApi:
    """Request handlers. Store calls run on `db_executor` so SQLite never blocks the event loop; bodies are parsed
    on `body_executor`, one at a time: parsing is CPU work the client sizes (14 s for a 50 MB report of 25 million
    numbers), which on the event loop held up every other request, /health too."""

    def __init__(
        self,
        store: JobStore,
        settings: QueueSettings,
        *,
        db_executor: Executor,
        body_executor: Executor,
        clock: Callable[[], float],
        steady_clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._settings = settings
        self._db_executor = db_executor
        self._body_executor = body_executor
        self._clock = clock
        self._storage_probe_due = -math.inf
        self._storage_probe_every_s = STORAGE_PROBE_EVERY_S
        # Uptime by the steady clock: a wall clock stepped back (NTP, a resumed host) showed a negative uptime.
        self._steady_clock = steady_clock
        self._started_at = steady_clock()
        self._answers = BodyBudget(answers=True)
        self._answers_full_log = LogThrottle(
            REFUSAL_LOG_EVERY_S, report_held_back=held_back_logger(log, "warning", "answer_budget_full_held_back")
        )

    def flush_logs(self) -> None:
        self._answers_full_log.flush()

    @property
    def extensions(self) -> bool:
        return self._settings.extensions

    def _db(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._db_executor, functools.partial(call, *args, **kwargs))

    # -- worker endpoints ------------------------------------------------------------------------------

    async def next_job(self, request: web.Request) -> web.Response:
        # comfy-multi ignores a poll_id (FastAPI drops unknown query parameters); so does this server then.
        query, errors = parse_query(PolledNextJobQuery if self.extensions else NextJobQuery, request.query)
        if query is None:
            return _detail(422, errors)
        poll_id = getattr(query, "poll_id", None)
        try:
            poll = await self._db(self._store.poll, query.worker_id, self._settings.mode, poll_id=poll_id, whole=False)
        except PollIdTaken as exc:
            log.warning("poll_id_taken", worker_id=query.worker_id, poll_id=poll_id)
            return _detail(409, str(exc))
        handed = poll.job
        if handed is None:
            return _json({"job": None})
        log.info("job_assigned", job_id=handed.id, user_id=handed.user_id, worker_id=query.worker_id,
                 attempt=handed.attempt, poll_id=poll_id, again=poll.again)
        # The job is this poll's already: a 503 is only for a poll whose retry (same poll_id) is handed it again.
        return await self._within_answers_budget(request, poll.stored_bytes,
                                                 functools.partial(self._poll_answer, request, handed),
                                                 until_room=poll_id is None)

    async def _poll_answer(self, request: web.Request, handed: JobRecord) -> web.StreamResponse:
        job = await self._db(self._store.get, handed.id)
        if job is None:  # cancelled and purged meanwhile
            return _json({"job": None})
        job_view = {"id": job.id, "workflow": job.workflow, "user_id": job.user_id, "metadata": job.metadata}
        if not self._settings.extensions:
            return await _written_if_large(request, _json({"job": job_view}))
        lease = {"lease_timeout_s": self._settings.lease_timeout_s} if self._settings.lease_timeout_s > 0 else {}
        return await _written_if_large(request, _json({"job": {**job_view, "attempt": handed.attempt, **lease}}))

    async def complete_job(self, request: web.Request) -> web.Response:
        query, body, errors = await self._query_and_body(request, ReportQuery, JobCompletionRequest)
        if errors:
            return _detail(422, errors)
        try:
            previous = await self._db(self._store.complete, query.job_id, body.result, self._fence(query))
        except FencedOut as exc:
            return _fenced("complete-job", query.job_id, exc)
        return self._report_answer("job_completed", query.job_id, previous)

    async def fail_job(self, request: web.Request) -> web.Response:
        query, body, errors = await self._query_and_body(request, ReportQuery, JobFailureRequest)
        if errors:
            return _detail(422, errors)
        try:
            previous = await self._db(self._store.fail, query.job_id, body.error, self._fence(query))
        except FencedOut as exc:
            return _fenced("fail-job", query.job_id, exc)
        return self._report_answer("job_failed", query.job_id, previous, error=body.error)

    async def heartbeat(self, request: web.Request) -> web.Response:
        query, errors = parse_query(HeartbeatQuery, request.query)
        if query is None:
            return _detail(422, errors)
        try:
            await self._db(self._store.heartbeat, query.worker_id, query.job_id, query.attempt)
        except FencedOut as exc:
            return _fenced("heartbeat", query.job_id, exc)
        return _json({"status": "ok"})

    async def release_job(self, request: web.Request) -> web.Response:
        query, body, errors = await self._query_and_body(request, ReleaseQuery, ReleaseRequest)
        if errors:
            return _detail(422, errors)
        try:
            job = await self._db(
                self._store.release,
                query.job_id,
                Fence(query.worker_id, query.attempt),
                body.reason,
                max_attempts=self._settings.max_attempts,
                cause=body.cause,
            )
        except FencedOut as exc:
            return _fenced("release-job", query.job_id, exc)
        if job is None:
            return _detail(404, "Job not found")
        log.info(
            "job_released" if job.status is JobStatus.PENDING else "job_gave_up",
            job_id=job.id,
            worker_id=query.worker_id,
            attempt=query.attempt,
            cause=body.cause.value,
            reason=body.reason,
        )
        return _json({"status": job.status.value, "job_id": job.id, "attempt": job.attempt})

    def _report_answer(self, event: str, job_id: str, previous: JobStatus | None, **fields: Any) -> web.Response:
        if previous is None:
            log.warning("report_for_unknown_job", job_id=job_id, report=event)
            return _detail(404, "Job not found")
        if previous is JobStatus.RUNNING:
            log.info(event, job_id=job_id, **fields)
        else:
            # The peer accepts it too (last report wins); say so loudly, it usually means a double report.
            log.warning(event, job_id=job_id, previous_status=previous.value, unexpected=True, **fields)
        return _json({"status": "success", "job_id": job_id})

    # -- queue endpoints -------------------------------------------------------------------------------

    async def queue_status(self, request: web.Request) -> web.Response:
        counts = await self._db(self._store.counts)
        workers = await self._db(self._store.workers_seen_since, self._clock() - WORKER_HEARTBEAT_TIMEOUT_S)
        status = QueueStatusResponse(
            mode=self._settings.mode,
            pending_jobs=counts[JobStatus.PENDING],
            running_jobs=counts[JobStatus.RUNNING],
            completed_jobs=counts[JobStatus.COMPLETED],
            failed_jobs=counts[JobStatus.FAILED],
            total_workers=workers,
            active_workers=0,
            queue_depth=counts[JobStatus.PENDING],
        )
        return _json(status.model_dump(mode="json"))

    async def health(self, request: web.Request) -> web.Response:
        connected = await self._db(self._store.ping)
        now = self._steady_clock()
        if connected and self._store.storage_fault is not None and now >= self._storage_probe_due:
            # Again in 10 s if the disk showed no room for it (nothing written), later if its write failed.
            self._storage_probe_due = now + STORAGE_PROBE_EVERY_S
            try:
                await self._db(self._store.probe_storage)
            except sqlite3.Error:  # the fault stands, its cause kept by the store
                self._storage_probe_due = now + self._storage_probe_every_s
                self._storage_probe_every_s = min(2 * self._storage_probe_every_s, STORAGE_PROBE_MAX_EVERY_S)
        if self._store.storage_fault is None:  # the next fault is probed from 10 s again
            self._storage_probe_every_s = STORAGE_PROBE_EVERY_S
            self._storage_probe_due = min(self._storage_probe_due, now + STORAGE_PROBE_EVERY_S)
        depth = (await self._db(self._store.counts))[JobStatus.PENDING] if connected else 0
        health = HealthResponse(
            status="healthy" if connected and self._store.storage_fault is None else "unhealthy",
            version=self._settings.version,
            redis_connected=connected,
            workers_active=0,
            queue_depth=depth,
            uptime_seconds=int(self._steady_clock() - self._started_at),
        )
        return _json(health.model_dump(mode="json"))

    # -- user endpoints --------------------------------------------------------------------------------

    async def submit_job(self, request: web.Request) -> web.Response:
        body, errors = await self._parse_body(request, JobSubmitRequest)
        if body is None:
            return _detail(422, errors)
        if (participant := request.get(PARTICIPANT)) is not None and body.user_id != participant:
            return _not_yours(participant)
        try:
            job = await self._db(
                self._store.submit,
                body.user_id,
                body.workflow,
                priority=body.priority,
                metadata=body.metadata,
                max_depth=self._settings.max_queue_depth,
                max_pending_per_user=self._settings.max_pending_per_user,
            )
        except QueueFullError as exc:
            log.warning("queue_full", user_id=body.user_id, max_queue_depth=exc.max_depth)
            return _detail(429, str(exc))
        except UserLimitError as exc:
            log.warning("user_pending_limit", user_id=exc.user_id, pending=exc.pending, max_pending_per_user=exc.limit)
            return _detail(429, str(exc))
        log.info("job_submitted", job_id=job.id, user_id=job.user_id, priority=job.priority)
        return _json(self._job_view(job, await self._positions([job])), 201)

    async def get_job(self, request: web.Request) -> web.StreamResponse:
        """A job's view. One holding more than UNCOUNTED_ANSWER_BYTES of stored JSON reserves that from the
        answers' budget before it is read, until it is written (503 when there is no room in time)."""
        job_id = request.match_info["job_id"]
        size = await self._db(self._store.shown_bytes, job_id)
        if size is None:
            return _detail(404, "Job not found")
        return await self._within_answers_budget(request, size, functools.partial(self._job_answer, request, job_id))

    async def _within_answers_budget(
        self, request: web.Request, size: int, answer: Callable[[], Awaitable[web.StreamResponse]],
        *, until_room: bool = False,
    ) -> web.StreamResponse:
        """The answer, built and written holding `size` bytes of the answers' budget when that is more than
        UNCOUNTED_ANSWER_BYTES; 503 when there is no room in time (never with `until_room`: it waits)."""
        if size <= UNCOUNTED_ANSWER_BYTES:
            return await answer()
        try:
            async with self._answers.reserve(size, until_room=until_room):
                return await answer()
        except BodyBudgetFull:
            pass
        if (refused := self._answers_full_log.occurred()) is not None:
            log.warning("answer_budget_full", path=request.path, needs=size, held=self._answers.held,
                        more_since_last=refused - 1)
        response = _detail(
            503,
            f"Busy: answers being sent hold {self._answers.held} of {ANSWERS_IN_FLIGHT_BYTES} bytes and this one "
            f"needs {size}; retry shortly",
        )
        response.headers["Retry-After"] = "1"
        return response

    async def _job_answer(self, request: web.Request, job_id: str) -> web.StreamResponse:
        job = await self._db(self._store.shown, job_id)
        if job is None or request.get(PARTICIPANT, job.user_id) != job.user_id:
            return _detail(404, "Job not found")  # another participant's job: as if there were none
        view = self._job_view(job, await self._positions([job]))
        if self._settings.extensions:
            view["metadata"] = job.metadata
        if job.result_json is None:
            return _json(view)
        # The stored result's text goes in as it is, between the fields before it and those after.
        names = list(view)
        at = names.index("result")
        before = _dumps({name: view[name] for name in names[:at]}).encode()
        after = _dumps({name: view[name] for name in names[at + 1 :]}).encode()
        parts = [before[:-1] + b',"result":', job.result_json, b"," + after[1:]]
        if sum(len(part) for part in parts) <= UNCOUNTED_ANSWER_BYTES:
            return web.Response(body=b"".join(parts), content_type="application/json", charset="utf-8")
        return await send_json(request, parts)

    async def job_output(self, request: web.Request) -> web.StreamResponse:
        """One file of a completed job's result, streamed from the outputs volume (queue_manager/outputs.py)."""
        root = self._settings.outputs_dir
        if root is None:
            return _detail(404, NOT_SERVED)
        job_id = request.match_info["job_id"]
        job = await self._db(self._store.output_listing, job_id)
        if job is None or request.get(PARTICIPANT, job.user_id) != job.user_id:
            return _detail(404, "Job not found")  # another participant's job: as if there were none
        if job.status is not JobStatus.COMPLETED:
            return _detail(409, f"Job is {job.status.value}: only a completed job's outputs are served")
        asked = request.match_info["path"]
        try:
            opened = await asyncio.to_thread(listed_output, root, job.user_id, job_id, job.paths, asked)
        except OutputNotServed as exc:
            return _detail(exc.status, exc.detail)
        return OutputFileResponse(opened, headers=download_headers(PurePosixPath(asked).name),
                                  slice_bytes=ANSWER_CHUNK_BYTES, stall_timeout_s=ANSWER_STALL_TIMEOUT_S)

    async def list_jobs(self, request: web.Request) -> web.StreamResponse:
        """A page of jobs. One holding more than UNCOUNTED_ANSWER_BYTES of stored JSON reserves that from the
        answers' budget before it is read, until it is written (503 when there is no room in time)."""
        query, errors = parse_query(PagedListJobsQuery if self.extensions else ListJobsQuery, request.query)
        if query is None:
            return _detail(422, errors)
        user_id = query.user_id or None
        if (participant := request.get(PARTICIPANT)) is not None:
            if user_id not in (None, participant):
                return _not_yours(participant)
            user_id = participant
        newest_first = self.extensions and query.order == "newest"
        after, errors = _list_cursor(getattr(query, "after", None), list_order(query.status, newest_first))
        if errors:
            return _detail(422, errors)
        listing = {"user_id": user_id, "status": query.status, "limit": query.limit, "newest_first": newest_first,
                   "after": after}
        size = await self._db(self._store.page_bytes, **listing)
        return await self._within_answers_budget(request, size, functools.partial(self._list_answer, request, listing))

    async def _list_answer(self, request: web.Request, listing: dict[str, Any]) -> web.StreamResponse:
        page = await self._db(self._store.page, with_workflow=False, **listing)
        positions = await self._positions(page.jobs)
        response = _json([self._job_view(job, positions) for job in page.jobs])
        if self.extensions:  # headers only: the body stays the contract's list
            if page.next is not None:
                cursor = page.next.encode()
                response.headers["X-Next-Cursor"] = cursor
                asked = {name: request.query[name] for name in ListJobsQuery.model_fields if name in request.query}
                response.headers["Link"] = f'<{request.rel_url.with_query({**asked, "after": cursor})}>; rel="next"'
            if page.cut:
                response.headers["X-List-Truncated"] = "size"
        return await _written_if_large(request, response)  # while its reservation is held

    async def _positions(self, shown: list[JobRecord]) -> dict[str, int]:
        """Places in line of the pending jobs shown, and only theirs."""
        pending = [job.id for job in shown if job.status is JobStatus.PENDING]
        if not pending:
            return {}
        return await self._db(self._store.positions_of, self._settings.mode, pending)

    def _job_view(self, job: JobRecord, positions: dict[str, int]) -> dict[str, Any]:
        view = _job_view(job, positions)
        if not self._settings.extensions:
            del view["attempt"], view["history"]
        return view

    def _fence(self, query: ReportQuery) -> Fence:
        return Fence(query.worker_id, query.attempt) if self._settings.extensions else Fence()

    async def cancel_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        previous = await self._db(self._store.cancel, job_id, user_id=request.get(PARTICIPANT))
        if previous is None:
            return _detail(404, "Job not found")
        if previous not in (JobStatus.PENDING, JobStatus.RUNNING):
            # Worded as the peer words it: it formats its (str, Enum) member, which Python 3.11 renders so.
            return _detail(400, f"Cannot cancel job in JobStatus.{previous.name} state")
        log.info("job_cancelled", job_id=job_id, previous_status=previous.value)
        return web.Response(status=204)

    async def _parse_body(self, request: web.Request, model: type[Any]) -> tuple[Any, ValidationErrors]:
        raw = await read_body(request)
        loop = asyncio.get_running_loop()
        content_type = request.headers.get("Content-Type")
        return await loop.run_in_executor(self._body_executor, parse_json_body, model, raw, content_type)

    async def _query_and_body(
        self, request: web.Request, query_model: type[Any], body_model: type[Any]
    ) -> tuple[Any, Any, ValidationErrors]:
        body, body_errors = await self._parse_body(request, body_model)
        if body_errors and body_errors[0]["type"] == "json_invalid":
            return None, None, body_errors  # FastAPI stops at a body it cannot decode
        query, query_errors = parse_query(query_model, request.query)
        return query, body, query_errors + body_errors


def _not_yours(participant: str) -> web.Response:
    return _detail(403, f"user_id must be {participant}: this is {participant}'s own token, which submits and "
                        f"lists {participant}'s jobs only")


def _fenced(endpoint: str, job_id: str, exc: FencedOut) -> web.Response:
    log.warning("report_fenced_out", endpoint=endpoint, job_id=job_id, reason=str(exc))
    return _detail(409, str(exc))


def _list_cursor(text: str | None, order: str) -> tuple[ListCursor | None, ValidationErrors]:
    """The `after` of GET /api/jobs, decoded, or the 422 naming it."""
    if text is None:
        return None, []
    try:
        cursor = ListCursor.decode(text)
    except ValueError:
        why = ("must be the X-Next-Cursor header of an earlier page, sent back as it came (one given before this"
               " queue manager was upgraded may no longer page: list again from the first page)")
    else:
        if cursor.order == order:
            return cursor, []
        why = (f"this cursor is from a listing in {cursor.order} order, not {order}: ask with the order and status "
               f"of the page it came with")
    return None, [{"type": "value_error", "loc": ["query", "after"], "msg": f"Value error, {why}"}]


def _job_view(job: JobRecord, positions: dict[str, int]) -> dict[str, Any]:
    return JobResponse(
        id=job.id,
        user_id=job.user_id,
        status=job.status,
        priority=job.priority,
        created_at=created_at_datetime(job.created_at),
        started_at=event_datetime(job.started_at),
        completed_at=event_datetime(job.completed_at),
        worker_id=job.worker_id,
        result=job.result,
        error=job.error,
        position_in_queue=positions.get(job.id) if job.status is JobStatus.PENDING else None,
        attempt=job.attempt,
        history=job.history,
    ).model_dump(mode="json", exclude={"metadata"})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _endpoint(request: web.Request) -> str | None:
    return request.match_info.route.name


def _report_middleware(reports: ReportLog, clock: Callable[[], float]) -> Any:
    @web.middleware
    async def record_reports(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = _endpoint(request)
        if endpoint not in REPORT_ENDPOINTS:
            return await handler(request)
        response = await handler(request)
        raw = request.get(BODY)
        if raw is None and not request.get(DROPPED):  # a fault answered before the handler read it
            with contextlib.suppress(Exception):
                raw = await read_body(request)
        reports.record(
            Report(
                endpoint=endpoint,
                job_id=request.query.get("job_id"),
                body=_parsed(raw),
                status=None if request.get(DROPPED) else response.status,
                handled_status=request.get(HANDLED_STATUS),
                at=clock(),
            )
        )
        return response

    return record_reports


def _parsed(raw: bytearray | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return bytes(raw).decode("utf-8", errors="replace")


def _fault_middleware(faults: FaultInjector) -> Any:
    @web.middleware
    async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = _endpoint(request)
        fault = faults.take(endpoint) if endpoint else None
        response = None
        if fault is None or fault.after:
            response = await handler(request)
            request[HANDLED_STATUS] = response.status
            if fault is None:
                return response
        if fault.delay_s > 0:
            await asyncio.sleep(fault.delay_s)
        if fault.drop:
            request[DROPPED] = True
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response(status=499)  # never sent: the connection is gone
        if fault.status is not None:
            log.info("fault_injected", endpoint=endpoint, status=fault.status, after=fault.after)
            return _fault_response(fault.status, fault.body)
        if response is None:  # a pure delay before the work: do it now, late
            response = await handler(request)
            request[HANDLED_STATUS] = response.status
        return response  # a pure delay after the work: its answer, late

    return inject_faults


def _fault_response(status: int, body: dict[str, Any] | list[Any] | str | None) -> web.Response:
    if isinstance(body, str):
        return web.Response(status=status, text=body, content_type="text/html")
    return _json(body if body is not None else {"detail": HTTPStatus(status).phrase}, status)


# Routes only workers call: with a worker token set, only it opens them (a participant's token could take, read or
# report other people's jobs).
WORKER_ENDPOINTS = frozenset({"next-job", "complete-job", "fail-job", "heartbeat", "release-job"})
WORKER_PATH_PREFIX = "/api/workers/"
PARTICIPANTS_ON_WORKER_ROUTE = (
    "Worker routes take only the queue manager's worker token (its QUEUE_MANAGER_WORKER_TOKEN); this is the "
    "participants' token (its QUEUE_MANAGER_TOKEN)"
)
WORKER_ROUTE_UNAUTHENTICATED = (
    "Not authenticated: worker routes take only the queue manager's worker token (QUEUE_MANAGER_WORKER_TOKEN)"
)
PARTICIPANT_ON_WORKER_ROUTE = (
    "Worker routes take only a worker's token; this is participant {user_id}'s own token (from the queue manager's "
    "QUEUE_MANAGER_PARTICIPANTS_FILE), which submits, lists, reads and cancels {user_id}'s jobs only"
)
PARTICIPANTS_FILE_BROKEN = (
    "The queue manager's participants file is broken (its operator is told which line): participants' tokens are "
    "refused until it is fixed; try again later"
)
# Who holds a participant's own token, set by the auth middleware: that request sees and changes their jobs only.
PARTICIPANT = web.RequestKey("participant", str)


def _bearer(token: str | None) -> bytes | None:
    return f"Bearer {token}".encode() if token else None


def _is_worker_route(request: web.Request) -> bool:
    return _endpoint(request) in WORKER_ENDPOINTS or request.path.startswith(WORKER_PATH_PREFIX)


def _auth_middleware(
    token: str | None, worker_token: str | None = None, participants: ParticipantsFile | None = None
) -> Any:
    """One token for every /api/ route; or, with a worker token too, /api/workers/ takes only the worker token and
    every other /api/ route takes either. Both are always compared, in constant time. A participant's own token
    (from the participants file) opens the other routes for that participant's jobs only (the handlers see who in
    request[PARTICIPANT])."""
    expected = _bearer(token)
    worker_expected = _bearer(worker_token)

    @web.middleware
    async def require_bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or not request.path.startswith("/api/"):
            return await handler(request)
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        credentials = credentials.strip()
        # Bytes that are not UTF-8 arrive as lone surrogates: encoded back to those bytes, they match no token (before:
        # UnicodeEncodeError, a 500).
        presented = f"Bearer {credentials}".encode(errors="surrogateescape") if scheme.lower() == "bearer" else b""
        is_operator = hmac.compare_digest(presented, expected)  # QUEUE_MANAGER_TOKEN
        is_worker = worker_expected is not None and hmac.compare_digest(presented, worker_expected)
        holder = None
        if participants is not None and presented and not (is_operator or is_worker):
            listed = participants.current()
            holder = listed.holder(credentials)
            if holder is not None and listed.problem is not None:
                return _refused(request, 503, PARTICIPANTS_FILE_BROKEN)
        if holder is not None:
            if _is_worker_route(request):
                return _refused(request, 403, PARTICIPANT_ON_WORKER_ROUTE.format(user_id=holder))
            request[PARTICIPANT] = holder
            return await handler(request)
        if worker_expected is not None and _is_worker_route(request):
            if is_worker:
                return await handler(request)
            if is_operator:
                return _refused(request, 403, PARTICIPANTS_ON_WORKER_ROUTE)
            return _refused(request, 401, WORKER_ROUTE_UNAUTHENTICATED)
        if is_operator or is_worker:
            return await handler(request)
        return _refused(request, 401, "Not authenticated")

    return require_bearer


def _refused(request: web.Request, status: int, detail: str) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = web.json_response({"detail": detail}, status=status, headers=headers)
    if request.can_read_body:
        response.force_close()  # the unread body is dropped with the connection, never read
    return response


def _body_budget_middleware(budget: BodyBudget, arriving: ArrivingBudget, full_log: LogThrottle) -> Any:
    @web.middleware
    async def bound_bodies_together(request: web.Request, handler: Handler) -> web.StreamResponse:
        limit = BODY_LIMITS.get(_endpoint(request) or "")
        declared = request.content_length
        if limit is None or not request.can_read_body or (declared is not None and declared > limit):
            return await handler(request)  # nothing to read, or refused (413) unread
        if _is_compressed(request):
            declared = None  # what it holds is its decompressed size: 47 KB of gzip held 48 MB, uncounted
        size = declared if declared is not None else limit
        full = budget
        try:
            if declared is not None and declared <= UNCOUNTED_BODY_BYTES:
                full = arriving
                request[ARRIVING] = ArrivingBody(arriving)
                try:
                    return await handler(request)
                finally:  # what is read of it later (the test hooks' report log) is no longer counted
                    await arriving.give_back(request.pop(ARRIVING).taken)
            async with budget.reserve(size):
                return await handler(request)
        except BodyBudgetFull:
            pass
        if (refused := full_log.occurred()) is not None:
            log.warning("request_body_budget_full", path=request.path, needs=size, held=full.held,
                        more_since_last=refused - 1)
        waiting = f", {full.waiting} more wait for room," if full.waiting else ""
        response = _detail(
            503,
            f"Busy: request bodies being read hold {full.held} of {full.limit} bytes{waiting} and this one "
            f"needs {size}; retry shortly",
        )
        response.headers["Retry-After"] = "1"
        response.force_close()  # its body is never read
        return response

    return bound_bodies_together


def _content_encoding(request: web.Request) -> str:
    return request.headers.get("Content-Encoding", "").strip().lower()


def _is_compressed(request: web.Request) -> bool:
    return _content_encoding(request) not in ("", "identity")


@web.middleware
async def _close_if_body_unread(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body left unread (a GET's, a 404's) is drained after the answer, and the connection dropped when it cannot
    be (gzip that is not): the answer says so, or the client's next request on that connection was reset."""
    response = await handler(request)
    if request.can_read_body:
        response.force_close()
    return response


@web.middleware
async def _fastapi_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RefusedJson as exc:
        return _detail(400, str(exc))
    except (BodyTooLarge, UnreadableBody) as exc:
        response = _detail(exc.status, exc.detail)
        response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _detail(exc.status, exc.reason)
    except sqlite3.Error as exc:
        log.error("storage_failed" if is_storage_fault(exc) else "database_failed", method=request.method,
                  path=request.path, error=str(exc), code=exc.sqlite_errorname)
        return _database_failure(exc)
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        return _detail(500, "Internal server error")


@dataclass(frozen=True)
class TestHooks:
    """Fault injection and the report log, for tests only: never part of the server `python -m queue_manager`
    runs (the log keeps every report body in memory for good)."""

    faults: FaultInjector
    reports: ReportLog


def build_app(
    api: QueueApi,
    *,
    token: str | None,
    clock: Callable[[], float],
    worker_token: str | None = None,
    participants: ParticipantsFile | None = None,
    test_hooks: TestHooks | None = None,
    waiting: WaitingConnections | None = None,
) -> web.Application:
    middlewares = [waiting.middleware] if waiting is not None else []
    middlewares.append(_send_large_answers)
    refusals = RefusalLog()
    middlewares += [refusals.middleware, _auth_middleware(token, worker_token, participants)]
    if test_hooks is not None:
        middlewares += [_report_middleware(test_hooks.reports, clock), _fault_middleware(test_hooks.faults)]
    bodies_full_log = LogThrottle(
        REFUSAL_LOG_EVERY_S, report_held_back=held_back_logger(log, "warning", "request_body_budget_full_held_back")
    )
    bounded_bodies = _body_budget_middleware(BodyBudget(), ArrivingBudget(), bodies_full_log)
    app = web.Application(
        client_max_size=MAX_REQUEST_BYTES,
        middlewares=[*middlewares, _close_if_body_unread, _fastapi_errors, bounded_bodies],
    )

    async def flush_logs(_app: web.Application) -> None:  # at stop: a flood's last counts, not lost with the process
        refusals.flush()
        bodies_full_log.flush()
        api.flush_logs()

    app.on_cleanup.append(flush_logs)
    # No HEAD: a poll hands out a job, and a safe method (what monitors probe with) must not.
    app.router.add_get("/api/workers/next-job", api.next_job, name="next-job", allow_head=False)
    app.router.add_post("/api/workers/complete-job", api.complete_job, name="complete-job")
    app.router.add_post("/api/workers/fail-job", api.fail_job, name="fail-job")
    if api.extensions:
        app.router.add_post("/api/workers/heartbeat", api.heartbeat, name="heartbeat")
        app.router.add_post("/api/workers/release-job", api.release_job, name="release-job")
    app.router.add_get("/api/queue/status", api.queue_status, name="queue-status")
    app.router.add_get("/health", api.health, name="health")
    app.router.add_post("/api/jobs", api.submit_job, name="submit-job")
    app.router.add_get("/api/jobs", api.list_jobs, name="list-jobs")
    app.router.add_get("/api/jobs/{job_id}", api.get_job, name="get-job")
    app.router.add_delete("/api/jobs/{job_id}", api.cancel_job, name="cancel-job")
    if api.extensions:
        app.router.add_get("/api/jobs/{job_id}/outputs/{path:.+}", api.job_output, name="job-output")
    return app
