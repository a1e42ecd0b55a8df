"""One example per rule of the scaling policy."""

import re
from dataclasses import replace

import pytest

from scaler.billing import BillingAnchor
from scaler.policy import PRICE_RANGE, Observation, PolicyState, Reason, Replica, ScalingConfig, decide

PLAIN = ScalingConfig(target_wait_s=None, billing_aware=False, stabilization_window_s=120, scale_down_cooldown_s=30,
                      idle_to_zero_s=180)


def replicas(count, started_at=0.0):
    return tuple(Replica(f"r{n}", started_at) for n in range(count))


def tick(config, state, now, pending=0, running=0, count=None, **extra):
    count = state.applied if count is None and state.applied is not None else (count or 0)
    return decide(config, state, Observation(now=now, pending=pending, running=running,
                                             replicas=replicas(count), **extra))


def test_wakes_from_zero_on_first_pending_job():
    decision = tick(PLAIN, PolicyState(applied=0), 0, pending=1)
    assert (decision.desired, decision.reason, decision.changed) == (1, Reason.WAKE_FROM_ZERO, True)


def test_activation_threshold_keeps_zero_until_exceeded():
    config = replace(PLAIN, activation_threshold=2)
    assert tick(config, PolicyState(applied=0), 0, pending=2).desired == 0
    assert tick(config, PolicyState(applied=0), 0, pending=3).desired == 3


def test_jobs_the_activation_threshold_holds_at_zero_wake_the_fleet_after_activation_max_wait_s():
    """Held with no bound, 2 jobs under a threshold of 2 waited at zero until a third came: for ever on a quiet day."""
    config = replace(PLAIN, activation_threshold=2, activation_max_wait_s=300)
    state = PolicyState(applied=0)
    for now in (0, 100, 299):
        decision = tick(config, state, now, pending=2)
        assert (decision.desired, decision.details["held_at_zero_for_s"]) == (0, now)
        state = decision.new_state
    decision = tick(config, state, 300, pending=2)
    assert (decision.desired, decision.reason) == (2, Reason.WAKE_FROM_ZERO)
    awake = tick(config, decision.new_state, 315, pending=2)
    assert awake.new_state.held_at_zero_since is None and "held_at_zero_for_s" not in awake.details


def test_a_job_older_than_activation_max_wait_s_in_the_queue_wakes_a_scaler_that_forgot_it():
    config = replace(PLAIN, activation_threshold=2, activation_max_wait_s=300)
    assert tick(config, PolicyState(applied=0), 0, pending=1, pending_ages_s=(299.0,)).desired == 0
    assert tick(config, PolicyState(applied=0), 0, pending=1, pending_ages_s=(301.0,)).desired == 1


def test_an_emptied_queue_forgets_the_hold():
    config = replace(PLAIN, activation_threshold=2, activation_max_wait_s=300)
    state = tick(config, PolicyState(applied=0), 0, pending=1).new_state
    state = tick(config, state, 200, pending=0).new_state
    assert state.held_at_zero_since is None
    assert tick(config, state, 400, pending=1).desired == 0, "the new job's wait counts from its own arrival"


def test_an_activation_threshold_with_a_wait_target_is_refused():
    """Accepted, it did nothing: the wait-target planner wakes for the first job whatever the threshold says."""
    with pytest.raises(ValueError, match="activation_threshold holds jobs at zero only without a wait target"):
        ScalingConfig(target_wait_s=120, activation_threshold=2)


def test_demand_counts_running_jobs_and_is_clamped():
    config = replace(PLAIN, jobs_per_replica=2, max_replicas=4)
    assert tick(config, PolicyState(applied=1), 0, pending=3, running=2).desired == 3
    assert tick(config, PolicyState(applied=1), 0, pending=30, running=2).desired == 4


def test_scale_up_jumps_straight_to_demand():
    decision = tick(PLAIN, PolicyState(applied=1), 0, pending=4, running=1)
    assert (decision.desired, decision.reason) == (5, Reason.SCALE_UP)


def test_scale_down_waits_for_the_stabilization_window_then_steps_once_per_cooldown():
    state = tick(PLAIN, PolicyState(applied=0), 0, pending=5).new_state
    for now in (15, 60, 105):
        decision = tick(PLAIN, state, now, running=1)
        assert decision.desired == 5 and decision.reason == Reason.HOLD_STABILIZING
        state = decision.new_state
    decision = tick(PLAIN, state, 121, running=1)
    assert (decision.desired, decision.reason) == (4, Reason.SCALE_DOWN)
    decision = tick(PLAIN, decision.new_state, 136, running=1)
    assert (decision.desired, decision.reason) == (4, Reason.HOLD_COOLDOWN)
    assert tick(PLAIN, decision.new_state, 151, running=1).desired == 3


def test_zero_only_after_a_full_idle_window():
    state = tick(PLAIN, PolicyState(applied=0), 0, pending=1).new_state
    state = tick(PLAIN, state, 100, running=1).new_state  # work last seen at 100
    decision = tick(PLAIN, state, 279)
    assert (decision.desired, decision.reason) == (1, Reason.HOLD_IDLE_WINDOW)
    decision = tick(PLAIN, decision.new_state, 280)
    assert (decision.desired, decision.reason) == (0, Reason.SCALE_TO_ZERO)


def test_billing_aware_scale_down_waits_for_the_boundary_then_releases_all_due_replicas():
    config = replace(PLAIN, billing_aware=True, scale_down_lead_s=60)
    state = PolicyState(applied=3, last_work_seen_at=0.0)
    observation = Observation(now=400, replicas=replicas(3, started_at=0.0))
    decision = decide(config, state, observation)
    assert (decision.desired, decision.reason) == (3, Reason.HOLD_BILLING_BOUNDARY)
    assert decision.details["next_billing_boundary_in_s"] == 200
    decision = decide(config, decision.new_state, replace(observation, now=545))
    assert (decision.desired, decision.reason) == (0, Reason.SCALE_TO_ZERO)


def test_billing_anchor_wall_clock_uses_clock_boundaries():
    config = replace(PLAIN, billing_aware=True, billing_anchor=BillingAnchor.WALL_CLOCK)
    state = PolicyState(applied=1, last_work_seen_at=0.0)
    observation = Observation(now=1150, replicas=(Replica("r", started_at=1000.0),))
    assert decide(config, state, observation).desired == 0  # 50 s before 1200
    config = replace(config, billing_anchor=BillingAnchor.STARTED_AT)
    assert decide(config, state, observation).reason == Reason.HOLD_BILLING_BOUNDARY


def test_observation_failure_holds_counts_and_blocks_zero_right_after():
    state = PolicyState(applied=2, last_work_seen_at=0.0)
    failed = Observation(now=1000, queue_error="connection refused")
    first = decide(PLAIN, state, failed)
    second = decide(PLAIN, first.new_state, replace(failed, now=1015))
    assert (second.desired, second.changed, second.reason) == (2, False, Reason.HOLD_OBSERVATION_FAILED)
    assert second.details["consecutive_failures"] == 2
    recovered = tick(PLAIN, second.new_state, 1030)
    assert recovered.desired >= 1 and recovered.new_state.consecutive_failures == 0


def test_paused_holds_and_quota_reached_never_adds():
    state = PolicyState(applied=1)
    paused = tick(PLAIN, state, 0, pending=9, deployment_status="paused")
    assert (paused.desired, paused.changed, paused.reason) == (1, False, Reason.HOLD_PAUSED)
    quota = tick(PLAIN, state, 0, pending=9, deployment_status="quota_reached")
    assert (quota.desired, quota.reason) == (1, Reason.HOLD_QUOTA_REACHED)


def test_hourly_budget_caps_scale_up_and_says_so():
    config = replace(PLAIN, max_spend_per_hour=7.0)  # 3 replicas at $2.30
    decision = tick(config, PolicyState(applied=1), 0, pending=9)
    assert (decision.desired, decision.reason) == (3, Reason.CAPPED_HOURLY_BUDGET)


def test_daily_budget_counts_committed_intervals():
    config = replace(PLAIN, max_spend_per_day=2.0)  # five intervals of $0.383
    state = PolicyState(applied=1)
    for now in (0, 600, 1200, 1800):  # one replica, four intervals begun: $1.53 committed
        state = tick(config, state, now, running=1).new_state
    decision = tick(config, state, 1800, pending=5, running=1)
    assert (decision.desired, decision.reason) == (2, Reason.CAPPED_DAILY_BUDGET)
    assert decision.details["spend_last_day"] == 1.5333


@pytest.mark.parametrize(("price", "budgets"), [
    (2.30, {"max_spend_per_day": 1e308}),
    (2.30, {"max_spend_per_hour": 1e308, "max_spend_per_day": 1.7e308}),
    (0.001, {"max_spend_per_hour": 1e307, "max_spend_per_day": 1e307}),  # the cheapest price the settings take
], ids=["day-1e308", "both-near-max-float", "cheapest-price"])
def test_a_budget_that_pays_for_more_than_the_fleet_does_not_cap(price, budgets):
    """Before: math.floor(1e308 / 0.383) is floor(inf): OverflowError at every tick with work, never scaling up."""
    config = replace(PLAIN, price_per_replica_hour=price, **budgets)
    decision = tick(config, PolicyState(applied=0), 0, pending=6)
    assert (decision.desired, decision.reason) == (PLAIN.max_replicas, Reason.WAKE_FROM_ZERO)


@pytest.mark.parametrize("price", [1e-320, 0.0009, 1.1e9, 1e308])
def test_a_price_no_replica_hour_costs_is_refused(price):
    """Before: 1e-320 an hour was taken, and any budget then paid for replicas by the 1e300 (OverflowError)."""
    with pytest.raises(ValueError, match=re.escape(f"price_per_replica_hour {PRICE_RANGE}")):
        replace(PLAIN, price_per_replica_hour=price)


@pytest.mark.parametrize("price", [0.0, 0.001, 1e9])
def test_free_and_the_ends_of_the_price_range_are_taken(price):
    assert replace(PLAIN, price_per_replica_hour=price).price_per_replica_hour == price


def test_steady_load_changes_nothing():
    decision = tick(PLAIN, PolicyState(applied=3), 0, pending=1, running=2)
    assert (decision.changed, decision.reason) == (False, Reason.STEADY)


def test_lowered_max_clamps_immediately():
    decision = tick(replace(PLAIN, max_replicas=2), PolicyState(applied=4), 0, running=4)
    assert (decision.desired, decision.reason) == (2, Reason.CLAMP_TO_MAX)


def test_the_worked_example_in_the_docs():
    """docs/scaling-policy.md, 'Worked example': 09:00:00 is t=0, replicas start at 09:00:05."""
    config, state, seen = ScalingConfig(target_wait_s=None), PolicyState(), {}
    for now in range(0, 20 * 60 + 1, 15):
        running = 4 if 45 <= now < 180 else 1 if 180 <= now <= 645 else 0
        fleet = () if now == 0 else tuple(Replica(f"r{n}", 5.0) for n in range(state.applied or 0))
        decision = decide(config, state, Observation(now=now, pending=4 if now == 0 else 0,
                                                     running=running, replicas=fleet))
        seen[now] = (decision.desired, decision.reason)
        state = decision.new_state
    assert seen[0] == (4, Reason.WAKE_FROM_ZERO)
    assert seen[45] == (4, Reason.STEADY)
    assert seen[180] == (4, Reason.HOLD_STABILIZING)
    assert seen[300] == (4, Reason.HOLD_BILLING_BOUNDARY)
    assert seen[540] == (4, Reason.HOLD_BILLING_BOUNDARY)
    assert seen[555] == (1, Reason.SCALE_DOWN)
    assert seen[660] == (1, Reason.HOLD_STABILIZING)
    assert seen[780] == (1, Reason.HOLD_IDLE_WINDOW)
    assert seen[840] == (1, Reason.HOLD_BILLING_BOUNDARY)
    assert seen[1140] == (1, Reason.HOLD_BILLING_BOUNDARY)
    assert seen[1155] == (0, Reason.SCALE_TO_ZERO)
