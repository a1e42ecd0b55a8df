"""Budget and fleet alerts against a real webhook server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from datetime import UTC, datetime

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from scaler.alerts import MAX_WEBHOOK_ANSWER_BYTES, Alert, AlertBook, AlertFormat, AlertSender, budget_alerts

from ..conftest import served

NOON = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
DAY = 86_400.0


class Webhook:
    """Records the JSON bodies; answers ``fail_first`` requests with 503, or hangs while ``hang`` is set; with
    ``flood_bytes``, answers that much (no Content-Length), ``sent`` counting what it wrote before the hang-up."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.attempts = 0
        self.fail_first = 0
        self.status = 503
        self.hang = asyncio.Event()
        self.flood_bytes = 0
        self.sent = 0
        self.url = ""
        self._serving = contextlib.AsyncExitStack()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{token}", self._post)
        base_url = await self._serving.enter_async_context(served(app, access_log=None))
        self.url = f"{base_url}/hook/T0KEN-secret"

    async def stop(self) -> None:
        self.hang.clear()
        await self._serving.aclose()

    async def _post(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        while self.hang.is_set():
            await asyncio.sleep(0.01)
        failing = self.attempts <= self.fail_first
        if not failing:
            self.bodies.append(await request.json())
        if self.flood_bytes:
            return await self._flood(request, self.status if failing else 200)
        if failing:
            return web.Response(status=self.status, text="try later")
        return web.Response(text="ok")

    async def _flood(self, request: web.Request, status: int) -> web.StreamResponse:
        response = web.StreamResponse(status=status)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while self.sent < self.attempts * self.flood_bytes:
                await response.write(b"x" * 65536)
                self.sent += 65536
        return response


@pytest.fixture
async def webhook():
    server = Webhook()
    await server.start()
    yield server
    await server.stop()


def sender(url: str | None, **options) -> AlertSender:
    return AlertSender(url, retry_initial_s=0.01, retry_max_s=0.02, timeout_s=2.0, **options)


async def deliver(url: str, *alerts: Alert, **options) -> AlertSender:
    """A sender given ``alerts``, flushed and closed; what it sent stays readable."""
    alert_sender = sender(url, **options)
    try:
        for alert in alerts:
            alert_sender.raise_(alert)
        assert await alert_sender.flush(5)
    finally:
        await alert_sender.aclose()
    return alert_sender


def test_each_budget_threshold_goes_out_once_per_day():
    book, raised = AlertBook(), []
    for spent, now in ((4.0, NOON), (5.5, NOON + 60), (6.0, NOON + 120), (8.5, NOON + 180), (12.0, NOON + 240),
                       (12.0, NOON + 300), (9.0, NOON + DAY)):
        raised += [(a.kind, now) for a in budget_alerts(spent, 10.0, now) if book.first_today(a.kind, now)]
    assert raised == [
        ("budget_50", NOON + 60), ("budget_80", NOON + 180), ("budget_100", NOON + 240),
        ("budget_50", NOON + DAY), ("budget_80", NOON + DAY),  # a new UTC day: the spend still counts
    ]
    assert budget_alerts(50.0, None, NOON) == [], "no daily budget, no budget alerts"
    assert [alert.text for alert in budget_alerts(10.0, 10.0, NOON)] == [
        "100 % of the daily budget spent: 10.00 of 10.00 over the last 24 h",
        "100 % of the daily budget spent: 10.00 of 10.00 over the last 24 h",
        "100 % of the daily budget spent: 10.00 of 10.00 over the last 24 h — new replicas are no longer started",
    ]


def test_a_zero_budget_with_nothing_spent_raises_no_alert_and_any_spend_raises_them_all():
    """SCALER_MAX_SPEND_PER_DAY=0 pauses spending: nothing billed is within it."""
    assert budget_alerts(0.0, 0.0, NOON) == []
    [*_, over] = budget_alerts(10 / 3, 0.0, NOON)
    assert over.fields == {"threshold_percent": 100, "spent_last_day": 3.3333, "max_spend_per_day": 0.0}
    assert [alert.kind for alert in budget_alerts(0.01, 0.0, NOON)] == ["budget_50", "budget_80", "budget_100"]


async def test_slack_body_is_retried_through_503s_and_sent_once(webhook):
    webhook.fail_first = 2
    alerts = sender(webhook.url)
    try:
        alerts.start()
        assert alerts.raise_(Alert("fallback_engaged", "fallback engaged: verda quota_reached", NOON))
        assert not alerts.raise_(Alert("fallback_engaged", "again", NOON + 30)), "once per day"
        assert await alerts.flush(5)
    finally:
        await alerts.aclose()
    assert webhook.attempts == 3
    assert webhook.bodies == [{"text": "[comfy-scaler] fallback engaged: verda quota_reached"}]


async def test_generic_body_carries_kind_time_and_fields(webhook):
    alerts = sender(webhook.url, fmt=AlertFormat.GENERIC, source="workshop")
    try:
        for alert in budget_alerts(8.0, 10.0, NOON):
            alerts.raise_(alert)
        assert await alerts.flush(5)
    finally:
        await alerts.aclose()
    assert [b["kind"] for b in webhook.bodies] == ["budget_50", "budget_80"]
    body = webhook.bodies[1]
    assert body["source"] == "workshop"
    assert body["at"] == "2026-11-30T12:00:00+00:00"
    assert body["fields"] == {"threshold_percent": 80, "spent_last_day": 8.0, "max_spend_per_day": 10.0}


async def test_a_hanging_webhook_never_blocks_and_the_queue_is_bounded(webhook):
    webhook.hang.set()
    alerts = sender(webhook.url, queue_size=2)
    try:
        alerts.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        queued = [alerts.raise_(Alert(f"kind_{n}", "x", NOON)) for n in range(5)]
        assert loop.time() - started < 1.0, "the webhook hangs for good: a send that waited on it would never return"
        await asyncio.sleep(0.1)  # the sender has taken one and hangs on it
        assert queued == [True, True, False, False, False], "raise_ never waits: the sender had no turn yet"
        assert alerts.dropped == 3
        assert not await alerts.flush(0.2)
    finally:
        await alerts.aclose()


async def test_a_webhook_that_keeps_failing_is_given_up_and_the_next_alert_still_goes(webhook):
    webhook.fail_first, webhook.status = 5, 500
    await deliver(webhook.url, Alert("budget_50", "first", NOON), Alert("budget_80", "second", NOON), attempts=3)
    assert [b["text"] for b in webhook.bodies] == ["[comfy-scaler] second"]


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
async def test_a_webhook_busy_or_behind_a_failing_proxy_is_retried(webhook, status: int):
    """Slack answers 429 when rate-limited, a proxy 502 or 504 when the hook behind it is slow: each passes."""
    webhook.fail_first, webhook.status = 1, status
    await deliver(webhook.url, Alert("budget_50", "first", NOON), attempts=3)
    assert webhook.attempts == 2 and [b["text"] for b in webhook.bodies] == ["[comfy-scaler] first"]


async def test_a_sender_shown_says_whether_a_webhook_is_set_never_its_url(webhook):
    for url, configured in ((webhook.url, True), (None, False)):
        alerts = sender(url)
        await alerts.aclose()
        assert repr(alerts) == f"AlertSender(configured={configured}, fmt=slack, dry_run=False)"


async def test_a_4xx_is_not_retried(webhook):
    webhook.fail_first, webhook.status = 1, 404
    await deliver(webhook.url, Alert("budget_50", "first", NOON), attempts=3)
    assert webhook.attempts == 1 and webhook.bodies == []


async def test_dry_run_prints_the_body_and_sends_nothing(webhook):
    out = io.StringIO()
    alerts = sender(webhook.url, dry_run=True, out=out)
    try:
        alerts.raise_(Alert("kill_switch", "kill switch used: every provider pinned to 0", NOON))
        assert await alerts.flush(5)
    finally:
        await alerts.aclose()
    assert webhook.attempts == 0
    printed = out.getvalue()
    assert printed.startswith("alert (dry run, not sent): ")
    body = json.loads(printed.split(": ", 1)[1])
    assert body == {"text": "[comfy-scaler] kill switch used: every provider pinned to 0"}
    assert "T0KEN" not in printed


async def test_a_webhook_answering_too_much_is_read_no_further_and_its_status_still_counts(webhook):
    webhook.flood_bytes = 16 << 20
    webhook.fail_first, webhook.status = 1, 503
    alerts = await deliver(webhook.url, Alert("budget_50", "first", NOON), attempts=3)
    assert webhook.attempts == 2, "the 503 was retried, the 200 delivered the alert"
    assert [alert.kind for alert in alerts.sent] == ["budget_50"]
    assert webhook.sent < webhook.attempts * webhook.flood_bytes, "the sender hung up once past the limit"


async def test_an_oversized_failure_is_logged_without_the_webhooks_secret_path(webhook):
    webhook.flood_bytes = 16 << 20
    webhook.fail_first, webhook.status = 5, 404
    with capture_logs() as logs:
        await deliver(webhook.url, Alert("budget_50", "first", NOON), attempts=3)
    [failed] = [entry for entry in logs if entry["event"] == "alert_not_delivered"]
    assert failed["error"] == "WebhookError: webhook answered HTTP 404: (answer not read: more than " + (
        f"{MAX_WEBHOOK_ANSWER_BYTES} bytes arrived)"
    )
    assert "T0KEN-secret" not in repr(logs)
    assert webhook.sent < webhook.attempts * webhook.flood_bytes


async def test_a_webhook_dripping_its_answer_does_not_hold_the_alerts_after_it():
    # Before: httpx's timeout bounds each read, so a webhook (or a proxy before it) sending a byte every second held
    # the one sender task for up to 64 KiB of them, 18 hours: every alert after it waited, then was dropped.
    async def drip(request: web.Request) -> web.StreamResponse:
        received.append((await request.json())["text"])
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(MAX_WEBHOOK_ANSWER_BYTES):
                await response.write(b"x")
                await asyncio.sleep(0.5)
        return response

    received: list[str] = []
    app = web.Application()
    app.router.add_post("/hook", drip)
    async with served(app, shutdown_timeout=0.1) as base_url:
        first, second = Alert("budget_50", "first", NOON), Alert("budget_80", "second", NOON)
        alerts = await deliver(f"{base_url}/hook", first, second, attempts=1)
    assert received == ["[comfy-scaler] first", "[comfy-scaler] second"]
    assert [alert.kind for alert in alerts.sent] == ["budget_50", "budget_80"], "a 200 delivered each"


def test_a_book_takes_in_what_another_process_sent_today_not_what_it_sent_on_an_older_day():
    today, yesterday = 86_400.0 * 20_000, 86_400.0 * 19_999
    book = AlertBook(day=today, sent={"budget_50"})
    book.take_in(AlertBook(day=yesterday, sent={"fallback_engaged"}))
    book.take_in(AlertBook())
    assert book.sent == {"budget_50"}
    book.take_in(AlertBook(day=today, sent={"kill_switch"}))
    assert book.sent == {"budget_50", "kill_switch"}
    assert not book.first_today("kill_switch", today + 60)
    book.take_in(AlertBook(day=today + 86_400.0, sent={"kill_switch"}))
    assert (book.day, book.sent) == (today + 86_400.0, {"kill_switch"})


def test_a_clock_stepped_back_across_midnight_does_not_send_the_days_alerts_again():
    """The budget alerts went out at 00:10; NTP sets the clock back an hour (23:10 the day before). Before: the book
    took it for a new day and sent them again, and again at the real midnight's next tick."""
    after_midnight = datetime(2027, 3, 2, 0, 10, tzinfo=UTC).timestamp()
    book = AlertBook()
    assert book.first_today("budget_50", after_midnight)
    assert not book.first_today("budget_50", after_midnight - 3600), "the same day, in truth"
    assert not book.first_today("budget_50", after_midnight + 60), "and not again once the clock is past midnight"
    assert book.first_today("budget_50", after_midnight + 86_400), "the next day's goes out"
    ahead = AlertBook()
    assert ahead.first_today("budget_50", after_midnight + 2 * 86_400), "the clock 2 days ahead"
    assert ahead.first_today("budget_50", after_midnight), "set back 2 days: today's alert is not lost"
