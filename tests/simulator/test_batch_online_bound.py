"""bench.batch_online_bound: on a batch, the clairvoyant's lead over ours is the cold start it skips by
starting before the jobs arrive; a scaler that starts when they arrive cannot bill less at ours's p95."""

from __future__ import annotations

import random

from bench.batch_online_bound import StartThenDrop, cheapest_from
from scaler.simulator.cli import run_policy
from scaler.simulator.platform import PlatformModel, Simulation
from scaler.simulator.report import summarize
from scaler.simulator.workloads import JobSpec, Workload

CAP = 2


def small_batch() -> Workload:
    rng = random.Random("small-batch")
    return Workload("small-batch", tuple(JobSpec(60.0, rng.uniform(5.0, 7.0)) for _ in range(200)), 3600.0)


def test_ours_bills_what_the_cheapest_plan_starting_with_the_batch_bills_at_its_p95():
    workload, platform = small_batch(), PlatformModel()
    report, outcome = run_policy(workload, f"ours:max_replicas={CAP}", platform=platform)
    intervals, p95, _longest, plan = cheapest_from(workload, platform, CAP, report.wait_p95_s, 0, 0.0)
    assert plan.start_s >= 60.0
    assert p95 <= report.wait_p95_s
    assert outcome.billed_intervals == intervals


def test_a_head_start_of_one_cold_start_is_what_bills_less():
    workload, platform = small_batch(), PlatformModel()
    report, _outcome = run_policy(workload, f"ours:max_replicas={CAP}", platform=platform)
    online = cheapest_from(workload, platform, CAP, report.wait_p95_s, 0, 0.0)
    forewarned = cheapest_from(workload, platform, CAP, report.wait_p95_s, 0, platform.boot_s)
    assert forewarned[3].start_s < 60.0
    assert forewarned[0] < online[0]


def test_the_reported_plan_replays_to_the_reported_figures():
    workload, platform = small_batch(), PlatformModel()
    intervals, p95, longest, plan = cheapest_from(workload, platform, CAP, 10_000.0, 0, 0.0)
    outcome = Simulation(workload, StartThenDrop(plan.start_s, plan.first, plan.drop_s, plan.then), platform).run()
    report = summarize(workload.name, "replay", outcome, platform)
    assert (outcome.billed_intervals, report.wait_p95_s, report.wait_max_s) == (intervals, p95, longest)
    assert all(job.finished_s is not None for job in outcome.jobs)
