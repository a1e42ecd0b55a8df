"""A later day: the scaler starts it with what the live one keeps overnight, and with nothing else."""

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from common.timespans import DAY_S, HOUR_S
from scaler.loop import billing_of, load_policy_state, save_policy_state
from scaler.policy import ScalingConfig
from scaler.queue_status import RECENT_COMPLETIONS, job_timings
from scaler.simulator.cli import simulate_main
from scaler.simulator.later_day import Carried, carried_over, listed_completions, simulate_later_day
from scaler.simulator.platform import PlatformModel, SimOutcome, Simulation
from scaler.simulator.policies import Ours
from scaler.simulator.workloads import JobSpec, Workload
from scaler.timetable import Block

PLATFORM = PlatformModel()
# Two 09:00 and 10:00 blocks declared at 2 replicas, each busier than that: the opening teaches a larger pre-warm.
TIMETABLE = (Block(9 * HOUR_S, 9 * HOUR_S + 1800, 2), Block(10 * HOUR_S, 10 * HOUR_S + 1800, 2))


def small_day(seed: int) -> Workload:
    rng = random.Random(seed)
    jobs = [JobSpec(block.start_s + rng.uniform(0, 600), rng.uniform(100, 140)) for block in TIMETABLE
            for _ in range(40)]
    return Workload("small", tuple(sorted(jobs, key=lambda job: job.submit_s)), DAY_S, TIMETABLE)


CONFIG = ScalingConfig(timetable=TIMETABLE, max_replicas=8, target_wait_s=120)


@pytest.fixture(scope="module")
def carried() -> Carried:
    return carried_over(Ours(CONFIG), small_day(1001), PLATFORM, seed=1)


def test_the_carried_state_is_what_a_restarted_scaler_loads(carried, tmp_path):
    path = tmp_path / "scaler-state.json"
    save_policy_state(path, carried.state, billing_of(CONFIG))
    assert load_policy_state(path, billing_of(CONFIG)) == carried.state
    assert carried.state.learned_prewarm > 2  # the day taught something beyond the declared count
    assert carried.state.applied == 0  # ... and the fleet is at zero by midnight


def test_the_carried_completions_are_what_the_queue_manager_lists_at_midnight():
    outcome = Simulation(small_day(1001), Ours(CONFIG), PLATFORM, seed=1).run()
    midnight = datetime(2026, 12, 2, tzinfo=UTC).timestamp()

    def iso(sim_s: float) -> str:
        return datetime.fromtimestamp(midnight - DAY_S + sim_s, UTC).isoformat()

    done = sorted((job for job in outcome.jobs if job.finished_s is not None), key=lambda job: -job.finished_s)
    # GET /api/jobs?status=completed&order=newest&limit=50, read by the live scaler's own parser
    listed = [{"created_at": iso(job.submit_s), "started_at": iso(job.attempt_started_s),
               "completed_at": iso(job.finished_s)} for job in done[:RECENT_COMPLETIONS]]
    live = job_timings({"pending": [], "running": [], "completed": listed}, midnight)

    durations, waits = listed_completions(outcome)
    assert len(done) > RECENT_COMPLETIONS and len(durations) == RECENT_COMPLETIONS
    assert durations == pytest.approx(live["recent_durations_s"], abs=1e-5)
    assert waits == pytest.approx(live["recent_waits_s"], abs=1e-5)


@pytest.fixture(scope="module")
def first_day() -> SimOutcome:
    return Simulation(small_day(1), Ours(CONFIG), PLATFORM, seed=1).run()


def test_a_later_day_with_nothing_carried_is_the_first_day(first_day):
    assert simulate_later_day(small_day(1), Ours(CONFIG), PLATFORM, 1, Carried()) == first_day


def test_a_later_day_is_the_second_day_of_one_scaler_run_through_both(carried):
    yesterday, today = small_day(1001), small_day(1)
    both = Workload("both", yesterday.jobs + tuple(JobSpec(job.submit_s + DAY_S, job.duration_s) for job in today.jobs),
                    2 * DAY_S, TIMETABLE)
    run_through = Simulation(both, Ours(CONFIG), PLATFORM, seed=1).run()
    later = simulate_later_day(today, Ours(CONFIG), PLATFORM, 1, carried)

    assert [job.finished_s for job in later.jobs] == pytest.approx(
        [job.finished_s - DAY_S for job in run_through.jobs[len(yesterday.jobs):]])
    assert [at for replica in later.replicas for at in (replica.started_at, replica.stopped_at)] == pytest.approx(
        [at - DAY_S for replica in run_through.replicas if replica.started_at >= DAY_S
         for at in (replica.started_at, replica.stopped_at)])


def test_a_later_day_first_tick_sees_yesterdays_completions(carried):
    seen = []

    @dataclass
    class Watching(Ours):
        def target(self, now, queue, replicas):
            seen.append((queue.recent_durations_s, queue.recent_waits_s))
            return super().target(now, queue, replicas)

    simulate_later_day(small_day(1), Watching(CONFIG), PLATFORM, 1, carried)
    assert seen[0] == (carried.recent_durations_s, carried.recent_waits_s)
    assert len(carried.recent_durations_s) == RECENT_COMPLETIONS


def test_a_later_day_opens_with_what_yesterday_taught(carried, first_day):
    first = first_day
    later = simulate_later_day(small_day(1), Ours(CONFIG), PLATFORM, 1, carried)

    def opening_fleet(outcome):
        return max(sample.replicas for sample in outcome.samples if sample.t < 9 * HOUR_S + 30)

    assert opening_fleet(first) == 2  # the declared count
    assert opening_fleet(later) == carried.state.learned_prewarm
    assert len(later.jobs) == len(first.jobs) and all(job.finished_s is not None for job in later.jobs)


def test_cli_adds_a_later_day_row_for_each_ours_policy_and_keeps_the_first_day(tmp_path):
    out = tmp_path / "r.json"
    assert simulate_main(["--workload", "trickle", "--policy", "always-on:1", "--policy", "ours", "--later-day",
                          "--no-clairvoyant-ratio", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [result["policy"] for result in results] == ["always-on:1", "ours", "ours@day2"]
    assert results[1]["jobs_total"] == results[2]["jobs_total"] == 10


def test_cli_refuses_a_later_day_of_a_trace(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("submit_s,duration_s\n0,60\n")
    with pytest.raises(SystemExit):
        simulate_main(["--trace", str(trace), "--policy", "ours", "--later-day"])
    assert "--later-day needs a built-in workload" in capsys.readouterr().err
