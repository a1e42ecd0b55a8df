"""The billing arithmetic at its edges: a replica stopped as it started, the first interval, wall-clock boundaries."""

from scaler.billing import BillingAnchor, bill_for_runtime, first_interval_after, interval_start, seconds_to_boundary

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
