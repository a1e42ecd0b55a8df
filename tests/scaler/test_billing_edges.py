"""The billing arithmetic at its edges: a replica stopped as it started, the first interval, wall-clock boundaries."""

import pytest

from common.timespans import HOUR_S
from scaler.billing import (
    BillingAnchor,
    SpendLedger,
    bill_for_runtime,
    first_interval_after,
    interval_start,
    seconds_to_boundary,
)
from scaler.policy import Replica

WALL, STARTED = BillingAnchor.WALL_CLOCK, BillingAnchor.STARTED_AT


def test_a_replica_stopped_as_it_started_is_billed_its_first_interval():
    for anchor in (WALL, STARTED):
        assert bill_for_runtime(650, 650, 600, anchor) == 1
        assert bill_for_runtime(650, 640, 600, anchor) == 1  # a stop dated before the start (clock skew)


def test_the_first_interval_begins_at_the_start_the_others_at_the_anchor_s_boundaries():
    assert [interval_start(650, index, 600, STARTED) for index in range(3)] == [650, 1250, 1850]
    assert [interval_start(650, index, 600, WALL) for index in range(3)] == [650, 1200, 1800]


def test_the_paid_time_left_runs_to_the_anchor_s_next_boundary():
    assert seconds_to_boundary(650, 900, 600, STARTED) == 350  # at 1250
    assert seconds_to_boundary(650, 900, 600, WALL) == 300  # at 1200
    assert seconds_to_boundary(650, 600, 600, STARTED) == 600  # a clock behind the start: the whole first interval


def test_the_first_interval_after_a_horizon():
    assert first_interval_after(650, 600, 600, STARTED) == 0  # all begun after it
    assert first_interval_after(650, 650, 600, STARTED) == 1  # the first began at the horizon, not after it
    assert first_interval_after(650, 1300, 600, STARTED) == 2


def test_after_a_step_forward_the_interval_begun_since_is_dated_as_if_the_clock_had_always_shown_this_time():
    """NTP moves the clock an hour forward while 700 s pass: the replica's 2nd interval, begun in those 700 s, is
    charged 100 s ago by the new clock, within the last hour, not an hour and 100 s ago."""
    start, price = 1_800_000_000.0, 3.6  # $0.60 an interval
    ledger = SpendLedger().observe([Replica("r", start)], start, interval_s=600, anchor=STARTED, price_per_hour=price)
    now = start + HOUR_S + 700
    ledger = ledger.observe([Replica("r", start)], now, interval_s=600, anchor=STARTED, price_per_hour=price,
                            elapsed_s=700)
    assert ledger.spent_since(now - HOUR_S) == pytest.approx(1.2)  # both intervals, the first moved with the clock
    assert [round(at - now) for at, _ in ledger.charges] == [-700, -100]
