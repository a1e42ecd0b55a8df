"""The clairvoyant reference: a plan that meets its target when replayed, cached, never below the work floor."""

from scaler.policy import ScalingConfig
from scaler.simulator.clairvoyant import best_plan, plan_leases, work_floor_intervals
from scaler.simulator.cli import run_policy, simulate_main, with_clairvoyant_ratio
from scaler.simulator.platform import PlatformModel, Victim
from scaler.simulator.report import summarize
from scaler.simulator.workloads import JobSpec, Workload, built_in


def short_day() -> Workload:
    """Two bursts of 2-minute jobs an hour apart: small enough for a test, shaped like a workshop block."""
    jobs = [JobSpec(600 + 20 * n, 120) for n in range(8)] + [JobSpec(4_200 + 30 * n, 120) for n in range(6)]
    return Workload("short", tuple(jobs), 3 * 3_600)


def test_the_replayed_plan_meets_its_target_and_bills_at_least_the_work_floor():
    workload, platform = short_day(), PlatformModel()
    plan, outcome = best_plan(workload, platform, cap=5, target_p95_s=150)
    report = summarize("short", "clairvoyant", outcome, platform)
    assert report.jobs_done == report.jobs_total
    assert report.wait_p95_s <= 150
    assert outcome.billed_intervals >= work_floor_intervals(workload, platform) == 3
    assert plan.intervals >= work_floor_intervals(workload, platform)


def test_a_looser_target_never_costs_more():
    workload, platform = short_day(), PlatformModel()
    tight = best_plan(workload, platform, cap=5, target_p95_s=30)[1].billed_intervals
    loose = best_plan(workload, platform, cap=5, target_p95_s=600)[1].billed_intervals
    assert loose <= tight


def test_deterministic_and_cached_per_trace():
    workload, platform = short_day(), PlatformModel(tick_s=15.0)
    first = best_plan(workload, platform, cap=4, target_p95_s=200)
    again = best_plan(workload, platform, cap=4, target_p95_s=200)
    assert again[1] is first[1]  # the replay is not run twice
    assert plan_leases(workload, platform, 4, 60) == plan_leases(workload, platform, 4, 60)


def test_the_cap_is_respected():
    workload = Workload("burst", tuple(JobSpec(60, 120) for _ in range(12)), 3_600)
    plan = plan_leases(workload, PlatformModel(), cap=3, wait_cap_s=0)
    starts_and_stops = sorted([(start, 1) for start, _ in plan.leases] + [(stop, -1) for _, stop in plan.leases])
    alive = peak = 0
    for _, step in starts_and_stops:
        alive += step
        peak = max(peak, alive)
    assert peak <= 3


def test_ratio_column_compares_at_the_policy_own_p95():
    workload, platform = short_day(), PlatformModel()
    report, _ = run_policy(workload, "ours", seed=0)
    rated = with_clairvoyant_ratio(report, workload, platform, ScalingConfig(), seed=0)
    assert rated.cost_vs_clairvoyant is not None and rated.cost_vs_clairvoyant > 0
    assert rated.cost_vs_plan is not None and rated.cost_vs_plan > 0


def test_kind_victim_model_interrupts_nothing_on_a_steady_burst():
    workload = built_in("mixed-batch", seed=1)
    worst, _ = run_policy(workload, "ours", ScalingConfig(max_lost_work_s=600), seed=1)
    kind, _ = run_policy(workload, "ours", ScalingConfig(max_lost_work_s=600),
                         PlatformModel(scale_down_victim=Victim.IDLE_NEAREST_BOUNDARY), seed=1)
    assert kind.jobs_interrupted <= worst.jobs_interrupted
    assert kind.jobs_done == kind.jobs_total


def test_cli_runs_several_seeds_with_clairvoyant_and_overrides(capsys, tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("submit_s,duration_s\n" + "".join(f"{600 + 30 * n},100\n" for n in range(6)))
    code = simulate_main(["--trace", str(trace), "--seeds", "1-2", "--policy", "ours",
                          "--policy", "ours:target_wait_s=60,max_replicas=3", "--policy", "clairvoyant:120",
                          "--policy", "naive-job-limit-1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Over all seeds" in out and "work floor 1 intervals" in out
    assert "ours:target_wait_s=60,max_replicas=3" in out and "x clairv." in out
