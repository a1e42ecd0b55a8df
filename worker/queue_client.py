"""HTTP client for the queue manager (see docs/queue-manager-api.md): poll, report, hand back, heartbeat.

Transport retries live here and nowhere else: reports are retried on connection errors, 408, 429 and 5xx
within a time budget; a 404 means the job is gone and a 409 that it is no longer this worker's: neither is
retried. A resubmitted copy (POST /api/jobs, which creates a job each time) is sent again only when it surely did
not land. The extensions of the embedded queue manager (attempt fencing, heartbeats, release-job) are used
when the job carries an attempt; comfy-multi's manager answers an unknown route with 404 "Not Found".
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from common.handbacks import HandBackCause
from common.http_answers import AnswerTooLarge, request_bounded
from common.logs import scrub, scrubbed_excerpt
from common.urls import direct_transport, queue_refusal_cause, redact_url
from worker.jobs import UnreportableJob, job_id_of, unreadable_job

log = structlog.get_logger()

MAX_ERROR_CHARS = 10_000  # the manager refuses longer fail-job messages with 422
MAX_REASON_CHARS = 2_000  # release-job's limit (contract item 4)
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
JSON = {"Content-Type": "application/json"}
# The most of one answer from the queue manager the worker reads. The largest it sends is a job: next-job's
# carries the workflow (<= 10 MiB) and metadata (<= 1 MiB), GET /api/jobs/{id} a completed one's result
# (<= 50 MiB; the embedded manager's limits, as both managers measure them: escaped JSON characters, never
# fewer than the bytes sent). More is a broken or wrong peer, not a job: the read is given up.
MAX_QUEUE_ANSWER_BYTES = 64 << 20
# Tries one poll id gets before the next poll takes a new one. A path that loses every answer carrying one job (a
# proxy refusing a large workflow with 502, say) kept the worker replaying that job, lease renewed each time and
# no other job taken, until --job-timeout (1 h). Five tries span about 30 s at the worker's backoff (2, 4, 8, 16 s),
# inside the lease: after them the job is left to the lease, as before poll ids.
MAX_TRIES_PER_POLL = 5
# Tries that never reached the queue manager are not counted: it was down (restarting) longer than five tries (30 s at
# the default backoff, 1.5 s at a 0.05 s poll interval), the next poll took a new id, and the job whose answer its
# kill lost waited for its lease, counted a fault.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str, only ever a lone one: JSON pairs decode to one character


class PollError(Exception):
    """The poll failed (connection, 5xx, not JSON, wrong shape, too large); the caller backs off and polls
    again."""


class CredentialsRefused(PollError):
    """401 or 403: the queue manager does not take QUEUE_MANAGER_TOKEN (wrong or unset, or the participants' token
    where a worker token is set); waiting cannot fix it."""


class JobGone(Exception):
    """The manager answered 404 for this job: it no longer exists there (reaped or deleted)."""


class NotMine(Exception):
    """409: the job is no longer running under this worker and attempt (handed back, ended, retried elsewhere)."""


class RouteUnknown(Exception):
    """The manager has no such route (comfy-multi's has none of the extensions): 404 "Not Found" or 405."""


class ReportRejected(Exception):
    """The manager refused the report's shape (4xx other than 404/408/429), or answered more than
    MAX_QUEUE_ANSWER_BYTES: retrying cannot help."""


class SubmissionUnconfirmed(Exception):
    """POST /api/jobs may have created the copy, but its answer did not say which (lost, or not the manager's).
    ``created``: it answered 201, so the copy exists."""

    def __init__(self, message: str, *, created: bool) -> None:
        super().__init__(message)
        self.created = created


class TransientHTTPError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {scrubbed_excerpt(body, 200)}")
        self.status = status


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientHTTPError | httpx.TransportError)


def _surely_not_sent(exc: BaseException) -> bool:
    """A failure after which a create surely did not land: no connection, or the manager (or a proxy with no manager
    behind it) declined to read it (408), queue it (429) or take it at all (503). Any other may come after the job
    was created (a proxy's 502 or 504, a read timeout)."""
    if isinstance(exc, TransientHTTPError):
        return exc.status in (408, 429, 503)
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _is_unknown_route(response: httpx.Response) -> bool:
    if response.status_code == 405:
        return True
    return response.status_code == 404 and _json_or_none(response) == {"detail": "Not Found"}


# comfy-multi sends {"job": {"id": …, "workflow": …}}: the id comes first, readable when what follows is not.
_LEADING_JOB_ID = re.compile(r'\s*\{\s*"job"\s*:\s*\{\s*"id"\s*:\s*("(?:[^"\\]|\\.){1,200}")')


def _too_deep_to_read(text: str) -> dict[str, Any]:
    """A job nested past Python's recursion limit (~1000 levels; the embedded queue manager refuses 64, comfy-multi
    lets it through): the job to fail when its id comes first; else a failed poll, and the job waits for
    comfy-multi's job timeout."""
    head = _LEADING_JOB_ID.match(text)
    if head is None:
        raise PollError(f"queue manager answered JSON nested too deeply to read: {_short(text)!r}")
    problem = f"job JSON nests deeper than the worker can read (~{sys.getrecursionlimit()} levels; a workflow: ~5)"
    return unreadable_job(json.loads(head.group(1)), problem)


def _json_or_none(response: httpx.Response) -> Any:
    """The answer's JSON, or None when it has none the worker can read (a proxy's page, nesting too deep)."""
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None


def _short(text: str, limit: int = 200) -> str:
    """``text`` scrubbed, its white space folded, cut to ``limit``: only the words the quote needs are folded.
    Scrubbed before the cut: a token a peer echoed across it kept its first characters in the log."""
    end, length = len(text), -1
    for word in re.finditer(r"\S+", text):
        length += 1 + len(word[0])
        if length > limit:
            end = word.end()
            break
    folded = " ".join(scrubbed_excerpt(text, end).split())
    return folded if len(folded) <= limit else folded[: limit - 1] + "…"


class QueueClient:
    def __init__(
        self,
        base_url: str,
        worker_id: str,
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        report_budget_s: float = 120.0,
        retry_initial_s: float = 0.25,
        retry_max_s: float = 10.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=timeout_s, verify=True, transport=direct_transport(base_url)
        )
        self._has_token = bool(token)
        self._timeout_s = timeout_s
        self.worker_id = worker_id
        # The id of the poll in progress: the same on each try until one is answered (contract, extension 10).
        self._poll_id: str | None = None
        self._poll_tries = 0
        self.report_budget_s = report_budget_s
        self._retry_wait = wait_exponential_jitter(multiplier=retry_initial_s, max=retry_max_s, jitter=retry_initial_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def next_job(self) -> dict[str, Any] | None:
        """Pop the next job for this worker, or None when nothing is pending.

        Each poll carries a `poll_id`, the same on every try while no answer came back (a connection error, a
        cut-off answer, 408/429/5xx), for at most MAX_TRIES_PER_POLL tries that reached the queue manager: it
        answers a retry with the job a lost answer carried, which would otherwise sit `running` until its lease
        handed it back as a fault. comfy-multi ignores it."""
        if self._poll_id is None or self._poll_tries >= MAX_TRIES_PER_POLL:
            self._poll_id, self._poll_tries = str(uuid.uuid4()), 0
        self._poll_tries += 1
        return await self._poll({"worker_id": self.worker_id, "poll_id": self._poll_id})

    async def _poll(self, params: dict[str, str]) -> dict[str, Any] | None:
        try:
            response = await self._request("GET", "/api/workers/next-job", params=params)
        except httpx.HTTPError as exc:
            if isinstance(exc, NOT_SENT):  # a queue manager down (restarting) cannot have lost an answer
                self._poll_tries -= 1
            raise PollError(f"queue manager unreachable: {type(exc).__name__}: {exc}") from exc
        except AnswerTooLarge as exc:
            self._poll_id = None  # answered: a retry of this poll would get the same answer again
            raise PollError(f"{exc} (MAX_QUEUE_ANSWER_BYTES)") from None
        if response.status_code in (200, 409, 422):
            # Answered (a job, none, or this poll id refused): the next poll is a new one. Even a 200 this worker
            # cannot read: its retry would get it again, renewing the job's lease each time, for ever.
            self._poll_id = None
        cause = queue_refusal_cause(response.status_code, self._has_token, worker_route=True)
        if response.status_code in (401, 403):
            raise CredentialsRefused(
                f"queue manager refused this worker's credentials (HTTP {response.status_code}: "
                f"{_short(response.text)}): {cause}"
            )
        if response.status_code == 404:
            raise PollError(
                f"queue manager answered HTTP 404 to GET {redact_url(str(response.url.copy_with(query=None)))}: "
                f"{_short(response.text)}: {cause}"
            )
        if response.status_code != 200:
            raise PollError(f"queue manager answered HTTP {response.status_code}: {_short(response.text)}")
        try:
            payload = response.json()
        except RecursionError:
            return _too_deep_to_read(response.text)
        except ValueError as exc:
            raise PollError(f"queue manager answered non-JSON: {_short(response.text)!r}") from exc
        if not isinstance(payload, dict) or "job" not in payload:
            raise PollError(f"queue manager reply has no 'job' key: {_short(response.text)!r}")
        job = payload["job"]
        if job is not None:
            try:
                job_id_of(job)
            except UnreportableJob as exc:  # a failed poll, backed off: taken as a job, the next poll came at once
                log.error("Received a job that cannot be reported back; skipping it", error=str(exc))
                raise PollError(f"queue manager answered a job that cannot be reported back: {exc}") from None
        return job

    def _fence(self, attempt: int | None) -> dict[str, str]:
        """Contract item 2: who may still report this job. Without an attempt (comfy-multi) nothing is sent."""
        return {} if attempt is None else {"worker_id": self.worker_id, "attempt": str(attempt)}

    async def complete_job(self, job_id: str, result: dict[str, Any], *, attempt: int | None = None) -> None:
        await self._report("complete-job", job_id, {"result": result}, attempt)

    async def fail_job(self, job_id: str, error: str, *, attempt: int | None = None) -> None:
        await self._report("fail-job", job_id, {"error": stored_error(error)}, attempt)

    async def release_job(
        self, job_id: str, reason: str, *, attempt: int | None, cause: HandBackCause
    ) -> dict[str, Any]:
        """Hand the job back (contract item 4): {"status": "pending"|"failed", "job_id", "attempt"}.

        RouteUnknown when the manager cannot (comfy-multi); NotMine on 409; JobGone on 404 "Job not found"."""
        params = {"job_id": job_id, **self._fence(attempt)}
        body = {"reason": _clip(reason, MAX_REASON_CHARS), "cause": cause.value}
        response = await self._post_with_retries("/api/workers/release-job", params, body, self.report_budget_s)
        self._raise_for_job_answer("release-job", job_id, response)
        answer = _json_or_none(response)
        if not isinstance(answer, dict):
            raise ReportRejected(f"release-job for job {job_id} answered HTTP 200 with no JSON object: the queue "
                                 "manager's answer did not reach the worker")
        return answer

    async def heartbeat(self, job_id: str, attempt: int, *, deadline_s: float | None = None) -> None:
        """One lease heartbeat (contract item 3), not retried: the next one follows soon. ``deadline_s``: give up
        (httpx.ReadTimeout) after that long, so a stalled one does not hold back the next."""
        params = {"job_id": job_id, **self._fence(attempt)}
        response = await self._checked("POST", "/api/workers/heartbeat", params=params, deadline_s=deadline_s)
        if response.status_code in RETRYABLE_STATUS:
            raise TransientHTTPError(response.status_code, response.text)
        self._raise_for_job_answer("heartbeat", job_id, response)

    async def _job(self, job_id: str) -> dict[str, Any] | None:
        """GET /api/jobs/{id}: the job, or None when the manager no longer knows it."""
        # Quoted: the id of a job refused as unsafe is looked up too, and its "#", "?" or "/" would name another one.
        response = await self._checked("GET", f"/api/jobs/{quote(job_id, safe='')}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ReportRejected(f"GET /api/jobs/{job_id} answered HTTP {response.status_code}")
        job = _json_or_none(response)
        return job if isinstance(job, dict) else None

    async def job_priority(self, job_id: str) -> int | None:
        """The job's priority, or None when the manager does not say."""
        priority = (await self._job(job_id) or {}).get("priority")
        return priority if isinstance(priority, int) and not isinstance(priority, bool) else None

    async def job_result_is(self, job_id: str, prompt_id: str | None) -> bool | None:
        """Whether the job ended completed with the result of this prompt (an earlier try of a report whose
        answer was lost); None when the manager cannot say (the job no longer exists: False)."""
        job = await self._job(job_id)
        if job is None:
            return False
        if job.get("status") != "completed":
            return False if job.get("status") in ("pending", "running", "failed", "cancelled") else None
        result = job.get("result")
        return isinstance(result, dict) and result.get("prompt_id") == prompt_id

    async def job_failed_with(self, job_id: str, error: str) -> bool:
        """Whether the job ended failed with this error: an earlier try of this fail-job landed, its answer lost."""
        job = await self._job(job_id) or {}
        return job.get("status") == "failed" and job.get("error") == stored_error(error)

    async def handed_back_by(self, job_id: str, attempt: int, reason: str, cause: HandBackCause) -> str | None:
        """"handed_back" ("failed" when that gave the job up) if this worker's hand back of that attempt is in the
        job's history: an earlier try of the release-job landed, its answer lost. None when it is not there."""
        job = await self._job(job_id) or {}
        history = job.get("history")
        mine = {"attempt": attempt, "worker_id": self.worker_id, "reason": _clip(reason, MAX_REASON_CHARS),
                "cause": cause.value}
        ours = [isinstance(entry, dict) and all(entry.get(k) == v for k, v in mine.items())
                for entry in (history if isinstance(history, list) else [])]
        if not any(ours):
            return None
        return "failed" if ours[-1] and job.get("status") == "failed" else "handed_back"

    async def submit_job(
        self, user_id: str, workflow: dict[str, Any], metadata: dict[str, Any], *, priority: int | None = None
    ) -> str:
        """Create a new job through the public user endpoint (the hand-back fallback for comfy-multi): its id.
        SubmissionUnconfirmed when the manager created it (201) but its answer names no job."""
        body: dict[str, Any] = {"user_id": user_id, "workflow": workflow, "metadata": metadata}
        if priority is not None:
            body["priority"] = priority
        try:
            response = await self._post_with_retries("/api/jobs", None, body, self.report_budget_s, _surely_not_sent)
        except (TransientHTTPError, httpx.TransportError) as exc:
            if _surely_not_sent(exc):
                raise
            raise SubmissionUnconfirmed(
                f"resubmitting it may not have worked: its answer was lost ({type(exc).__name__}: {exc}): look among "
                "your jobs for a copy before submitting it again", created=False
            ) from None
        if response.status_code != 201:
            raise ReportRejected(f"POST /api/jobs answered HTTP {response.status_code}: {_short(response.text)}")
        answer = _json_or_none(response)
        new_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(new_id, str) or not new_id.strip():
            raise SubmissionUnconfirmed(
                f"resubmitted, but the queue manager's answer (HTTP 201) named no copy: {_short(response.text)!r}",
                created=True,
            )
        return new_id

    async def _report(self, endpoint: str, job_id: str, body: dict[str, Any], attempt: int | None) -> None:
        params = {"job_id": job_id, **self._fence(attempt)}
        response = await self._post_with_retries(f"/api/workers/{endpoint}", params, body, self.report_budget_s)
        self._raise_for_job_answer(endpoint, job_id, response)

    async def _request(
        self, method: str, path: str, *, deadline_s: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """The answer, read at most to MAX_QUEUE_ANSWER_BYTES (AnswerTooLarge past it, logged naming the limit), and
        whole within ``deadline_s`` (HTTP_TIMEOUT_S unless said; httpx.ReadTimeout past it). The whole exchange, not
        each read (httpx's timeout): a peer dripping bytes held a poll, or a report past its REPORT_RETRY_BUDGET_S,
        for as long as the drip went on."""
        return await request_bounded(
            self._http, method, path, peer="queue manager", limit_bytes=MAX_QUEUE_ANSWER_BYTES,
            deadline_s=self._timeout_s if deadline_s is None else deadline_s, **kwargs,
        )

    async def _checked(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """_request for a report, heartbeat or job look-up: an answer over the limit is a refused call."""
        try:
            return await self._request(method, path, **kwargs)
        except AnswerTooLarge as exc:
            raise ReportRejected(f"{exc} (MAX_QUEUE_ANSWER_BYTES)") from None

    @staticmethod
    def _raise_for_job_answer(endpoint: str, job_id: str, response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        if _is_unknown_route(response):
            raise RouteUnknown(f"the queue manager has no {endpoint} route (HTTP {response.status_code})")
        if response.status_code == 404:
            raise JobGone(f"{endpoint} for job {job_id}: the queue manager no longer knows this job (404)")
        if response.status_code == 409:
            raise NotMine(f"{endpoint} for job {job_id} refused with 409: {_short(response.text)}")
        raise ReportRejected(
            f"{endpoint} for job {job_id} refused with HTTP {response.status_code}: {_short(response.text)}"
        )

    async def _post_with_retries(
        self, path: str, params: dict[str, str] | None, body: dict[str, Any], budget_s: float,
        retryable: Callable[[BaseException], bool] = _is_transient,
    ) -> httpx.Response:
        given_up_at = time.monotonic() + budget_s
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_delay(budget_s),
            wait=self._retry_wait,
            reraise=True,
            before_sleep=lambda state: log.warning(
                "Queue manager call failed, retrying",
                path=path,
                attempt=state.attempt_number,
                error=str(state.outcome.exception()) if state.outcome else None,
            ),
        ):
            with attempt:
                # A try's whole exchange gets what is left of the budget (HTTP_TIMEOUT_S at least): a large workflow
                # resubmitted over a slow uplink still goes, and an answer dripped is given up with the budget.
                deadline_s = max(self._timeout_s, round(given_up_at - time.monotonic(), 1))
                response = await self._checked(
                    "POST", path, params=params, content=_json_body(body), headers=JSON, deadline_s=deadline_s
                )
                if response.status_code in RETRYABLE_STATUS:
                    raise TransientHTTPError(response.status_code, response.text)
                return response
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


def _json_body(body: dict[str, Any]) -> bytes:
    """UTF-8 JSON, whatever ComfyUI put in the strings: a lone surrogate (an undecodable byte of a file name in
    an error message, say) becomes U+FFFD instead of an exception here or a refusal there (strict JSON)."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def stored_error(error: str) -> str:
    """A failure message as the manager stores it: what its log line says too (a node's exception message, or
    ComfyUI's list of invalid nodes, may run to 32 MiB)."""
    return _clip(error, MAX_ERROR_CHARS, "unknown error")


def stored_reason(reason: str) -> str:
    """A hand-back reason as the manager stores it: what its log line says too (it may carry a node's exception
    message, up to 32 MiB)."""
    return _clip(reason, MAX_REASON_CHARS)


def _clip(text: str, limit: int, empty: str = "unknown reason") -> str:
    """A failure message or hand-back reason as the queue manager stores it, and shows whoever submitted the job:
    scrubbed (no log scrubber sees it; some carry an exception's text as is), then cut to the manager's limit."""
    text = scrub(text).strip() or empty
    return text if len(text) <= limit else text[: limit - 1] + "…"
