"""A scaler that runs for months keeps a bounded record of the alerts it delivered (bench/scaler_soak.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from scaler.alerts import SENT_KEPT, AlertSender, budget_alerts

from ..conftest import served

MIDNIGHT = datetime(2026, 11, 30, tzinfo=UTC).timestamp()
DAY = 86_400.0


async def test_the_alerts_delivered_over_many_days_are_kept_to_the_latest_few():
    # Before: every delivered alert was appended to `sent` for good, each budget threshold once a day: 3 a day over
    # budget, ~1,100 a year in a scaler's memory that nothing read.
    received: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.json())["text"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    days = SENT_KEPT // 3 + 10
    async with served(app, access_log=None) as base_url:
        alerts = AlertSender(f"{base_url}/hook", attempts=1, timeout_s=10.0)
        try:
            for day in range(days):
                for alert in budget_alerts(12.0, 10.0, MIDNIGHT + day * DAY + 3600):
                    assert alerts.raise_(alert)
                assert await alerts.flush(30)
        finally:
            await alerts.aclose()
    assert len(received) == 3 * days, "each threshold went out once a day"
    assert len(alerts.sent) == SENT_KEPT
    assert alerts.sent[-1].at == MIDNIGHT + (days - 1) * DAY + 3600, "the latest are the ones kept"
