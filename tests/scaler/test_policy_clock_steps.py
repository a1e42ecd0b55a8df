"""The policy's own dates across wall-clock steps (NTP correcting a host's clock), an hour and a day, forward and
back, measured as the spend ledger measures them (Observation.elapsed_s, the boot clock).

Before: a step back of an hour held every scale-down in cooldown and the last replica in its idle window for that
hour (a day: a day of intervals paid for nothing), and a job held at zero by SCALER_ACTIVATION_THRESHOLD waited
the step out; a step forward ended a cooldown just begun."""

from __future__ import annotations

import pytest

from common.timespans import DAY_S, HOUR_S
from scaler.billing import SpendLedger
from scaler.policy import Observation, PolicyState, Replica, ScalingConfig, decide

T0 = 1_800_000_000.0  # the wall clock at the last tick
TICK_S = 15.0
REPLICAS = tuple(Replica(f"r{n}", T0 - 2 * HOUR_S) for n in range(3))
SIMPLE = ScalingConfig(target_wait_s=None, billing_aware=False, max_replicas=3, stabilization_window_s=0.0)
LEDGER = SpendLedger(observed_at=T0)


def after(step: float, state: PolicyState, config: ScalingConfig = SIMPLE, *, measured: bool = True, **seen) -> str:
    """The decision a tick later on the boot clock, the wall clock ``step`` further."""
    observation = Observation(now=T0 + TICK_S + step, elapsed_s=TICK_S if measured else None, **seen)
    return decide(config, state, observation).reason


@pytest.mark.parametrize("step", [-DAY_S, -HOUR_S, HOUR_S, DAY_S])
def test_a_cooldown_lasts_its_seconds_whatever_the_step(step: float):
    just_scaled_down = PolicyState(applied=3, last_work_seen_at=T0 - HOUR_S, last_scale_down_at=T0, ledger=LEDGER)
    assert after(step, just_scaled_down, replicas=REPLICAS) == "hold_cooldown"
    long_ago = PolicyState(applied=3, last_work_seen_at=T0 - HOUR_S, last_scale_down_at=T0 - 60, ledger=LEDGER)
    assert after(step, long_ago, replicas=REPLICAS) == "scale_down"


@pytest.mark.parametrize("step", [-DAY_S, -HOUR_S, HOUR_S, DAY_S])
def test_the_idle_window_lasts_its_seconds_whatever_the_step(step: float):
    idle_long = PolicyState(applied=1, last_work_seen_at=T0 - HOUR_S, ledger=LEDGER)
    assert after(step, idle_long, replicas=REPLICAS[:1]) == "scale_to_zero"
    idle_a_moment = PolicyState(applied=1, last_work_seen_at=T0 - 60, ledger=LEDGER)
    assert after(step, idle_a_moment, replicas=REPLICAS[:1]) == "hold_idle_window"


@pytest.mark.parametrize("step", [-DAY_S, -HOUR_S, HOUR_S, DAY_S])
def test_a_job_held_at_zero_wakes_the_fleet_when_it_has_waited_its_time(step: float):
    config = ScalingConfig(target_wait_s=None, activation_threshold=2, max_replicas=3)
    long = PolicyState(applied=0, held_at_zero_since=T0 - 400, ledger=LEDGER)
    assert after(step, long, config, pending=1) == "wake_from_zero"
    short = PolicyState(applied=0, held_at_zero_since=T0 - 60, ledger=LEDGER)
    assert after(step, short, config, pending=1) == "steady"


@pytest.mark.parametrize("step", [-DAY_S, -HOUR_S, HOUR_S, DAY_S])
def test_the_stabilization_window_keeps_its_demand_whatever_the_step(step: float):
    config = ScalingConfig(target_wait_s=None, billing_aware=False, max_replicas=3, stabilization_window_s=120.0)
    state = PolicyState(applied=3, demand_samples=((T0 - 30, 3),), last_work_seen_at=T0, ledger=LEDGER)
    assert after(step, state, config, running=1, replicas=REPLICAS) == "hold_stabilizing"


def test_a_step_back_with_nothing_to_measure_it_by_counts_from_now():
    """A scaler started after its clock was set back (or `once` from cron): what it remembers dated after now is
    dated now: the cooldown and the idle window last their seconds from now, not the step."""
    state = PolicyState(applied=3, last_work_seen_at=T0, last_scale_down_at=T0, ledger=LEDGER)
    assert after(-DAY_S, state, measured=False, replicas=REPLICAS) == "hold_cooldown"
    later = decide(SIMPLE, state, Observation(now=T0 - DAY_S, replicas=REPLICAS)).new_state
    observation = Observation(now=T0 - DAY_S + 200, replicas=REPLICAS)
    assert decide(SIMPLE, later, observation).reason == "scale_down"
