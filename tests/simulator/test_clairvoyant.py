"""The clairvoyant reference: a plan that meets its target when replayed, cached, never below the work floor."""

import random

from scaler.policy import ScalingConfig
from scaler.simulator import clairvoyant
from scaler.simulator.clairvoyant import best_plan, plan_leases, work_floor_intervals
from scaler.simulator.cli import run_policy, simulate_main, with_clairvoyant_ratio
from scaler.simulator.platform import PlatformModel, Simulation, Victim
from scaler.simulator.policies import AlwaysOn
from scaler.simulator.report import job_waits, summarize
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


def seven_jobs() -> Workload:
    """Seven jobs over 20 minutes whose work fits two intervals: the greedy alone bills three."""
    jobs = ((89, 200), (153, 61), (489, 79), (655, 191), (769, 176), (981, 146), (1174, 67))
    return Workload("seven", tuple(JobSpec(submit, run) for submit, run in jobs), 3_600)


def test_the_search_reaches_the_work_floor_where_the_greedy_bills_more():
    workload, platform = seven_jobs(), PlatformModel()
    plan, outcome = best_plan(workload, platform, cap=3, target_p95_s=200)
    report = summarize("seven", "clairvoyant", outcome, platform)
    assert report.jobs_done == 7 and report.wait_p95_s <= 200
    # No plan bills less than the floor, so two intervals is the optimum; the greedy's best replays to three.
    assert outcome.billed_intervals == work_floor_intervals(workload, platform) == 2
    assert plan.intervals == outcome.billed_intervals


def test_the_replay_never_runs_more_replicas_than_the_cap():
    workload = Workload("burst", tuple(JobSpec(60 + 5 * n, 120) for n in range(20)), 3_600)
    for cap in (2, 3):
        _plan, outcome = best_plan(workload, PlatformModel(), cap=cap, target_p95_s=60)
        assert max(sample.replicas for sample in outcome.samples) == cap  # a tight target wants them all
        assert all(job.finished_s is not None for job in outcome.jobs)


def test_the_same_trace_plans_the_same_after_the_caches_are_emptied():
    workload, platform = short_day(), PlatformModel()
    first_plan, first = best_plan(workload, platform, cap=5, target_p95_s=120, target_max_s=240)
    clairvoyant._CACHE.clear()
    clairvoyant._REPLAYS.clear()
    again_plan, again = best_plan(workload, platform, cap=5, target_p95_s=120, target_max_s=240)
    assert again is not first
    assert again_plan == first_plan
    assert sorted(job_waits(again)) == sorted(job_waits(first)) and again.billed_intervals == first.billed_intervals


def test_a_max_wait_is_met_too():
    workload, platform = short_day(), PlatformModel()
    _plan, outcome = best_plan(workload, platform, cap=5, target_p95_s=200, target_max_s=100)
    assert max(job_waits(outcome)) <= 100


def test_the_search_replay_skips_only_ticks_that_change_nothing():
    """The fast replay of a count per tick gives the very outcome of ``Simulation`` with that count, both victims."""
    workload = built_in("workshop", seed=2)
    rng = random.Random(0)
    counts: list[int] = []
    while len(counts) < 5_760:
        counts += [rng.choice((0, 0, 1, 2, 3, 5))] * rng.randint(1, 80)
    counts = counts[:5_760]
    for victim in Victim:
        platform = PlatformModel(scale_down_victim=victim)
        plan = clairvoyant.Plan(clairvoyant._leases(tuple(counts), platform.tick_s), 0, ())
        full = Simulation(workload, clairvoyant.Clairvoyant(plan), platform, seed=2).run()
        fast = clairvoyant._ScheduleReplay(workload, tuple(counts), platform, seed=2).run()
        assert job_waits(fast) == job_waits(full) and fast.interruptions == full.interruptions > 0
        assert [(r.started_at, r.stopped_at) for r in fast.replicas] == [
            (r.started_at, r.stopped_at) for r in full.replicas]
        assert fast.billed_intervals == full.billed_intervals


def test_a_plan_does_not_depend_on_the_plans_made_before_it():
    """Rows of one run share segment replays; the search is still charged as if each plan were made alone."""
    day = built_in("workshop", 2)  # a day at 10 replicas: here a search charged nothing for replays it finds
    platform = PlatformModel()     # made by an earlier plan bills 124 intervals after one, 126 alone

    def plan_at_120_s() -> tuple:
        plan, outcome = best_plan(day, platform, cap=10, target_p95_s=120, effort=20_000)
        return plan.leases, outcome.billed_intervals

    clairvoyant._CACHE.clear()
    clairvoyant._REPLAYS.clear()
    alone = plan_at_120_s()
    clairvoyant._CACHE.clear()
    clairvoyant._REPLAYS.clear()
    best_plan(day, platform, cap=10, target_p95_s=114, target_max_s=173, effort=20_000)
    assert plan_at_120_s() == alone


def test_a_target_out_of_reach_is_planned_for_the_least_wait_the_cap_gives():
    # Three bursts of 5-minute jobs, each far more than 3 replicas clear in 120 s.
    jobs = [JobSpec(start + 7 * n + 60 * (n % 4), 300 + 40 * (n % 5)) for start in (600, 4_000, 8_000)
            for n in range(24)]
    workload = Workload("bursts", tuple(sorted(jobs, key=lambda job: job.submit_s)), 4 * 3_600)
    platform = PlatformModel()
    always = summarize("bursts", "always-on:3", Simulation(workload, AlwaysOn(3), platform, 0).run(), platform)
    assert always.wait_p95_s > 120  # out of reach
    planned = summarize("bursts", "clairvoyant", best_plan(workload, platform, cap=3, target_p95_s=120)[1], platform)
    assert planned.jobs_done == planned.jobs_total
    assert planned.wait_p95_s <= always.wait_p95_s
    assert planned.wait_max_s <= always.wait_max_s
