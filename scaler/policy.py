"""The scaler's decision: a pure function of configuration, memory, one observation and its clock.

The live loop and the simulator call the same ``decide``; nothing here reads a clock, logs or does I/O.
How it decides, setting by setting: docs/scaling-policy.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from common.timespans import DAY_S, HOUR_S
from scaler.billing import BillingAnchor, SpendLedger, seconds_to_boundary
from scaler.clock_step import measured_step
from scaler.planning import (
    LATE_LIMIT,
    excess,
    late_allowance,
    longest_wait,
    predicted_starts,
    replicas_needed,
    replicas_to_add,
)
from scaler.timetable import Block, opening_start, prewarm_floor

PAUSED = "paused"
QUOTA_REACHED = "quota_reached"
# The most replicas the policy may drive: far more than a workshop or studio fleet, and the wait-target
# planning weighs up to that many new replicas against every queued job: with no bound, 3000 old queued jobs
# made one decision take 9.1 s (0.23 s at 100).
MAX_REPLICAS_LIMIT = 100
# What a replica-hour may cost but 0 (free), in any currency: outside, a price is a typo (1e-320 an hour made any
# budget pay for replicas by the 1e300; 1e308, a day's spend past the largest float).
MIN_PRICE_PER_HOUR = 0.001
MAX_PRICE_PER_HOUR = 1e9
PRICE_RANGE = f"must be 0 (free) or between {MIN_PRICE_PER_HOUR:g} and {MAX_PRICE_PER_HOUR:g} an hour"


class Reason(StrEnum):
    WAKE_FROM_ZERO = "wake_from_zero"
    SCALE_UP = "scale_up"
    PREWARM = "prewarm_for_timetable"
    SCALE_DOWN = "scale_down"
    SCALE_DOWN_RESTARTING_JOBS = "scale_down_restarting_jobs"
    SCALE_TO_ZERO = "scale_to_zero"
    CLAMP_TO_MAX = "clamp_to_max"
    STEADY = "steady"
    HOLD_STABILIZING = "hold_stabilizing"
    HOLD_COOLDOWN = "hold_cooldown"
    HOLD_BILLING_BOUNDARY = "hold_until_billing_boundary"
    HOLD_JOBS_WOULD_BE_LOST = "hold_running_jobs_would_be_lost"
    HOLD_IDLE_WINDOW = "hold_idle_window"
    HOLD_OBSERVATION_FAILED = "hold_observation_failed"
    HOLD_PAUSED = "hold_paused"
    HOLD_QUOTA_REACHED = "hold_quota_reached"
    CAPPED_HOURLY_BUDGET = "scale_up_capped_by_hourly_budget"
    CAPPED_DAILY_BUDGET = "scale_up_capped_by_daily_budget"


def non_finite_fields(settings: object) -> list[str]:
    """One problem per float field of the dataclass ``settings`` that is NaN or infinite: NaN passes every range
    check and inf is no time, either would make the arithmetic that follows wrong."""
    return [f"{item.name} must be a finite number" for item in fields(settings)
            if isinstance(value := getattr(settings, item.name), float) and not math.isfinite(value)]


def is_a_price(per_hour: float) -> bool:
    """Whether ``per_hour`` may be what a replica-hour costs (PRICE_RANGE); NaN is not."""
    return per_hour == 0 or MIN_PRICE_PER_HOUR <= per_hour <= MAX_PRICE_PER_HOUR


@dataclass(frozen=True, slots=True)
class ScalingConfig:
    """Every knob of the policy; the defaults are the ones the simulator showed best (docs/simulator.md)."""

    min_replicas: int = 0
    max_replicas: int = 5
    jobs_per_replica: int = 1
    activation_threshold: int = 0
    activation_max_wait_s: float = 300.0  # ... but a job held at zero that long wakes the fleet all the same
    stabilization_window_s: float = 120.0
    scale_down_cooldown_s: float = 30.0
    idle_to_zero_s: float = 180.0
    billing_interval_s: float = 600.0
    billing_aware: bool = True
    billing_anchor: BillingAnchor = BillingAnchor.STARTED_AT
    scale_down_lead_s: float = 60.0
    # ... or up to this long before it, at a tick when stopping them loses no running job (docs/scaling-policy.md)
    early_release_s: float = 180.0
    price_per_replica_hour: float = 2.30
    max_spend_per_hour: float | None = None
    max_spend_per_day: float | None = None
    # Wait-target planning (docs/scaling-policy.md); None: the older rule, one replica per job in flight.
    target_wait_s: float | None = 180.0
    default_job_duration_s: float = 180.0
    replica_boot_s: float = 45.0
    timetable: tuple[Block, ...] = ()
    prewarm_lead_s: float = 15.0
    worker_drain_s: float = 25.0  # a stopped worker finishes a job that ends within this (SHUTDOWN_GRACE_S)
    # Verda picks which replica a scale-down stops; assume it may be a busy one (False: idle ones retire).
    victim_may_be_busy: bool = True
    max_lost_work_s: float = 0.0  # ... and accept restarting a job that has run at most this long
    # ... or, at a billing boundary, when the spare time saved is this many times the work restarted and the
    # restarted jobs still meet the wait target (0: never)
    lost_work_weight: float = 10.0

    def __post_init__(self) -> None:
        problems = non_finite_fields(self)
        if not 0 <= self.min_replicas <= self.max_replicas:
            problems.append("need 0 <= min_replicas <= max_replicas")
        if self.max_replicas > MAX_REPLICAS_LIMIT:
            problems.append(f"max_replicas must be <= {MAX_REPLICAS_LIMIT}")
        if self.jobs_per_replica < 1:
            problems.append("jobs_per_replica must be >= 1")
        if self.activation_threshold < 0:
            problems.append("activation_threshold must be >= 0")
        if self.billing_interval_s <= 0:
            problems.append("billing_interval_s must be > 0")
        if not 0 <= self.scale_down_lead_s < self.billing_interval_s:
            problems.append("need 0 <= scale_down_lead_s < billing_interval_s")
        if not 0 <= self.early_release_s < self.billing_interval_s:
            problems.append("need 0 <= early_release_s < billing_interval_s")
        if self.target_wait_s is not None and self.target_wait_s <= 0:
            problems.append("target_wait_s must be > 0 (or unset)")
        if self.target_wait_s is not None and self.activation_threshold:
            problems.append("activation_threshold holds jobs at zero only without a wait target (with target_wait_s "
                            "set, the target decides when to wake): set target_wait_s to none or activation_threshold "
                            "to 0")
        if self.target_wait_s is not None and self.jobs_per_replica != 1:
            problems.append("target_wait_s plans one job per replica: with jobs_per_replica > 1 set target_wait_s to "
                            "none")
        if self.default_job_duration_s <= 0:
            problems.append("default_job_duration_s must be > 0")
        for name in ("activation_max_wait_s", "stabilization_window_s", "scale_down_cooldown_s", "idle_to_zero_s",
                     "replica_boot_s", "prewarm_lead_s", "worker_drain_s", "max_lost_work_s", "lost_work_weight"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        for name in ("max_spend_per_hour", "max_spend_per_day"):
            if (getattr(self, name) or 0) < 0:
                problems.append(f"{name} must be >= 0")
        if not is_a_price(self.price_per_replica_hour):
            problems.append(f"price_per_replica_hour {PRICE_RANGE}")
        if problems:
            raise ValueError("invalid ScalingConfig: " + "; ".join(problems))
        object.__setattr__(self, "billing_anchor", BillingAnchor(self.billing_anchor))

    @property
    def interval_cost(self) -> float:
        return self.price_per_replica_hour * self.billing_interval_s / HOUR_S


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    started_at: float
    # Billed per second (RunPod, local, in a fleet): no paid interval to wait out, it may leave at any tick.
    per_second: bool = False


@dataclass(frozen=True, slots=True)
class Observation:
    """One tick's view of the world. Set ``queue_error``/``verda_error`` when that read failed.

    The optional job timings sharpen wait-target planning; without them queued jobs count as just
    submitted, running ones as half done, and jobs as ``default_job_duration_s`` long.
    ``long_job_duration_s`` (a high percentile of recent run times) keeps a scale-down from betting that a
    running job is about to end when jobs vary in length.
    """

    now: float
    pending: int = 0
    running: int = 0
    replicas: tuple[Replica, ...] = ()
    deployment_status: str = "healthy"
    pending_ages_s: tuple[float, ...] = ()  # how long queued jobs have waited, any order
    running_elapsed_s: tuple[float, ...] = ()  # how long running jobs have run, any order
    running_waited_s: tuple[float, ...] = ()  # ... and how long each had waited before it started, same order
    job_duration_s: float | None = None  # robust estimate from recent completions (scaler.planning)
    long_job_duration_s: float | None = None  # ... and how long a long one runs (scaler.planning.long_duration)
    recent_waits_s: tuple[float, ...] = ()  # how long the last jobs to start had waited, any order
    queue_error: str | None = None
    verda_error: str | None = None
    # Since the spend ledger last took an observation, on a clock never stepped (None: not measured, as at a
    # process's first tick): by it the ledger tells a wall clock stepped by NTP from a slow tick.
    elapsed_s: float | None = None

    @property
    def failed(self) -> bool:
        return self.queue_error is not None or self.verda_error is not None


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy remembers between ticks; start with ``PolicyState()``."""

    applied: int | None = None
    demand_samples: tuple[tuple[float, int], ...] = ()
    last_work_seen_at: float | None = None
    last_scale_down_at: float | None = None
    consecutive_failures: int = 0
    # When the queue manager's reads began to fail (None while it answers): the loop's bounded hold counts from it,
    # across restarts and `once` runs from cron.
    queue_unreadable_since: float | None = None
    ledger: SpendLedger = field(default_factory=SpendLedger)
    # The timetable's latest block opening (its first billing interval): when it began, and the running jobs
    # summed over its ticks with the tick count; and what the last finished one kept busy, its mean running
    # jobs rounded up: the next block pre-warms that many.
    opening_started_at: float | None = None
    opening_load: tuple[float, int] = (0.0, 0)
    learned_prewarm: int = 0
    # Since when activation_threshold has kept queued jobs waiting at zero (None: it keeps none waiting).
    held_at_zero_since: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    current: int
    reason: str
    details: dict[str, Any]
    changed: bool
    new_state: PolicyState


def estimated_spend(config: ScalingConfig, state: PolicyState, now: float) -> dict[str, float]:
    """Committed spend over the last hour and day, for the loop's metric and the budget guard."""
    return {
        "spend_last_hour": round(state.ledger.spent_since(now - HOUR_S), 4),
        "spend_last_day": round(state.ledger.spent_since(now - DAY_S), 4),
    }


def decide(config: ScalingConfig, state: PolicyState, observation: Observation) -> Decision:
    state = _following_clock(state, observation)
    if observation.failed:
        return _hold_on_failure(config, state, observation)
    now = observation.now
    current = state.applied if state.applied is not None else len(observation.replicas)
    held_at_zero_since = _held_at_zero_since(config, state, observation, current)
    demand = _demand(config, observation, held_at_zero_since)
    work_seen = observation.pending > 0 or observation.running > 0
    state = replace(
        state,
        demand_samples=_window(state.demand_samples, now, demand, config.stabilization_window_s),
        last_work_seen_at=now if work_seen or state.last_work_seen_at is None else state.last_work_seen_at,
        consecutive_failures=0,
        queue_unreadable_since=None,
        ledger=_observe_spend(config, state.ledger, observation),
        held_at_zero_since=held_at_zero_since,
    )
    state = _learn_from_opening(config, state, observation)
    details: dict[str, Any] = {
        "pending": observation.pending,
        "running": observation.running,
        "replicas": len(observation.replicas),
        "deployment_status": observation.deployment_status,
        "demand": demand,
        "window_max": max(sample for _, sample in state.demand_samples),
        "idle_for_s": round(now - state.last_work_seen_at, 3),
        **estimated_spend(config, state, now),
    }
    if held_at_zero_since is not None:
        details["held_at_zero_for_s"] = round(_held_for(observation, held_at_zero_since), 3)
    if observation.deployment_status == PAUSED:
        desired, reason = current, Reason.HOLD_PAUSED
    elif config.target_wait_s is not None:
        desired, reason = _plan(config, state, observation, current, details)
    elif demand > current:
        desired, reason = _scale_up(config, state, observation, current, demand)
    else:
        desired, reason = _scale_down(config, state, observation, current, details)
    changed = desired != current
    new_state = replace(
        state,
        applied=desired,
        last_scale_down_at=now if desired < current else state.last_scale_down_at,
    )
    return Decision(desired, current, str(reason), details, changed, new_state)


def _following_clock(state: PolicyState, observation: Observation) -> PolicyState:
    """The policy's own dates moved with a wall-clock step, measured as the spend ledger measures it (since its
    last observation, by ``elapsed_s``): a step back of an hour held every scale-down in cooldown and the last
    replica in its idle window for that hour. None is ever after now (a step back with nothing to measure it by,
    as at a process's first tick: it counts from now). The timetable's opening is wall-clock time: it stays."""
    now = observation.now
    step = measured_step(state.ledger.observed_at, now, observation.elapsed_s)

    def moved(at: float | None) -> float | None:
        return None if at is None else min(at + step, now)

    return replace(
        state,
        demand_samples=tuple((min(at + step, now), demand) for at, demand in state.demand_samples),
        last_work_seen_at=moved(state.last_work_seen_at),
        last_scale_down_at=moved(state.last_scale_down_at),
        queue_unreadable_since=moved(state.queue_unreadable_since),
        held_at_zero_since=moved(state.held_at_zero_since),
    )


def _demand(config: ScalingConfig, observation: Observation, held_at_zero_since: float | None) -> int:
    in_flight = observation.pending + observation.running
    if held_at_zero_since is not None and _held_for(observation, held_at_zero_since) < config.activation_max_wait_s:
        return config.min_replicas
    wanted = math.ceil(in_flight / config.jobs_per_replica)
    return min(max(wanted, config.min_replicas), config.max_replicas)


def _held_at_zero_since(
    config: ScalingConfig, state: PolicyState, observation: Observation, current: int
) -> float | None:
    """Since when ``activation_threshold`` has kept the queued jobs waiting at zero; None when it keeps none."""
    asleep = current == 0 and observation.running == 0
    if not (asleep and 0 < observation.pending <= config.activation_threshold):
        return None
    return observation.now if state.held_at_zero_since is None else state.held_at_zero_since


def _held_for(observation: Observation, held_at_zero_since: float) -> float:
    """How long the oldest queued job has waited at zero: by our own memory or, when longer (a scaler restarted
    without its state), by the queue's ages."""
    return max(observation.now - held_at_zero_since, _queued_ages(observation)[0])


def _running_need(config: ScalingConfig, observation: Observation) -> int:
    return min(math.ceil(observation.running / config.jobs_per_replica), config.max_replicas)


def _window(
    samples: tuple[tuple[float, int], ...], now: float, demand: int, window_s: float
) -> tuple[tuple[float, int], ...]:
    kept = tuple(sample for sample in samples if sample[0] > now - window_s and sample[0] <= now)
    return (*kept, (now, demand))


def _observe_spend(config: ScalingConfig, ledger: SpendLedger, observation: Observation) -> SpendLedger:
    return ledger.observe(
        observation.replicas,
        observation.now,
        interval_s=config.billing_interval_s,
        anchor=config.billing_anchor,
        price_per_hour=config.price_per_replica_hour,
        elapsed_s=observation.elapsed_s,
    )


def _hold_on_failure(config: ScalingConfig, state: PolicyState, observation: Observation) -> Decision:
    """Hold the last applied count; count the failure as recent work so no scale-to-zero follows it."""
    now = observation.now
    current = state.applied
    if current is None:
        current = len(observation.replicas) if observation.verda_error is None else 0
    ledger = state.ledger if observation.verda_error else _observe_spend(config, state.ledger, observation)
    queue_unreadable_since = None  # a failed queue read goes on with the outage under way, or starts one
    if observation.queue_error is not None:
        queue_unreadable_since = now if state.queue_unreadable_since is None else state.queue_unreadable_since
    new_state = replace(
        state,
        applied=state.applied,
        demand_samples=_window(state.demand_samples, now, current, config.stabilization_window_s),
        last_work_seen_at=now,
        consecutive_failures=state.consecutive_failures + 1,
        queue_unreadable_since=queue_unreadable_since,
        ledger=ledger,
    )
    details = {
        "consecutive_failures": new_state.consecutive_failures,
        "queue_error": observation.queue_error,
        "verda_error": observation.verda_error,
    }
    return Decision(current, current, str(Reason.HOLD_OBSERVATION_FAILED), details, False, new_state)


def _scale_up(
    config: ScalingConfig, state: PolicyState, observation: Observation, current: int, demand: int
) -> tuple[int, Reason]:
    if observation.deployment_status == QUOTA_REACHED:
        return current, Reason.HOLD_QUOTA_REACHED
    reason = Reason.WAKE_FROM_ZERO if current == 0 else Reason.SCALE_UP
    desired = demand
    if config.max_spend_per_hour is not None and config.price_per_replica_hour > 0:
        affordable_rate = _affordable(config.max_spend_per_hour, config.price_per_replica_hour, desired)
        if desired > affordable_rate:
            desired, reason = max(current, affordable_rate), Reason.CAPPED_HOURLY_BUDGET
    if config.max_spend_per_day is not None and config.interval_cost > 0:
        left_today = config.max_spend_per_day - state.ledger.spent_since(observation.now - DAY_S)
        affordable_new = _affordable(left_today, config.interval_cost, desired - current)
        if desired - current > affordable_new:
            desired, reason = current + affordable_new, Reason.CAPPED_DAILY_BUDGET
    return desired, reason


def _affordable(budget: float, cost: float, wanted: int) -> int:
    """How many of ``cost`` (> 0) ``budget`` pays for, whole, counted up to ``wanted``: a budget that pays for all
    of them does not cap. Never floors a quotient out of range: 1e308 / 0.38 is inf."""
    count = budget / cost + 1e-9
    if count >= wanted:
        return wanted
    return math.floor(count) if count >= 1 else 0  # NaN too (a day's spend of inf - inf): nothing affordable


def _scale_down(
    config: ScalingConfig,
    state: PolicyState,
    observation: Observation,
    current: int,
    details: dict[str, Any],
) -> tuple[int, Reason]:
    now = observation.now
    if current > config.max_replicas:
        return config.max_replicas, Reason.CLAMP_TO_MAX
    floor = max(details["window_max"], _running_need(config, observation), config.min_replicas)
    if floor >= current:
        if details["window_max"] > details["demand"]:
            return current, Reason.HOLD_STABILIZING
        return current, Reason.STEADY
    idle_for = now - (state.last_work_seen_at if state.last_work_seen_at is not None else now)
    if floor == 0 and idle_for < config.idle_to_zero_s:
        floor = 1
        if current <= 1:
            return current, Reason.HOLD_IDLE_WINDOW
    if state.last_scale_down_at is not None and now - state.last_scale_down_at < config.scale_down_cooldown_s:
        return current, Reason.HOLD_COOLDOWN
    step = 1
    if config.billing_aware and observation.replicas:
        paid_left = _paid_left(config, observation, details)
        # Replicas whose paid interval ends now would each buy another one: release them together.
        step = sum(1 for left in paid_left if left <= config.scale_down_lead_s)
        if step == 0:
            return current, Reason.HOLD_BILLING_BOUNDARY
    desired = max(floor, current - step)
    return desired, Reason.SCALE_TO_ZERO if desired == 0 else Reason.SCALE_DOWN


def _plan(
    config: ScalingConfig,
    state: PolicyState,
    observation: Observation,
    current: int,
    details: dict[str, Any],
) -> tuple[int, Reason]:
    """Scale for the wait target: buy a replica only for a job that would miss it, release at boundaries."""
    assert config.target_wait_s is not None
    now = observation.now
    duration = observation.job_duration_s or config.default_job_duration_s
    # Whether a running job ends within the drain is judged by a long job: a typical one may not be it.
    long_duration = max(duration, observation.long_job_duration_s or 0.0)
    target = config.target_wait_s
    free_at = _free_at(config, observation, current, duration)
    ages = _queued_ages(observation)
    busy = _would_be_interrupted(config, observation, current, long_duration)
    prewarm = prewarm_floor(config.timetable, now, config.prewarm_lead_s, config.max_replicas, config.replica_boot_s)
    # A block starts as busy as the last one did: at least its declared count, more if the last opening needed.
    prewarm = min(max(prewarm, state.learned_prewarm) if prewarm else 0, config.max_replicas)
    room = max(0, config.max_replicas - current)
    # Plan for the p95: a few jobs may start past the target, as long as few recent ones did.
    allowed = late_allowance(observation.recent_waits_s, len(ages), target)
    add = replicas_to_add(now, free_at, ages, duration, target, config.replica_boot_s, room, allowed)
    details.update(job_duration_s=round(duration, 1), long_job_duration_s=round(long_duration, 1),
                   target_wait_s=config.target_wait_s, late_allowed=allowed, prewarm=prewarm,
                   learned_prewarm=state.learned_prewarm)
    in_flight = observation.pending + observation.running > 0
    # Running jobs keep their replicas (one that ends within the drain needs none: its replica may be
    # stopping), and work in flight never leaves the fleet at zero.
    running_need = min(observation.running - _ending(config, observation, long_duration), config.max_replicas)
    wanted = max(current + add, prewarm, config.min_replicas, running_need, int(in_flight))
    if current > config.max_replicas:
        return config.max_replicas, Reason.CLAMP_TO_MAX
    if wanted > current:
        desired, reason = _scale_up(config, state, observation, current, min(wanted, config.max_replicas))
        if reason in (Reason.SCALE_UP, Reason.WAKE_FROM_ZERO) and add == 0:
            reason = Reason.PREWARM
        return desired, reason
    need = max(
        replicas_needed(now, free_at, ages, duration, target, allowed),
        busy,
        1 if in_flight else 0,
        prewarm,
        config.min_replicas,
    )
    kept = sorted(free_at)[:need]
    if replicas_to_add(now, kept, ages, duration, target, config.replica_boot_s, current - need, allowed) > 0:
        need = current  # fewer would have to be bought back at once
    details["needed"] = need
    if need >= current:
        return current, Reason.STEADY
    if not config.billing_aware:
        if _would_lose_work(config, observation, current, current - need, long_duration):
            return current, Reason.HOLD_JOBS_WOULD_BE_LOST
        if state.last_scale_down_at is not None and now - state.last_scale_down_at < config.scale_down_cooldown_s:
            return current, Reason.HOLD_COOLDOWN
        return need, Reason.SCALE_TO_ZERO if need == 0 else Reason.SCALE_DOWN
    paid_left = _paid_left(config, observation, details)
    # Paid replicas stay to the end of their interval; those at its end and not needed leave together.
    # A tick when no running job would be lost may not come again before the boundary (then each buys
    # another interval): at such a tick, those within early_release_s of it leave already.
    window = config.scale_down_lead_s
    if not _would_lose_work(config, observation, current, current - need, long_duration):
        window = max(window, config.early_release_s)
    step = sum(1 for left in paid_left if left <= window)
    if step == 0:
        return current, Reason.HOLD_BILLING_BOUNDARY
    desired = max(need, current - step)
    stopping = current - desired
    if _would_lose_work(config, observation, current, stopping, long_duration):
        # Holding buys each spare at its boundary another interval; restarting a young job may cost less, as
        # long as the restarted jobs, back at the queue's head, still meet the target: as many as may leave.
        # Not while replicas stopped a moment ago still drain: their jobs are listed as running, not on which.
        draining = state.last_scale_down_at is not None and now - state.last_scale_down_at <= config.worker_drain_s
        for fewer in range(0 if draining else stopping, 0, -1):
            victims = _victims(config, observation, fewer, long_duration)
            restarted = sum(spent + config.worker_drain_s for spent in victims)
            if (
                config.lost_work_weight > 0
                and restarted * config.lost_work_weight <= fewer * config.billing_interval_s
                and _restarts_find_a_replica(observation, current, fewer, len(victims))
                and _restarts_acceptable(config, observation, current, fewer, duration, long_duration)
            ):
                details["restarted_work_s"] = round(restarted, 1)
                return current - fewer, Reason.SCALE_DOWN_RESTARTING_JOBS
        return current, Reason.HOLD_JOBS_WOULD_BE_LOST
    return desired, Reason.SCALE_TO_ZERO if desired == 0 else Reason.SCALE_DOWN


def _learn_from_opening(config: ScalingConfig, state: PolicyState, observation: Observation) -> PolicyState:
    """Add this tick's running jobs to the load of the block opening it falls in; outside it, that opening
    is over and its mean load, rounded up, is learned."""
    started_at = opening_start(config.timetable, observation.now, config.billing_interval_s)
    total, ticks = state.opening_load
    if started_at is not None and started_at == state.opening_started_at:
        return replace(state, opening_load=(total + observation.running, ticks + 1))
    if ticks:
        state = replace(state, learned_prewarm=math.ceil(total / ticks - 1e-9))
    if started_at is None:
        return state
    return replace(state, opening_started_at=started_at, opening_load=(float(observation.running), 1))


def _paid_left(config: ScalingConfig, observation: Observation, details: dict[str, Any]) -> list[float]:
    """Seconds each replica has left in its paid interval (none when billed per second), soonest first; the soonest
    goes into the details."""
    paid_left = sorted(
        0.0 if replica.per_second
        else seconds_to_boundary(replica.started_at, observation.now, config.billing_interval_s, config.billing_anchor)
        for replica in observation.replicas
    )
    if paid_left:
        details["next_billing_boundary_in_s"] = round(paid_left[0], 3)
    return paid_left


def _free_at(config: ScalingConfig, observation: Observation, current: int, duration: float) -> list[float]:
    """When each of the ``current`` replicas can take a queued job: busy ones when their job should end."""
    now = observation.now
    ready = _ready_at(config, observation, current)
    busy = min(observation.running, current)
    elapsed = sorted(observation.running_elapsed_s, reverse=True)[:busy]
    # A running job of unknown age is taken as half done.
    left = sorted(max(duration - spent, 0.1 * duration) for spent in elapsed)
    left += [0.5 * duration] * (busy - len(left))
    return sorted([now + remaining for remaining in left] + ready[busy:])


def _ready_at(config: ScalingConfig, observation: Observation, current: int) -> list[float]:
    """When each of the ``current`` replicas is (or was) ready to work, soonest first; missing ones start now."""
    now = observation.now
    # A start time ahead of our clock (skew with the platform) counts as "just started".
    ready = sorted(
        max(now, min(replica.started_at, now) + config.replica_boot_s) for replica in observation.replicas
    )
    return (ready + [now + config.replica_boot_s] * current)[:current]


def _would_be_interrupted(config: ScalingConfig, observation: Observation, current: int, duration: float) -> int:
    """Running jobs that would not finish within the worker's drain if their replica were stopped now."""
    busy = min(observation.running, current)
    return busy - min(busy, _ending(config, observation, duration))


def _ending(config: ScalingConfig, observation: Observation, duration: float) -> int:
    """Running jobs that end within the worker's drain (a job of unknown age does not)."""
    elapsed = observation.running_elapsed_s[: observation.running]
    return sum(1 for spent in elapsed if duration - spent <= config.worker_drain_s)


def _would_lose_work(
    config: ScalingConfig, observation: Observation, current: int, stopping: int, duration: float
) -> bool:
    """Would stopping ``stopping`` of the ``current`` replicas throw away more than ``max_lost_work_s`` of a
    running job, or restart one that no idle replica left would take at once?

    Assumes the worst victims: the busy replicas with the most work left, i.e. the youngest jobs. A young
    job is cheap to restart on the replica that stays; an old one is not.
    """
    victims = _victims(config, observation, stopping, duration)
    return bool(victims) and (
        any(spent > config.max_lost_work_s for spent in victims)
        or not _restarts_find_a_replica(observation, current, stopping, len(victims))
    )


def _restarts_find_a_replica(observation: Observation, current: int, stopping: int, restarted: int) -> bool:
    """Does an idle (or starting) replica stay for each restarted job? The worst case stops the busy ones first."""
    idle = current - min(observation.running, current)
    idle_stopped = stopping - min(stopping, observation.running)
    return idle - idle_stopped >= restarted


def _victims(config: ScalingConfig, observation: Observation, stopping: int, duration: float) -> list[float]:
    """How long the running jobs a scale-down of ``stopping`` could stop (the worst case) have run, less
    those that end within the worker's drain anyway."""
    if not config.victim_may_be_busy or stopping <= 0:
        return []
    jobs = _running_jobs(observation, duration)[:stopping]
    return [spent for spent, _, _ in jobs if duration - spent > config.worker_drain_s]


def _running_jobs(observation: Observation, duration: float) -> list[tuple[float, float, bool]]:
    """The running jobs as (run so far, wait before it started, listed), youngest first: the worst case stops
    these first. One the queue does not list (comfy-multi) counts as half of ``duration`` done."""
    listed = len(observation.running_elapsed_s)
    waited = [*observation.running_waited_s[:listed], *[0.0] * listed][:listed]
    jobs = [(spent, wait, True) for spent, wait in sorted(zip(observation.running_elapsed_s, waited, strict=True))]
    return sorted([*jobs[: observation.running], *[(0.5 * duration, 0.0, False)] * (observation.running - listed)])


def _queued_ages(observation: Observation) -> list[float]:
    """The queued jobs' ages, oldest first; jobs the observation has no age for count as just submitted."""
    ages = sorted((max(0.0, age) for age in observation.pending_ages_s), reverse=True)[: observation.pending]
    return ages + [0.0] * (observation.pending - len(ages))


def _restarts_acceptable(
    config: ScalingConfig, observation: Observation, current: int, stopping: int, duration: float,
    long_duration: float,
) -> bool:
    """May a worst-case scale-down of ``stopping`` restart the jobs it stops?

    Only if the queue, with them back at its head, meets the wait target as well as with every replica
    kept: the restarted ones on time, no more jobs late, none later than the latest. A job the queue does
    not list is never restarted by choice: how far it has run is not known.

    A restarted job has waited what it waited before it started (earlier runs included: the queue keeps its
    place and age), plus its run so far and the drain; so the target bounds how often one job is restarted.
    A replica stop does not use up the job's attempts (the queue manager's MAX_ATTEMPTS counts faults).
    """
    assert config.target_wait_s is not None
    target, now = config.target_wait_s, observation.now
    kept, restarted = _after_stopping(config, observation, current, stopping, duration, long_duration)
    if not all(listed for _, listed in restarted):
        return False
    if not restarted:
        return True
    requeued = sorted((age for age, _ in restarted), reverse=True)
    # The restarted jobs themselves start within the target: a restart does not spend the p95's allowance.
    starts = predicted_starts(kept, len(requeued), duration)
    if any(age + start - now > target for age, start in zip(requeued, starts, strict=True)):
        return False
    queued = _queued_ages(observation)
    queue = requeued + queued
    everyone, _ = _after_stopping(config, observation, current, 0, duration, long_duration)
    allowed = late_allowance(observation.recent_waits_s, len(queue), target)
    late_anyway = excess(now, everyone, queued, duration, target, allowed) if queued else 0
    latest = max(LATE_LIMIT * target if allowed else target,
                 longest_wait(now, everyone, queued, duration) if queued else 0.0)
    return (
        excess(now, kept, queue, duration, target, allowed) <= late_anyway
        and longest_wait(now, kept, queue, duration) <= latest + 1e-6
    )


def _after_stopping(
    config: ScalingConfig, observation: Observation, current: int, stopping: int, duration: float,
    long_duration: float,
) -> tuple[list[float], list[tuple[float, bool]]]:
    """When each replica left after a worst-case scale-down of ``stopping`` can take a queued job; and for each
    job it stops (the youngest, those not ending within the drain) how long it will have waited when handed
    back, and whether the queue lists it."""
    now = observation.now
    busy = min(observation.running, current)
    jobs = _running_jobs(observation, duration)
    stopped = min(stopping, busy)
    restarted = [
        (wait + spent + config.worker_drain_s, listed)
        for spent, wait, listed in jobs[:stopped]
        if long_duration - spent > config.worker_drain_s
    ]
    idle = _ready_at(config, observation, current)[busy:]
    kept_idle = idle[: len(idle) - (stopping - stopped)]  # the worst case stops the latest to be ready next
    kept_busy = [now + max(duration - spent, 0.1 * duration) for spent, _, _ in jobs[stopped:busy]]
    return sorted(kept_busy + kept_idle), restarted
