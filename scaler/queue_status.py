"""Client for the queue manager's GET /api/queue/status: the scaler's view of demand.

Transport retries live here (a couple of quick ones within a tick); anything still failing is raised as
QueueStatusError and the loop turns it into a held decision, never into a scale-down.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from common.http_answers import API_ANSWER_BYTES, AnswerTooLarge, request_bounded
from common.logs import error_text, scrubbed_excerpt
from common.timespans import DAY_S, WEEK_S
from common.urls import direct_transport, queue_refusal_cause, redact_url

log = structlog.get_logger()

STATUS_PATH = "/api/queue/status"
HEALTH_PATH = "/health"
# What GET /health says when the manager can serve (ours and comfy-multi's, docs/queue-manager-api.md); ours says
# "unhealthy" when its database cannot be written (a full or read-only disk) while its reads still answer.
HEALTHY_STATUSES = frozenset({"healthy"})
JOBS_PATH = "/api/jobs"
RECENT_COMPLETIONS = 50
# Our queue manager lists the latest completions first when asked; a manager that ignores ``order`` answers
# in its own order, and the most recent by completed_at among what it sends are kept.
NEWEST_FIRST = {"order": "newest"}
TIMINGS_LIMIT = 200
# More jobs than any queue we serve holds (500-image batches): a larger count is a broken answer, and the
# planning walks every queued job (1e6 took 3.5 s a tick, 1e7 35 s), so it is refused, not believed.
MAX_PLAUSIBLE_COUNT = 1_000_000
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A job's timestamps are believed within this window around the scaler's clock (the manager keeps finished jobs
# 7 days by default; a few minutes ahead is clock skew). Outside it they are a broken clock or a broken answer:
# jobs that "ran" 10 years or "finished" in 3 years made the median job 3e8 s long and gave every job a replica.
OLDEST_JOB_S = WEEK_S
CLOCK_SKEW_S = 300.0


class QueueStatusError(Exception):
    """The queue status could not be read (connection, HTTP error, not JSON, wrong shape)."""


class _Retryable(QueueStatusError):
    pass


@dataclass(frozen=True, slots=True)
class QueueStatus:
    pending_jobs: int
    running_jobs: int
    completed_jobs: int = 0
    failed_jobs: int = 0
    mode: str = "fifo"
    # Job timings for wait-target planning (seconds); empty when the job lists could not be read.
    pending_ages_s: tuple[float, ...] = ()
    running_elapsed_s: tuple[float, ...] = ()
    running_waited_s: tuple[float, ...] = ()  # how long each running job waited before it started, same order
    recent_durations_s: tuple[float, ...] = ()
    recent_waits_s: tuple[float, ...] = ()

    @classmethod
    def from_json(cls, body: Any) -> QueueStatus:
        if not isinstance(body, dict):
            raise QueueStatusError(f"queue status is not an object: {scrubbed_excerpt(str(body), 200)}")
        try:
            counts = {name: _count(body, name) for name in ("pending_jobs", "running_jobs")}
            extra = {name: _count(body, name) for name in ("completed_jobs", "failed_jobs") if name in body}
        except (TypeError, ValueError) as exc:
            raise QueueStatusError(f"queue status has a bad count: {exc}") from None
        return cls(**counts, **extra, mode=str(body.get("mode", "fifo")))


def _count(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}={value!r}")
    if value > MAX_PLAUSIBLE_COUNT:
        raise ValueError(f"{name}={str(value)[:30]}: more than {MAX_PLAUSIBLE_COUNT} is not a plausible count")
    return value


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Retryable | httpx.TransportError)


class QueueStatusReader:
    """`await reader.read()` → QueueStatus. Use as `async with QueueStatusReader(url) as reader`."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 2.0,
        answer_limit_bytes: int = API_ANSWER_BYTES,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._has_token = bool(token)
        self._answer_limit_bytes = answer_limit_bytes
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=direct_transport(base_url)
        )
        self._attempts = attempts
        self._wait = wait_exponential_jitter(multiplier=retry_initial_s, max=retry_max_s, jitter=retry_initial_s)

    def __repr__(self) -> str:
        return f"QueueStatusReader(base_url={redact_url(str(self._http.base_url))!r})"

    async def __aenter__(self) -> QueueStatusReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def read(self) -> QueueStatus:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_retryable),
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._read_once()
        except httpx.HTTPError as exc:
            raise QueueStatusError(f"cannot reach the queue manager: {type(exc).__name__}: {exc}") from None
        except AnswerTooLarge as exc:
            raise QueueStatusError(str(exc)) from None
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def read_with_timings(self, now: float, lists_by: float | None = None) -> QueueStatus:
        """The status plus job ages, run times so far and recent durations from GET /api/jobs.

        The lists only sharpen the plan: when one cannot be read, or is not answered by ``lists_by`` (event-loop
        time), its timings are left empty (the policy then assumes just-submitted, half-done and default-length
        jobs) and the status still counts.
        """
        status = await self.read()
        queries = {
            "pending": {"limit": TIMINGS_LIMIT},
            "running": {"limit": TIMINGS_LIMIT},
            "completed": {"limit": RECENT_COMPLETIONS, **NEWEST_FIRST},
        }
        stamp = _Stamps(now)
        times = await asyncio.gather(*(self._job_times(state, query, lists_by, stamp)
                                       for state, query in queries.items()))
        return replace(status, **_timings(dict(zip(queries, times, strict=True)), stamp))

    async def healthy(self) -> bool | None:
        """Whether GET /health says the manager can serve: True for a 200 naming a status in HEALTHY_STATUSES, False
        for any other status named, None when no status can be read (no answer, not JSON, too large). Read once,
        never retried: the status read's errors already speak for a manager that does not answer."""
        try:
            response = await self._get(HEALTH_PATH)
            body = response.json()
        except (httpx.HTTPError, ValueError, RecursionError, AnswerTooLarge):
            return None
        status = body.get("status") if isinstance(body, dict) else None
        if not isinstance(status, str):
            return None
        return response.status_code == 200 and status in HEALTHY_STATUSES

    async def _job_times(self, state: str, query: dict[str, Any], by: float | None, stamp: _Stamps) -> list[JobTimes]:
        """The listed jobs' times, read from the list as soon as it is parsed: three lists held parsed at once (4 MiB
        of `{}` each) took the scaler from 59 to 394 MiB."""
        try:
            async with asyncio.timeout_at(by):
                response = await self._get(JOBS_PATH, params={"status": state, **query})
            if response.is_error:
                problem = f"HTTP {response.status_code}: {scrubbed_excerpt(response.text, 100)}"
            else:
                body = response.json()
                if isinstance(body, list):
                    return _times(body, stamp)
                problem = f"not a list: {scrubbed_excerpt(str(body), 100)}"
        except (httpx.HTTPError, ValueError, RecursionError, AnswerTooLarge) as exc:
            problem = error_text(exc, 200)
        except TimeoutError:
            problem = "no answer within the time the tick leaves the job lists"
        log.warning("queue_job_list_unreadable", peer="queue manager", list=f"GET {JOBS_PATH}?status={state}",
                    error=problem, hint="the counts stand; the plan goes without these jobs' timings (missing "
                    "durations: the median of what is known, else SCALER_DEFAULT_JOB_DURATION_S)")
        return []

    async def _get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await request_bounded(
            self._http, "GET", path, peer="queue manager", limit_bytes=self._answer_limit_bytes, **kwargs
        )

    async def _read_once(self) -> QueueStatus:
        response = await self._get(STATUS_PATH)
        if response.status_code in RETRYABLE_STATUS:
            raise _Retryable(f"queue status answered HTTP {response.status_code}")
        if response.is_redirect:  # not followed: it could carry the token to another host
            where = redact_url(str(response.url.join(response.headers["location"])).removesuffix(STATUS_PATH))
            raise QueueStatusError(f"queue status answered HTTP {response.status_code} redirect to "
                                   f"{scrubbed_excerpt(where, 200)} — set QUEUE_MANAGER_URL to it")
        if response.is_error:
            raise QueueStatusError(
                f"queue status answered HTTP {response.status_code}: {scrubbed_excerpt(response.text, 200)}"
                + _what_to_check(response.status_code, self._has_token, redact_url(str(response.url)))
            )
        try:
            body = response.json()
        except ValueError:
            raise QueueStatusError(f"queue status is not JSON: {scrubbed_excerpt(response.text, 200)}") from None
        except RecursionError:
            raise QueueStatusError("queue status is JSON nested deeper than the parser reads: not a status") from None
        return QueueStatus.from_json(body)


def _what_to_check(status: int, has_token: bool, url: str) -> str:
    """The setting behind the usual refusals, as the worker names it for its polls (docs/scaler.md)."""
    cause = queue_refusal_cause(status, has_token)
    if cause is None:
        return ""
    return f" (GET {url}): {cause}" if status == 404 else f": {cause}"


# A job's (created_at, started_at, completed_at), each None when missing or not believed.
JobTimes = tuple[float | None, float | None, float | None]


def job_timings(lists: dict[str, list[Any]], now: float) -> dict[str, tuple[float, ...]]:
    """Ages of pending jobs, elapsed run of running ones (and how long they had waited), durations of the most
    recent completions, and how long the jobs that started last (running or completed) had waited."""
    stamp = _Stamps(now)
    return _timings({state: _times(jobs, stamp) for state, jobs in lists.items()}, stamp)


def _times(jobs: list[Any], stamp: _Stamps) -> list[JobTimes]:
    """The jobs' times, without the jobs that have none to count."""
    times = ((stamp(job, "created_at"), stamp(job, "started_at"), stamp(job, "completed_at")) for job in jobs)
    return [job for job in times if job != (None, None, None)]


def _timings(lists: dict[str, list[JobTimes]], stamp: _Stamps) -> dict[str, tuple[float, ...]]:
    now = stamp.now
    ages = tuple(max(0.0, now - created) for created, _, _ in lists.get("pending", ()) if created is not None)
    elapsed, waited = [], []
    for created, began, _ in lists.get("running", ()):
        if began is not None:
            elapsed.append(max(0.0, now - began))
            waited.append(max(0.0, began - created) if created is not None else 0.0)
    done = []
    for _, started, completed in lists.get("completed", ()):
        if started is not None and completed is not None and completed >= started:
            done.append((completed, completed - started))
    recent = tuple(duration for _, duration in sorted(done)[-RECENT_COMPLETIONS:])
    started = []
    for created, began, _ in (*lists.get("running", ()), *lists.get("completed", ())):
        if created is not None and began is not None and began >= created:
            started.append((began, began - created))
    waits = tuple(wait for _, wait in sorted(started)[-RECENT_COMPLETIONS:])
    if stamp.implausible:
        log.warning("queue_job_times_implausible", peer="queue manager", skipped=stamp.implausible,
                    believed=f"from {OLDEST_JOB_S / DAY_S:g} days ago to {CLOCK_SKEW_S:g} s ahead of this host's clock",
                    hint="those jobs' timings are left out; check the queue manager's clock (and this host's)")
    return {"pending_ages_s": ages, "running_elapsed_s": tuple(elapsed), "running_waited_s": tuple(waited),
            "recent_durations_s": recent, "recent_waits_s": waits}


class _Stamps:
    """Reads a job's timestamp (``_stamp``), believing only one within the window around ``now``; counts the rest
    by field."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.implausible: dict[str, int] = {}

    def __call__(self, job: Any, name: str) -> float | None:
        moment = _stamp(job, name)
        if moment is not None and not self.now - OLDEST_JOB_S <= moment <= self.now + CLOCK_SKEW_S:
            self.implausible[name] = self.implausible.get(name, 0) + 1
            return None
        return moment


def _stamp(job: Any, name: str) -> float | None:
    """An ISO timestamp as epoch seconds; one without an offset is UTC (the manager writes utcnow())."""
    if not isinstance(job, dict) or not isinstance(job.get(name), str):
        return None
    try:
        moment = datetime.fromisoformat(job[name])
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
