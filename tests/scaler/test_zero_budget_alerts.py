"""SCALER_MAX_SPEND_PER_DAY=0 allows no spending (the cap starts nothing): a replica still billed is over it, and the
budget alerts say so. Before, a budget of 0 was read as none and no budget alert ever went out."""

from __future__ import annotations

from structlog.testing import capture_logs

from scaler.alerts import AlertSender
from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.fleet import FleetBackend, Member
from scaler.ledger import VERDA_BILLING
from scaler.providers import VerdaBackend
from standins.verda import FakeVerda

from ..conftest import ManualClock
from .conftest import DEPLOYMENT


async def test_a_replica_billed_against_a_zero_daily_budget_raises_the_budget_alerts(
    fake_verda: FakeVerda, make_verda_client, wall: ManualClock
):
    async with make_verda_client() as client:
        await client.set_replica_bounds(DEPLOYMENT, 1, 1)  # left running from before the budget was set to 0
    spec = ProviderSpec("verda", max_replicas=3, price_per_hour=2.30)
    fleet = FleetBackend([Member(spec, VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall), VERDA_BILLING)],
                         AllocatorConfig((spec,), max_spend_per_day=0.0), clock=wall, alerts=AlertSender(None))
    try:
        with capture_logs() as logs:
            view = await fleet.observe()
    finally:
        await fleet.aclose()
    assert len(view.replicas) == 1
    raised = [entry for entry in logs if entry["event"] == "alert_raised"]
    assert [entry["kind"] for entry in raised] == ["budget_50", "budget_80", "budget_100"]
    assert raised[-1]["spent_last_day"] == round(2.30 / 6, 4) and raised[-1]["max_spend_per_day"] == 0.0
    assert raised[-1]["text"].startswith("over 100 % of the daily budget spent: 0.38 of 0.00")
