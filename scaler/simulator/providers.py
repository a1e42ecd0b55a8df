"""Several providers in the simulator: what fallback is worth when the primary runs out of capacity.

A time-stepped model, kept apart from the single-provider model in ``platform.py``: each provider has a price,
a cold start, its billing rule, a capacity limit and outage windows (it reports ``quota_reached`` and places
no new replica; replicas already running keep running). Every tick the live code decides: the policy
(``scaler.policy.decide``) says how many, the allocator (``scaler.allocator.allocate``) says where, and the
cost ledger (``scaler.ledger``) bills each provider by its own rule. Jobs are taken FIFO by ready, idle
replicas; a replica removed while busy hands its job back to the front of the queue.

    python -m scaler.simulator.providers [--seed N] [--outage-start-h 10 --outage-h 1]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import deque
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from common.cli import integer, number
from common.timespans import DAY_S, HOUR_S
from scaler.allocator import AllocatorConfig, AllocatorState, ProviderSpec, ProviderView, allocate
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING, BillingRule, CostLedger
from scaler.policy import Observation, PolicyState, Replica, ScalingConfig, decide
from scaler.simulator.workloads import Workload, built_in

STEP_S = 5.0
DAY_H = 24.0  # the workshop day the outage falls in


@dataclass(frozen=True, slots=True)
class SimProvider:
    name: str
    price_per_hour: float
    cold_start_s: float
    billing: BillingRule
    capacity: int
    outages: tuple[tuple[float, float], ...] = ()

    def out(self, now: float) -> bool:
        return any(start <= now < end for start, end in self.outages)


@dataclass(slots=True)
class _Replica:
    id: str
    provider: str
    started_at: float
    ready_at: float
    job: int | None = None
    busy_until: float = 0.0


@dataclass
class ProviderRun:
    """One simulated day: jobs done, waits (s), cost per provider, and when fallback was engaged.

    ``waits``: one per job, until its last start; a job never started waits until the end of the day.
    """

    name: str
    jobs: int
    done: int
    waits: list[float] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)
    replica_hours: dict[str, float] = field(default_factory=dict)
    fallback_s: float = 0.0  # time with fallback engaged

    def p95_wait_s(self) -> float:
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def simulate(
    name: str,
    workload: Workload,
    providers: tuple[SimProvider, ...],
    policy: ScalingConfig,
    *,
    tick_s: float = 15.0,
    start_deadline_s: float = 300.0,
    retry_after_s: float = 300.0,
) -> ProviderRun:
    config = AllocatorConfig(
        providers=tuple(ProviderSpec(p.name, p.capacity, p.price_per_hour,
                                     commit_s=p.billing.interval_s if not p.billing.per_second else tick_s)
                        for p in providers),
        error_ticks=3, start_deadline_s=start_deadline_s, retry_after_s=retry_after_s,
        max_spend_per_hour=policy.max_spend_per_hour, max_spend_per_day=policy.max_spend_per_day,
    )
    by_name = {p.name: p for p in providers}
    jobs = workload.jobs
    queue: deque[int] = deque()
    replicas: list[_Replica] = []
    ledger = CostLedger()
    run = ProviderRun(name, len(jobs), 0)
    state, allocator = PolicyState(), AllocatorState()
    started: dict[int, float] = {}  # job -> when it last started
    next_job, serial, now, next_tick = 0, 0, 0.0, 0.0
    while now <= workload.horizon_s:
        while next_job < len(jobs) and jobs[next_job].submit_s <= now:
            queue.append(next_job)
            next_job += 1
        for replica in replicas:
            if replica.job is not None and replica.busy_until <= now:
                replica.job, run.done = None, run.done + 1
        for replica in replicas:
            if replica.job is None and replica.ready_at <= now and queue:
                job = queue.popleft()
                replica.job, replica.busy_until = job, now + jobs[job].duration_s
                started[job] = now
        if now >= next_tick:
            next_tick += tick_s
            busy = sum(1 for r in replicas if r.job is not None)
            observation = Observation(now=now, pending=len(queue), running=busy,
                                      replicas=tuple(Replica(r.id, r.started_at, by_name[r.provider].billing.per_second)
                                                     for r in replicas))
            decision = decide(policy, state, observation)
            state = decision.new_state
            views = {
                p.name: ProviderView(
                    live=sum(1 for r in replicas if r.provider == p.name),
                    ready=sum(1 for r in replicas if r.provider == p.name and r.ready_at <= now),
                    status="quota_reached" if p.out(now) else "healthy",
                )
                for p in providers
            }
            placed = allocate(config, allocator, decision.desired, views, now, busy=busy,
                              spent_last_day=ledger.spent_since(now - DAY_S))
            allocator = placed.new_state
            run.fallback_s += tick_s * placed.fallback_engaged
            for provider_name, target in placed.targets.items():
                provider = by_name[provider_name]
                mine = [r for r in replicas if r.provider == provider_name]
                while len(mine) < target and not provider.out(now):
                    serial += 1
                    replica = _Replica(f"{provider_name}-{serial}", provider_name, now, now + provider.cold_start_s)
                    replicas.append(replica)
                    mine.append(replica)
                for replica in sorted(mine, key=lambda r: (r.job is not None, -r.started_at))[: len(mine) - target]:
                    if replica.job is not None:
                        queue.appendleft(replica.job)
                        del started[replica.job]
                    replicas.remove(replica)
                    _bill_stop(run, provider, replica, now)
            for p in providers:
                ledger.charge(p.name, [r for r in replicas if r.provider == p.name], now,
                              price_per_hour=p.price_per_hour, rule=p.billing)
        now += STEP_S
    for replica in replicas:
        _bill_stop(run, by_name[replica.provider], replica, now)
    for p in providers:
        ledger.charge(p.name, [r for r in replicas if r.provider == p.name], now,
                      price_per_hour=p.price_per_hour, rule=p.billing)
        run.cost[p.name] = round(ledger.spent_since(-1.0, p.name), 2)
    run.waits = [started.get(n, workload.horizon_s) - job.submit_s for n, job in enumerate(jobs)]
    return run


def _bill_stop(run: ProviderRun, provider: SimProvider, replica: _Replica, now: float) -> None:
    run.replica_hours[provider.name] = run.replica_hours.get(provider.name, 0.0) + (now - replica.started_at) / HOUR_S


def outage_day(seed: int = 1, outage_start_h: float = 10.0, outage_h: float = 1.0) -> list[ProviderRun]:
    """The workshop day three ways: no outage; Verda without capacity for ``outage_h`` with and without
    RunPod as the fallback. Prices: Verda's H100 list price, RunPod's secure H100 (both per replica-hour)."""
    workload = built_in("workshop", seed)
    window = ((outage_start_h * HOUR_S, (outage_start_h + outage_h) * HOUR_S),)
    verda = SimProvider("verda", 2.30, cold_start_s=60.0, billing=VERDA_BILLING, capacity=10)
    runpod = SimProvider("runpod", 2.99, cold_start_s=90.0, billing=RUNPOD_BILLING, capacity=10)
    policy = ScalingConfig(max_replicas=10, price_per_replica_hour=0.0)
    verda_out = SimProvider(verda.name, verda.price_per_hour, verda.cold_start_s, verda.billing, verda.capacity,
                            outages=window)
    return [
        simulate("no outage, Verda only", workload, (verda,), policy),
        simulate(f"Verda out {outage_h:g} h, no fallback", workload, (verda_out,), policy),
        simulate(f"Verda out {outage_h:g} h, RunPod fallback", workload, (verda_out, runpod), policy),
    ]


def print_runs(console: Console, runs: list[ProviderRun]) -> None:
    table = Table(title="workshop day, primary without capacity (python -m scaler.simulator.providers)")
    for column in ("scenario", "jobs done", "p95 wait s", "max wait s", "waited > 10 min", "cost verda",
                   "cost runpod", "cost total", "fallback min"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            run.name, f"{run.done}/{run.jobs}", f"{run.p95_wait_s():.0f}", f"{max(run.waits, default=0):.0f}",
            str(sum(1 for wait in run.waits if wait > 600)),
            f"{run.cost.get('verda', 0):.2f}", f"{run.cost.get('runpod', 0):.2f}", f"{sum(run.cost.values()):.2f}",
            f"{run.fallback_s / 60:.0f}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scaler.simulator.providers", description=__doc__)
    parser.add_argument("--seed", type=integer, default=1)
    parser.add_argument("--outage-start-h", type=number, default=10.0, help="hour of the day Verda runs out (0-24)")
    parser.add_argument("--outage-h", type=number, default=1.0, help="how long it has no capacity (> 0 h, to 24)")
    args = parser.parse_args(argv)
    if not 0 <= args.outage_start_h < DAY_H:  # each also refuses nan
        parser.error(f"--outage-start-h {args.outage_start_h:g}: an hour of the day, 0 to under {DAY_H:g}")
    if not 0 < args.outage_h <= DAY_H:
        parser.error(f"--outage-h {args.outage_h:g}: more than 0 and at most {DAY_H:g} hours")
    print_runs(Console(width=150), outage_day(args.seed, args.outage_start_h, args.outage_h))
    return 0


if __name__ == "__main__":
    sys.exit(main())
