"""The reference: a planner that knows every arrival and duration in advance, replayed in the same model.

It plans leases (a replica started at a tick and kept for whole billing intervals), job by job in
submission order, on the cheapest replica that starts the job within a wait cap, buying a new replica
(started early enough to be ready when the job arrives) only when no paid one can. Up to a share of jobs
may instead wait past the cap on a paid replica (a p95 target tolerates 5 % late jobs). A search over the
wait cap and that share keeps the cheapest plan whose *replay* through ``Simulation`` (same platform, same
scale-down victim) meets the p95 target and optional max wait. The replay is what is reported.

Deterministic; cached per (trace, platform, cap, targets) for the life of the process.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass, field

from scaler.policy import Replica
from scaler.simulator.platform import PlatformModel, SimOutcome, Simulation
from scaler.simulator.policies import QueueView, WorkerModel
from scaler.simulator.report import job_waits
from scaler.simulator.workloads import Workload

# Slack between a planned job's end and its replica's stop (worker poll, event order).
END_MARGIN_S = 5.0
WAIT_CAPS_S = (0.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 150.0, 180.0, 240.0, 300.0, 420.0, 600.0, 900.0,
               1200.0, 1800.0, 2700.0, 3600.0)
LATE_SHARES = (0.0, 0.02, 0.04)


@dataclass(slots=True)
class Lease:
    start: float
    intervals: int
    free_at: float

    def paid_until(self, interval_s: float) -> float:
        return self.start + self.intervals * interval_s


@dataclass(frozen=True, slots=True)
class Plan:
    leases: tuple[tuple[float, float], ...]  # (start, stop) per replica
    intervals: int
    waits: tuple[float, ...]


@dataclass
class Clairvoyant:
    """Replays a plan: the target at a tick is the number of leases running then.

    Closed loop in one respect: a job the platform interrupted (the victim was not the planned one) is never
    stranded with no replica left.
    """

    plan: Plan
    name: str = "clairvoyant"
    worker: WorkerModel = field(default_factory=WorkerModel)

    def __post_init__(self) -> None:
        self._starts = sorted(start for start, _ in self.plan.leases)
        self._stops = sorted(stop for _, stop in self.plan.leases)

    def target(self, now: float, queue: QueueView, replicas: tuple[Replica, ...]) -> int:
        planned = bisect.bisect_right(self._starts, now) - bisect.bisect_right(self._stops, now)
        return max(planned, 1 if queue.pending + queue.running else 0)


def work_floor_intervals(workload: Workload, platform: PlatformModel) -> int:
    """All job-seconds packed into whole intervals: no plan can bill less."""
    return math.ceil(sum(job.duration_s for job in workload.jobs) / platform.billing_interval_s)


def plan_leases(
    workload: Workload,
    platform: PlatformModel,
    cap: int,
    wait_cap_s: float,
    late_share: float = 0.0,
    max_wait_s: float | None = None,
) -> Plan:
    interval, tick = platform.billing_interval_s, platform.tick_s
    boot = platform.boot_s + WorkerModel().poll_interval_s
    leases: list[Lease] = []
    waits = []
    late_left = math.floor(late_share * len(workload.jobs))
    for job in workload.jobs:
        arrive, run = job.submit_s, job.duration_s
        options = []  # (extra intervals, start, lease index or -1 for a new replica)
        for index, lease in enumerate(leases):
            if lease.paid_until(interval) < arrive - interval:
                continue  # long gone; keeping it through the gap would never be cheapest
            begin = max(arrive, lease.free_at, lease.start + boot)
            needed = math.ceil((begin + run + END_MARGIN_S - lease.start) / interval)
            options.append((max(0, needed - lease.intervals), begin, index))
        new_start = max(0.0, math.floor((arrive - boot) / tick) * tick)
        new_begin = max(arrive, new_start + boot)
        new_intervals = math.ceil((new_begin + run + END_MARGIN_S - new_start) / interval)
        if _alive_max(leases, new_start, new_start + new_intervals * interval, interval) < cap:
            options.append((new_intervals, new_begin, -1))
        on_time = [o for o in options if o[1] - arrive <= wait_cap_s]
        choice = None
        if on_time:
            choice = min(on_time, key=lambda o: (o[0], o[1], o[2] == -1))
            if choice[0] > 0 and late_left > 0:
                free_late = [o for o in options if o[0] == 0 and o[2] != -1 and (
                    max_wait_s is None or o[1] - arrive <= max_wait_s)]
                if free_late:
                    choice, late_left = min(free_late, key=lambda o: o[1]), late_left - 1
        else:
            choice = min(options, key=lambda o: (o[1], o[0]))
        extra, begin, index = choice
        if index == -1:
            leases.append(Lease(new_start, extra, begin + run))
        else:
            leases[index].intervals += extra
            leases[index].free_at = begin + run
        waits.append(begin - arrive)
    # A replica leaves as soon as its last planned job is done (the rest of its interval is paid anyway,
    # but an idle replica kept around takes jobs planned for others and throws the replay off its plan).
    spans = tuple(sorted(
        (lease.start, min(lease.paid_until(interval), math.ceil((lease.free_at + END_MARGIN_S) / tick) * tick))
        for lease in leases
    ))
    return Plan(spans, sum(lease.intervals for lease in leases), tuple(waits))


def _alive_max(leases: list[Lease], start: float, end: float, interval: float) -> int:
    """Most leases alive at once within [start, end)."""
    points = []
    for lease in leases:
        lo, hi = max(lease.start, start), min(lease.paid_until(interval), end)
        if lo < hi:
            points += [(lo, 1), (hi, -1)]
    alive = peak = 0
    for _, step in sorted(points):
        alive += step
        peak = max(peak, alive)
    return peak


def _p(ordered: list[float], percent: float) -> float:
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)] if ordered else 0.0


_CACHE: dict[tuple, tuple[Plan, SimOutcome]] = {}


def best_plan(
    workload: Workload,
    platform: PlatformModel,
    cap: int,
    target_p95_s: float,
    target_max_s: float | None = None,
    seed: int = 0,
) -> tuple[Plan, SimOutcome]:
    """The cheapest replayed plan with p95 wait <= target (and max wait <= ``target_max_s``)."""
    key = (_fingerprint(workload), platform, cap, round(target_p95_s, 1),
           None if target_max_s is None else round(target_max_s, 1), seed)
    if key in _CACHE:
        return _CACHE[key]
    # Fast, in the planner's own arithmetic: the candidates, cheapest first.
    candidates: dict[tuple, Plan] = {}
    for wait_cap in WAIT_CAPS_S:
        for share in LATE_SHARES:
            plan = plan_leases(workload, platform, cap, wait_cap, share, target_max_s)
            candidates.setdefault(plan.leases, plan)
    ordered = sorted(candidates.values(), key=lambda plan: (plan.intervals, _p(sorted(plan.waits), 95)))
    fallback = None
    for plan in ordered:
        planned = sorted(plan.waits)
        if _p(planned, 95) > target_p95_s + 1e-6 and fallback is not None:
            continue
        outcome = Simulation(workload, Clairvoyant(plan), platform, seed).run()
        waits = sorted(job_waits(outcome))
        if _p(waits, 95) <= target_p95_s + 1e-6 and (target_max_s is None or waits[-1] <= target_max_s + 1e-6):
            _CACHE[key] = (plan, outcome)
            return plan, outcome
        if fallback is None or _p(waits, 95) < _p(sorted(job_waits(fallback[1])), 95):
            fallback = (plan, outcome)
    assert fallback is not None
    _CACHE[key] = fallback
    return fallback


def _fingerprint(workload: Workload) -> str:
    digest = hashlib.sha256(repr((workload.horizon_s, workload.jobs)).encode())
    return digest.hexdigest()
