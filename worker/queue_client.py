"""HTTP client for the queue manager (see docs/queue-manager-api.md): poll, report, resubmit.

Transport retries live here and nowhere else: reports are retried on connection errors, 408, 429 and 5xx
within a time budget; a 404 means the job is gone and is never retried.
"""

from __future__ import annotations

from typing import Any

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

log = structlog.get_logger()

MAX_ERROR_CHARS = 10_000  # the manager refuses longer fail-job messages with 422
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class PollError(Exception):
    """The poll failed (connection, 5xx, not JSON, wrong shape); the caller backs off and polls again."""


class JobGone(Exception):
    """The manager answered 404 for this job: it no longer exists there (reaped or deleted)."""


class ReportRejected(Exception):
    """The manager refused the report's shape (4xx other than 404/408/429): retrying cannot help."""


class TransientHTTPError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientHTTPError | httpx.TransportError)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s, verify=True)
        self.worker_id = worker_id
        self.report_budget_s = report_budget_s
        self._retry_wait = wait_exponential_jitter(multiplier=retry_initial_s, max=retry_max_s, jitter=retry_initial_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def next_job(self) -> dict[str, Any] | None:
        """Pop the next job for this worker, or None when nothing is pending."""
        try:
            response = await self._http.get("/api/workers/next-job", params={"worker_id": self.worker_id})
        except httpx.HTTPError as exc:
            raise PollError(f"queue manager unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise PollError(f"queue manager answered HTTP {response.status_code}: {_short(response.text)}")
        try:
            payload = response.json()
        except ValueError as exc:
            raise PollError(f"queue manager answered non-JSON: {_short(response.text)!r}") from exc
        if not isinstance(payload, dict) or "job" not in payload:
            raise PollError(f"queue manager reply has no 'job' key: {_short(response.text)!r}")
        return payload["job"]

    async def complete_job(self, job_id: str, result: dict[str, Any], *, budget_s: float | None = None) -> None:
        await self._report("complete-job", job_id, {"result": result}, budget_s)

    async def fail_job(self, job_id: str, error: str, *, budget_s: float | None = None) -> None:
        message = error.strip() or "unknown error"
        if len(message) > MAX_ERROR_CHARS:
            message = message[: MAX_ERROR_CHARS - 1] + "…"
        await self._report("fail-job", job_id, {"error": message}, budget_s)

    async def submit_job(
        self, user_id: str, workflow: dict[str, Any], metadata: dict[str, Any], *, budget_s: float = 5.0
    ) -> str:
        """Create a new job through the public user endpoint (used to requeue work on shutdown)."""
        body = {"user_id": user_id, "workflow": workflow, "metadata": metadata}
        response = await self._post_with_retries("/api/jobs", None, body, budget_s)
        if response.status_code != 201:
            raise ReportRejected(f"POST /api/jobs answered HTTP {response.status_code}: {_short(response.text)}")
        return str(response.json()["id"])

    async def _report(self, endpoint: str, job_id: str, body: dict[str, Any], budget_s: float | None) -> None:
        budget = self.report_budget_s if budget_s is None else budget_s
        response = await self._post_with_retries(f"/api/workers/{endpoint}", {"job_id": job_id}, body, budget)
        if response.status_code == 404:
            raise JobGone(f"{endpoint} for job {job_id}: the queue manager no longer knows this job (404)")
        if response.status_code != 200:
            raise ReportRejected(f"{endpoint} for job {job_id} refused with HTTP {response.status_code}: "
                                 f"{_short(response.text)}")

    async def _post_with_retries(
        self, path: str, params: dict[str, str] | None, body: dict[str, Any], budget_s: float
    ) -> httpx.Response:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_is_transient),
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
                response = await self._http.post(path, params=params, json=body)
                if response.status_code in RETRYABLE_STATUS:
                    raise TransientHTTPError(response.status_code, response.text)
                return response
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover
