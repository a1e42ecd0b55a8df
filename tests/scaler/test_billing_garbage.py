"""Replica start times a provider should never send (long ago, in the future) cost the ledgers neither time nor
a wrong bill: only the intervals a spend window can still read are charged."""

from __future__ import annotations

import pytest

from common.timespans import DAY_S
from scaler import billing
from scaler.billing import BillingAnchor, SpendLedger
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING, CostLedger
from scaler.policy import Replica

NOW = 1_800_000_000.0
TWO_YEARS_AGO = NOW - 2 * 365 * DAY_S
INTERVALS_PER_DAY = int(DAY_S / 600)


@pytest.fixture
def interval_starts(monkeypatch) -> list[int]:
    """Counts the intervals a ledger walks through (each charged interval is one call)."""
    calls: list[int] = []
    real = billing.interval_start

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(billing, "interval_start", counted)
    monkeypatch.setattr("scaler.ledger.interval_start", counted)
    return calls


@pytest.mark.parametrize("anchor", list(BillingAnchor))
def test_the_policy_ledger_walks_only_the_last_day_of_a_replica_started_long_ago(interval_starts, anchor):
    ledger = SpendLedger().observe(
        [Replica("old", TWO_YEARS_AGO)], NOW, interval_s=600, anchor=anchor, price_per_hour=6.0
    )
    assert len(interval_starts) <= INTERVALS_PER_DAY + 1, "not the 105 120 intervals of two years"
    assert ledger.spent_since(NOW - DAY_S) == pytest.approx(INTERVALS_PER_DAY * 1.0, abs=1.0)


def test_the_cost_ledger_walks_only_the_intervals_it_keeps(interval_starts):
    ledger = CostLedger()
    ledger.charge("verda", [Replica("old", TWO_YEARS_AGO)], NOW, price_per_hour=6.0, rule=VERDA_BILLING)
    assert len(interval_starts) <= 2 * INTERVALS_PER_DAY + 2
    assert ledger.spent_since(NOW - DAY_S, "verda") == pytest.approx(INTERVALS_PER_DAY * 1.0, abs=1.0)


def test_per_second_billing_charges_at_most_a_day_for_a_replica_started_long_ago():
    ledger = CostLedger()
    ledger.charge("runpod", [Replica("old", TWO_YEARS_AGO)], NOW, price_per_hour=3.6, rule=RUNPOD_BILLING)
    assert ledger.spent_since(NOW - DAY_S, "runpod") == pytest.approx(3.6 * 24)


def test_per_second_billing_charges_a_replica_that_claims_to_start_in_the_future_from_when_it_is_seen():
    ledger = CostLedger()
    replica = Replica("skewed", NOW + 10 * 365 * DAY_S)
    ledger.charge("runpod", [replica], NOW, price_per_hour=3.6, rule=RUNPOD_BILLING)
    ledger.charge("runpod", [replica], NOW + 600, price_per_hour=3.6, rule=RUNPOD_BILLING)
    assert ledger.spent_since(NOW - DAY_S, "runpod") == pytest.approx(0.6), "10 minutes at 3.60/h, not free"
