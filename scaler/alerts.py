"""Budget and fleet alerts to a webhook: each kind once per UTC day, sent in the background.

Kinds: ``budget_50`` / ``budget_80`` / ``budget_100`` (share of the daily budget spent over the last 24 h,
the figure the cap reads), ``fallback_engaged`` and ``kill_switch``. The body is Slack-compatible
(``{"text": ...}``) or a generic JSON object (``SCALER_ALERT_FORMAT``). Sending never blocks scaling: ``raise_``
only queues (a bounded queue; when it is full the alert is dropped and logged), one background task posts with
tenacity retries. In a dry run nothing is posted; the body that would be sent is printed and logged.
Which kinds went out today is kept by the caller (the fleet saves it next to the cost ledger) so a restart
does not repeat them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TextIO

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from common.http_answers import AnswerTooLarge, read_at_most
from common.logs import error_text, scrubbed_excerpt
from common.timespans import DAY_S
from common.urls import direct_transport
from scaler.ledger import day_start

log = structlog.get_logger()

BUDGET_THRESHOLDS = (50, 80, 100)
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# A webhook answers a few bytes ("ok"); what is read of a larger answer stops here (its status still counts).
MAX_WEBHOOK_ANSWER_BYTES = 64 << 10
# The latest alerts delivered, kept in memory (``AlertSender.sent``): each kind goes out once a day for as long as
# the scaler runs, so all of them would grow for good.
SENT_KEPT = 100


class AlertFormat(StrEnum):
    SLACK = "slack"
    GENERIC = "generic"


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    text: str
    at: float
    fields: dict[str, Any] = field(default_factory=dict)

    def body(self, fmt: AlertFormat, source: str) -> dict[str, Any]:
        if fmt is AlertFormat.SLACK:
            return {"text": f"[{source}] {self.text}"}
        return {
            "source": source, "kind": self.kind, "text": self.text,
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(), "fields": self.fields,
        }


class WebhookError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class AlertBook:
    """Which kinds were raised on which UTC day: each kind goes out once per day."""

    day: float | None = None
    sent: set[str] = field(default_factory=set)

    def first_today(self, kind: str, now: float) -> bool:
        """A wall clock stepped back across one midnight is still on the day the book holds: what went out then (the
        same day, in truth) is not sent again. Further back (a clock that was days ahead), the book starts again."""
        today = day_start(now)
        if self.day is None or not self.day - DAY_S <= today <= self.day:
            self.day, self.sent = today, set()
        if kind in self.sent:
            return False
        self.sent.add(kind)
        return True

    def take_in(self, other: AlertBook) -> None:
        """Count as sent what ``other`` (another process's book) sent: on the same day, or on a later one."""
        if other.day is None or (self.day is not None and other.day < self.day):
            return
        if other.day != self.day:
            self.day, self.sent = other.day, set()
        self.sent |= other.sent

    def to_json(self) -> dict[str, Any]:
        return {"day": self.day, "sent": sorted(self.sent)}

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> AlertBook:
        if not raw:
            return cls()
        return cls(day=raw.get("day"), sent=set(raw.get("sent", ())))


def budget_alerts(spent_last_day: float, max_spend_per_day: float | None, now: float) -> list[Alert]:
    """The budget thresholds crossed by ``spent_last_day`` (highest last). A budget of 0 (no spending allowed) is
    crossed, all of them at once, by any spend."""
    if max_spend_per_day is None or spent_last_day <= 0:
        return []
    share = 100 * spent_last_day / max_spend_per_day if max_spend_per_day else math.inf
    shown = f"{share:.0f} %" if max_spend_per_day else "over 100 %"
    return [
        Alert(
            f"budget_{threshold}",
            f"{shown} of the daily budget spent: {spent_last_day:.2f} of {max_spend_per_day:.2f} "
            f"over the last 24 h" + (" — new replicas are no longer started" if threshold >= 100 else ""),
            now,
            {"threshold_percent": threshold, "spent_last_day": round(spent_last_day, 4),
             "max_spend_per_day": max_spend_per_day},
        )
        for threshold in BUDGET_THRESHOLDS
        if share >= threshold
    ]


class AlertSender:
    """``raise_`` queues an alert if its kind has not gone out today; ``start``/``aclose`` own the sender task."""

    def __init__(
        self,
        webhook_url: str | None,
        *,
        fmt: AlertFormat = AlertFormat.SLACK,
        source: str = "comfy-scaler",
        book: AlertBook | None = None,
        dry_run: bool = False,
        queue_size: int = 32,
        attempts: int = 5,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        timeout_s: float = 10.0,
        out: TextIO | None = None,
        on_book_change: Callable[[], None] | None = None,
    ) -> None:
        self.webhook_url = webhook_url
        self.fmt = AlertFormat(fmt)
        self.source = source
        self.book = book or AlertBook()
        self.dry_run = dry_run
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=queue_size)
        self._attempts = attempts
        self._wait = wait_exponential_jitter(multiplier=retry_initial_s, max=retry_max_s, jitter=retry_initial_s)
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=direct_transport(webhook_url or ""))
        self._task: asyncio.Task[None] | None = None
        self._out = out
        self._on_book_change = on_book_change
        self.sent: deque[Alert] = deque(maxlen=SENT_KEPT)
        self.dropped = 0

    def __repr__(self) -> str:
        return f"AlertSender(configured={self.webhook_url is not None}, fmt={self.fmt}, dry_run={self.dry_run})"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._send_forever(), name="alert-sender")

    def raise_(self, alert: Alert) -> bool:
        """Queue ``alert`` unless its kind already went out today; True when queued. Never waits."""
        if not self.book.first_today(alert.kind, alert.at):
            return False
        if self._on_book_change is not None:
            self._on_book_change()
        log.warning("alert_raised", kind=alert.kind, text=alert.text, **alert.fields)
        if self.webhook_url is None and not self.dry_run:
            return False
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("alert_dropped", kind=alert.kind, reason="queue full", queue_size=self._queue.maxsize)
            return False
        return True

    async def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued alert is sent or given up (for the CLI, which exits right after)."""
        self.start()
        try:
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._http.aclose()

    async def _send_forever(self) -> None:
        while True:
            alert = await self._queue.get()
            try:
                await self.send(alert)
            except Exception as exc:  # one undeliverable alert must not stop the next ones
                log.error("alert_not_delivered", kind=alert.kind, error=error_text(exc))
            finally:
                self._queue.task_done()

    async def send(self, alert: Alert) -> None:
        body = alert.body(self.fmt, self.source)
        if self.dry_run or self.webhook_url is None:
            print(f"alert (dry run, not sent): {json.dumps(body)}", file=self._out or sys.stdout)
            log.info("alert_dry_run", kind=alert.kind, body=body)
            return
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, httpx.TransportError)
                                     or (isinstance(exc, WebhookError) and exc.retryable)),
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._post(body)
        self.sent.append(alert)
        log.info("alert_sent", kind=alert.kind)

    async def _post(self, body: dict[str, Any]) -> None:
        """One POST; the answer read at most to MAX_WEBHOOK_ANSWER_BYTES. Not common.http_answers.request_bounded:
        its log line names the URL's path, and a Slack webhook's path is its secret."""
        assert self.webhook_url is not None
        request = self._http.build_request("POST", self.webhook_url, json=body, headers={"Accept-Encoding": "identity"})
        response = None
        try:
            # The whole exchange, not each read (httpx's timeout): a webhook dripping a byte a second held the one
            # sender task for hours, and every alert after it.
            async with asyncio.timeout(self._timeout_s):
                response = await self._http.send(request, stream=True)
                text = (await read_at_most(response, MAX_WEBHOOK_ANSWER_BYTES)).decode("utf-8", errors="replace")
        except AnswerTooLarge as exc:
            text = f"(answer not read: {exc})"
        except TimeoutError:
            if response is None:
                raise httpx.ReadTimeout(f"no answer within {self._timeout_s:g} s") from None
            text = f"(answer not read: not over within {self._timeout_s:g} s)"
        finally:
            if response is not None:
                await response.aclose()
        if response.is_success:
            return
        raise WebhookError(
            f"webhook answered HTTP {response.status_code}: {scrubbed_excerpt(text, 200)}",
            retryable=response.status_code in RETRYABLE_STATUS,
        )
