"""Properties of ``decide`` over random tick sequences."""

import itertools
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaler.billing import BillingAnchor, SpendLedger, bill_for_runtime, seconds_to_boundary
from scaler.policy import (
    MAX_PRICE_PER_HOUR,
    MIN_PRICE_PER_HOUR,
    Observation,
    PolicyState,
    Replica,
    ScalingConfig,
    decide,
)

_settings = dict(
    min_replicas=st.integers(0, 2),
    max_replicas=st.integers(2, 8),
    activation_threshold=st.integers(0, 2),
    activation_max_wait_s=st.sampled_from([0, 60, 300]),
    stabilization_window_s=st.sampled_from([0, 60, 120, 300]),
    scale_down_cooldown_s=st.sampled_from([0, 30, 120]),
    idle_to_zero_s=st.sampled_from([0, 60, 300]),
    billing_aware=st.booleans(),
    billing_anchor=st.sampled_from(list(BillingAnchor)),
    scale_down_lead_s=st.sampled_from([30, 60, 90]),
    max_spend_per_hour=st.sampled_from([None, 5.0, 12.0]),
)
# The in-flight rule with several jobs per replica, or wait-target planning (one job per replica).
configs = st.one_of(
    st.builds(ScalingConfig, jobs_per_replica=st.integers(1, 3), target_wait_s=st.none(), **_settings),
    st.builds(ScalingConfig, target_wait_s=st.sampled_from([30.0, 120.0, 180.0, 600.0]),
              **{**_settings, "activation_threshold": st.just(0)}),
)
ticks = st.lists(
    st.tuples(st.integers(1, 60), st.integers(0, 20), st.integers(0, 10),
              st.sampled_from(["healthy", "healthy", "paused", "quota_reached", "error"])),
    min_size=1, max_size=40,
)


def run(config, sequence, statuses=True):
    """Feed ticks; the platform follows the last applied count: a replica starts when first asked for
    (staggered by its number so boundaries differ), the newest leaves first."""
    state, now, decisions = PolicyState(), 1_000.0, []
    started: list[float] = []
    for step, pending, running, status in sequence:
        now += step
        count = state.applied or 0
        del started[count:]
        started += [now - step + min(7 * n, step) for n in range(len(started), count)]
        fleet = tuple(Replica(f"r{n}", at) for n, at in enumerate(started))
        if status == "error":
            observation = Observation(now=now, queue_error="timeout")
        else:
            observation = Observation(now=now, pending=pending, running=running, replicas=fleet,
                                      deployment_status=status if statuses else "healthy")
        decision = decide(config, state, observation)
        decisions.append((observation, decision))
        state = decision.new_state
    return decisions


@settings(max_examples=150, deadline=None)
@given(configs, ticks)
def test_never_above_max_nor_the_hourly_budget(config, sequence):
    for _, decision in run(config, sequence):
        assert decision.desired <= config.max_replicas
        if config.max_spend_per_hour is not None and decision.desired > decision.current:
            assert decision.desired * config.price_per_replica_hour <= config.max_spend_per_hour + 1e-9


@settings(max_examples=150, deadline=None)
@given(configs, ticks)
def test_never_below_what_running_jobs_need_nor_zero_with_work(config, sequence):
    for observation, decision in run(config, sequence, statuses=False):
        if observation.failed:
            continue
        need = min(math.ceil(observation.running / config.jobs_per_replica), config.max_replicas)
        if config.max_spend_per_hour is not None:  # the budget is the harder limit
            need = min(need, max(decision.current, math.floor(config.max_spend_per_hour / 2.30 + 1e-9)))
        assert decision.desired >= need
        if observation.pending + observation.running > 0 and decision.current > 0:
            assert decision.desired > 0


# Any budget and price the settings take, the ends of their ranges included.
budgets = st.one_of(st.none(), st.just(0.0), st.floats(0, 1.7976931348623157e308), st.sampled_from([1e-300, 1e308]))
prices = st.one_of(st.just(0.0), st.floats(MIN_PRICE_PER_HOUR, MAX_PRICE_PER_HOUR),
                   st.sampled_from([MIN_PRICE_PER_HOUR, MAX_PRICE_PER_HOUR]))


@settings(max_examples=200, deadline=None)
@given(configs, budgets, budgets, prices, ticks)
def test_any_budget_at_any_price_decides_and_one_that_pays_for_the_fleet_never_caps(
    config, per_hour, per_day, price, sequence
):
    """Before: a budget of 1e308 (or a price of 1e-320) was floor(inf), an OverflowError at every tick with work."""
    config = replace(config, max_spend_per_hour=per_hour, max_spend_per_day=per_day, price_per_replica_hour=price)
    whole_day = config.max_replicas * price * 24
    for _, decision in run(config, sequence):
        assert decision.desired <= config.max_replicas
        affords_the_fleet = per_hour is None or per_hour >= config.max_replicas * price
        if affords_the_fleet and (per_day is None or per_day > 2 * whole_day):
            assert "budget" not in decision.reason


@settings(max_examples=100, deadline=None)
@given(configs, ticks)
def test_errors_never_lower_the_count_and_paused_holds(config, sequence):
    for observation, decision in run(config, sequence):
        if observation.failed or observation.deployment_status == "paused":
            assert decision.desired == decision.current and not decision.changed


@settings(max_examples=100, deadline=None)
@given(configs, ticks)
def test_quota_reached_never_raises(config, sequence):
    for observation, decision in run(config, sequence):
        if observation.deployment_status == "quota_reached":
            assert decision.desired <= decision.current


@settings(max_examples=150, deadline=None)
@given(configs, ticks)
def test_billing_aware_scale_downs_only_near_a_boundary(config, sequence):
    for observation, decision in run(config, sequence):
        if config.billing_aware and decision.desired < decision.current and observation.replicas:
            left = min(seconds_to_boundary(r.started_at, observation.now, config.billing_interval_s,
                                           config.billing_anchor) for r in observation.replicas)
            # Planning may release spares earlier at a tick that loses no running job (early_release_s).
            window = config.scale_down_lead_s if config.target_wait_s is None else max(
                config.scale_down_lead_s, config.early_release_s)
            assert left <= window


@settings(max_examples=100, deadline=None)
@given(configs, st.integers(0, 20), st.integers(0, 10), st.integers(5, 60))
def test_steady_load_does_not_flap(config, pending, running, step):
    sequence = [(step, pending, running, "healthy")] * 60
    desired = [decision.desired for _, decision in run(config, sequence)]
    changes = sum(1 for before, after in itertools.pairwise(desired) if before != after)
    if config.target_wait_s is None:
        assert changes <= 1  # at most the initial move to the steady demand
    else:
        # Planning may buy more replicas while the first ones boot, then let them go (one step per cooldown):
        # never back up again once it came down.
        assert changes <= 3
        peak = desired.index(max(desired))
        assert all(after <= before for before, after in itertools.pairwise(desired[peak:]))


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 5_000), st.floats(10, 7_200), st.sampled_from(list(BillingAnchor)))
def test_ledger_charges_what_the_platform_bills(started_at, runtime, anchor):
    """Observed every 15 s while it runs, a replica is charged exactly its billed intervals."""
    last_seen = started_at
    replica = Replica("r", started_at)
    ledger = SpendLedger()
    now = started_at + 7.5  # off the boundaries, which float rounding would make ambiguous
    while now < started_at + runtime:
        ledger = ledger.observe([replica], now, interval_s=600, anchor=anchor, price_per_hour=6.0)
        last_seen, now = now, now + 15
    billed = bill_for_runtime(started_at, math.nextafter(last_seen, math.inf), 600, anchor)  # stopped then
    assert ledger.spent_since(-1) == pytest.approx(billed * 1.0)
