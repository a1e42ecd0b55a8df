"""What a scaler that learns of a batch only when it arrives must bill to keep today's p95, per seed.

    ./dev python -m bench.batch_online_bound --seeds 1-5

The clairvoyant reference knows the batch is coming and starts its replicas a cold start early; a scaler
that reads the queue can start them at the first tick after the jobs arrive at the earliest. This replays
every plan of that shape (n replicas from that tick, k ≤ n of them from a later tick until the queue is
empty, then none) through the same ``Simulation`` and prints the cheapest that finishes every job with a p95 wait
no worse than ``ours``'s; then the same for plans that may start a cold start (35 s) before the jobs arrive,
as only a scaler told in advance could; beside ``ours`` and the clairvoyant at ``ours``'s p95 and max wait.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

from scaler.policy import Replica
from scaler.simulator.clairvoyant import best_plan
from scaler.simulator.cli import run_policy
from scaler.simulator.platform import PlatformModel, Simulation
from scaler.simulator.policies import QueueView, WorkerModel
from scaler.simulator.report import summarize
from scaler.simulator.workloads import Workload, built_in


@dataclass
class StartThenDrop:
    """``first`` replicas from ``start_s``, ``then`` from ``drop_s`` while work is left, none once it is done."""

    start_s: float
    first: int
    drop_s: float
    then: int
    worker: WorkerModel = field(default_factory=WorkerModel)
    name: str = "start-then-drop"

    def target(self, now: float, queue: QueueView, replicas: tuple[Replica, ...]) -> int:
        if now < self.start_s:
            return 0
        if now < self.drop_s:
            return self.first
        return self.then if queue.pending + queue.running else 0


def cheapest_from(
    workload: Workload, platform: PlatformModel, cap: int, p95_s: float, seed: int, head_start_s: float
) -> tuple | None:
    """(intervals, p95, max, plan) of the cheapest plan of that shape that finishes every job with a p95
    wait of at most ``p95_s``, its replicas starting ``head_start_s`` before the jobs arrive at the earliest;
    None when no plan of that shape does."""
    arrival = min(job.submit_s for job in workload.jobs)
    start = math.ceil((arrival - head_start_s) / platform.tick_s) * platform.tick_s
    ticks = int(2 * platform.billing_interval_s / platform.tick_s)
    best = None
    for first in range(1, cap + 1):
        for then in range(first + 1):
            for step in range(1, ticks + 1 if then < first else 2):  # keeping all, the drop tick is moot
                plan = StartThenDrop(start, first, start + step * platform.tick_s, then)
                outcome = Simulation(workload, plan, platform, seed).run()
                report = summarize(workload.name, plan.name, outcome, platform)
                finished = all(job.finished_s is not None for job in outcome.jobs)
                cheaper = best is None or outcome.billed_intervals < best[0]
                if finished and report.wait_p95_s <= p95_s + 1e-6 and cheaper:
                    best = (outcome.billed_intervals, report.wait_p95_s, report.wait_max_s, plan)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="batch", choices=("batch", "mixed-batch"))  # all jobs at once
    parser.add_argument("--seeds", default="1-5")
    parser.add_argument("--max-replicas", type=int, default=5)
    args = parser.parse_args(argv)
    low, _, high = args.seeds.partition("-")
    platform = PlatformModel()
    print("| seed | ours: intervals / p95 / max | cheapest plan starting when the jobs arrive | "
          "... starting a cold start before they arrive | clairvoyant at ours's p95 and max |")
    print("|---:|---|---|---|---|")
    for seed in range(int(low), int(high or low) + 1):
        workload = built_in(args.workload, seed)
        report, outcome = run_policy(workload, f"ours:max_replicas={args.max_replicas}", platform=platform, seed=seed)
        online = cheapest_from(workload, platform, args.max_replicas, report.wait_p95_s, seed, 0.0)
        forewarned = cheapest_from(workload, platform, args.max_replicas, report.wait_p95_s, seed, platform.boot_s)
        _plan, reference = best_plan(workload, platform, args.max_replicas, report.wait_p95_s, report.wait_max_s,
                                     seed=seed)
        print(f"| {seed} | {outcome.billed_intervals} / {report.wait_p95_s:.0f} / {report.wait_max_s:.0f} | "
              f"{_described(online)} | {_described(forewarned)} | {reference.billed_intervals} |")


def _described(found: tuple | None) -> str:
    if found is None:
        return "none meets the p95"
    intervals, p95, longest, plan = found
    then = f"{plan.then} from {plan.drop_s:.0f} s" if plan.then else f"none from {plan.drop_s:.0f} s"
    return f"{intervals} / {p95:.0f} / {longest:.0f} ({plan.first} from {plan.start_s:.0f} s, {then})"


if __name__ == "__main__":
    main()
