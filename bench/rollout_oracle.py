"""What `ours` would bill if, at each choice, it could try every option against the arrivals to come.

    ./dev python -m bench.rollout_oracle --seeds 1-5     # workshop, target_wait_s=120, 10 replicas: ~3 min

Not a policy: an oracle that bounds what a better rule could gain (issue 14, target 2). At each tick where
`ours` changes the count, could release a replica within a minute of its billing boundary, or could add one
for a queued job, the simulation is copied once per choice (`ours`'s, holding, one fewer, one more) with the
true arrivals, each copy runs on under plain `ours` for ``--ahead-min`` minutes, and the choice with the
fewest intervals begun in that time, plus ``--late-weight`` per job that waited longer than the target,
is taken. Printed per seed beside `ours` alone and the clairvoyant at the target, with the issue's limit
(1.25 x the clairvoyant) and whether the oracle meets it at a p95 within the target.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

from scaler.billing import bill_for_runtime, seconds_to_boundary
from scaler.policy import Replica, ScalingConfig
from scaler.simulator.cli import run_policy
from scaler.simulator.platform import PlatformModel, SimReplica, Simulation
from scaler.simulator.policies import Ours, QueueView
from scaler.simulator.report import summarize
from scaler.simulator.workloads import BUILT_IN, built_in

# A replica this close to its billing boundary may be released by the oracle even when `ours` keeps it.
RELEASE_WINDOW_S = 60.0


@dataclass
class RolloutOurs(Ours):
    """`ours`, overruled where a look ahead with the true arrivals finds a cheaper choice."""

    ahead_s: float = 1800.0
    late_weight: float = 0.5
    simulation: Simulation | None = None
    overrides: int = 0

    def target(self, now: float, queue: QueueView, replicas: tuple[Replica, ...]) -> int:
        chosen = super().target(now, queue, replicas)
        options = self._options(now, queue, replicas, chosen)
        if len(options) == 1:
            return chosen
        costs = {option: self._cost_ahead(now, option) for option in options}
        best = min(options, key=lambda option: (costs[option], option != chosen))
        self.overrides += best != chosen
        return best

    def _options(self, now: float, queue: QueueView, replicas: tuple[Replica, ...], chosen: int) -> list[int]:
        current = len(replicas)
        options = {chosen}
        if chosen != current:
            options |= {current, chosen - 1 if chosen > current + 1 else current}
        elif current:
            to_boundary = min(seconds_to_boundary(replica.started_at, now, self.config.billing_interval_s,
                                                  self.config.billing_anchor) for replica in replicas)
            if to_boundary <= RELEASE_WINDOW_S:
                options.add(current - 1)
            if queue.pending:
                options.add(current + 1)
        return sorted(option for option in options if 0 <= option <= self.config.max_replicas)

    def _cost_ahead(self, now: float, option: int) -> float:
        assert self.simulation is not None and self.config.target_wait_s is not None
        plain = Ours(config=self.config, name="ours", state=self.state)
        ahead = self.simulation.what_if(now, option, plain)
        end = now + self.ahead_s
        ahead.advance(end)
        begun = sum(self._begun_between(replica, now, end) for replica in ahead.outcome.replicas)
        target = self.config.target_wait_s
        late = sum(1 for job in ahead.outcome.jobs
                   if now < job.attempt_started_s <= end and job.attempt_started_s - job.submit_s > target)
        late += sum(1 for job in ahead.queued if end - job.submit_s > target)
        return begun + self.late_weight * late

    def _begun_between(self, replica: SimReplica, now: float, end: float) -> int:
        """The replica's billing intervals that begin at ``now`` or later and before ``end``."""
        until = min(end, replica.stopped_at if replica.stopped_at is not None else math.inf)
        if until <= replica.started_at:
            return 0
        interval, anchor = self.config.billing_interval_s, self.config.billing_anchor
        before = bill_for_runtime(replica.started_at, now, interval, anchor) if replica.started_at < now else 0
        return max(0, bill_for_runtime(replica.started_at, until, interval, anchor) - before)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="workshop", choices=sorted(BUILT_IN))
    parser.add_argument("--seeds", default="1-5")
    parser.add_argument("--target-wait-s", type=float, default=120.0)
    parser.add_argument("--max-replicas", type=int, default=10)
    parser.add_argument("--ahead-min", type=float, default=30.0, help="how far each choice is played ahead")
    parser.add_argument("--late-weight", type=float, default=0.5, help="intervals a job past the target costs")
    args = parser.parse_args(argv)
    low, _, high = args.seeds.partition("-")
    platform = PlatformModel()
    config = ScalingConfig(target_wait_s=args.target_wait_s, max_replicas=args.max_replicas)
    print(f"{args.workload}, target_wait_s={args.target_wait_s:g}, max_replicas={args.max_replicas}, "
          f"{args.ahead_min:g} min ahead, {args.late_weight:g} per late job; cost $ / p95 s")
    print("| seed | ours | rollout oracle (overrides) | clairvoyant | limit (1.25x) | oracle meets it |")
    print("|---:|---|---|---|---|---|")
    for seed in range(int(low), int(high or low) + 1):
        workload = built_in(args.workload, seed)
        ours, _ = run_policy(workload, "ours", config, platform, seed)
        oracle = RolloutOurs(config=replace(config, timetable=workload.timetable), name="rollout-oracle",
                             ahead_s=60 * args.ahead_min, late_weight=args.late_weight)
        oracle.simulation = Simulation(workload, oracle, platform, seed)
        found = summarize(workload.name, oracle.name, oracle.simulation.run(), platform)
        reference, _ = run_policy(workload, f"clairvoyant:{args.target_wait_s:g}", config, platform, seed)
        limit = 1.25 * reference.cost_usd
        meets = found.cost_usd <= limit + 1e-9 and found.wait_p95_s <= args.target_wait_s
        print(f"| {seed} | {ours.cost_usd:.2f} / {ours.wait_p95_s:.0f} | {found.cost_usd:.2f} / "
              f"{found.wait_p95_s:.0f} ({oracle.overrides}) | {reference.cost_usd:.2f} / {reference.wait_p95_s:.0f} | "
              f"{limit:.2f} | {'yes' if meets else 'no'} |")


if __name__ == "__main__":
    main()
