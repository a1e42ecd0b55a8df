"""What the providers' HTTP clients share: Retry-After, ISO timestamps, and retrying transient failures."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

log = structlog.get_logger()


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (delta-seconds or an HTTP date), or None when absent or unreadable."""
    header = response.headers.get("Retry-After")
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def parse_timestamp(value: Any) -> datetime | None:
    """ISO-8601 timestamp, always with a time zone; None when absent or malformed.

    One without an offset is UTC: the providers do not document the offset, and read as local time it would
    move every replica's start (and so its billing boundaries) by the scaler host's UTC offset.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class TransientRetry:
    """Retries what ``is_retryable`` accepts, with jittered exponential backoff capped at ``backoff_max_s``.

    An error carrying ``retry_after_s`` (the provider asked for a wait) waits that long instead, within the cap, and
    at least the back-off.
    Each retry is logged as ``event`` with the attempt, the wait and ``describe(error)``.
    """

    def __init__(
        self,
        *,
        is_retryable: Callable[[BaseException], bool],
        describe: Callable[[BaseException], str],
        event: str,
        max_attempts: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._is_retryable = is_retryable
        self._describe = describe
        self._event = event
        self._max_attempts = max_attempts
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_initial_s, max=backoff_max_s, jitter=backoff_initial_s
        )
        self._backoff_max_s = backoff_max_s
        self._sleep = sleep

    def attempts(self) -> AsyncRetrying:
        """`async for attempt in retry.attempts(): with attempt: ...`; the last error is re-raised."""
        return AsyncRetrying(
            retry=retry_if_exception(self._is_retryable),
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait_s,
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )

    def _wait_s(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = getattr(exc, "retry_after_s", None)
        backoff = self._backoff(state)
        if asked is not None:
            # Never less than our own back-off: a 429 with Retry-After 0, -5, NaN or a date gone by made five
            # requests back to back to an API that had just said it was overloaded.
            return min(max(asked, backoff), self._backoff_max_s)
        return backoff

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            self._event,
            attempt=state.attempt_number,
            wait_s=round(state.upcoming_sleep, 3),
            error=self._describe(exc) if exc is not None else "",
        )
