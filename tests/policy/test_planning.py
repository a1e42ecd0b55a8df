"""Wait-target planning: the duration estimate, predicted starts, who is bought and who may leave; timetables."""

import math
from dataclasses import replace

import pytest

from scaler.planning import (
    late_allowance,
    long_duration,
    predicted_starts,
    replicas_needed,
    replicas_to_add,
    robust_duration,
)
from scaler.policy import Observation, PolicyState, Reason, Replica, ScalingConfig, decide
from scaler.timetable import Block, format_timetable, opening_start, parse_timetable, prewarm_floor

PLAN = ScalingConfig(target_wait_s=120, default_job_duration_s=120, replica_boot_s=45, max_replicas=5,
                     billing_aware=True, scale_down_lead_s=60)


def test_duration_is_the_default_until_three_completions_then_the_median():
    assert robust_duration([], 180) == 180
    assert robust_duration([100, 100], 180) == 180
    assert robust_duration([100, 110, 120, 5_000], 180) == 110  # one outlier barely moves it
    assert robust_duration([100, 110, 120, 130, 140], 180) == 120  # the median: pessimism would add up in a queue
    assert robust_duration([0.0, 0.1, 100, 100, 100], 180) == 100  # instant jobs are no evidence
    assert robust_duration([100, math.inf, math.inf, math.nan], 180) == 180  # nor are times no clock gives


def test_predicted_starts_fill_the_earliest_free_replica():
    assert predicted_starts([0, 30], 4, 100) == [0, 30, 100, 130]
    assert predicted_starts([], 2, 100) == [float("inf")] * 2


def test_a_replica_is_bought_only_for_a_job_that_would_miss_the_target():
    # One replica frees up in 30 s: a queued 2-minute job waits 30 s, well within 120 s: buy nothing.
    assert replicas_to_add(0, [30], [0], 120, 105, 45, room=4) == 0
    # Two queued: the second would start at 150 s; one new replica (ready at 45 s) saves it.
    assert replicas_to_add(0, [30], [0, 0], 120, 105, 45, room=4) == 1
    assert replicas_to_add(0, [30], [0, 0, 0], 120, 105, 45, room=4) == 2
    # A job that has already waited 200 s cannot be saved; the cap still limits the damage.
    assert replicas_to_add(0, [300], [200, 200], 120, 105, 45, room=1) == 1


def test_fewer_replicas_are_kept_only_if_no_job_waits_longer():
    assert replicas_needed(0, [0, 0, 0], [0], 120, 105) == 1
    assert replicas_needed(0, [0, 0, 0], [0, 0, 0], 120, 105) == 3
    # Two jobs queued 300 s already, past the 105-s target either way: one replica would make the 2nd wait 420 s.
    assert replicas_needed(0, [0, 0], [300, 300], 120, 105) == 2


def test_with_the_p95_s_allowance_a_replica_may_leave_a_queued_job_late_but_never_past_the_limit():
    # One replica for two queued 120-s jobs: the 2nd starts at 120 s, past the 100-s target.
    assert replicas_needed(0, [0, 0], [0, 0], 120, 100) == 2
    assert replicas_needed(0, [0, 0], [0, 0], 120, 100, allowed=1) == 1  # within 1.5x the target: allowed
    assert replicas_needed(0, [0, 0], [0, 0], 160, 100, allowed=1) == 2  # 160 s: past 1.5x, whatever the allowance


def tick(config, state, now, *, pending=0, running=0, replicas=(), **timings):
    return decide(config, state, Observation(now=now, pending=pending, running=running, replicas=replicas,
                                             **timings))


def test_a_queued_job_waits_for_a_paid_replica_instead_of_buying_one():
    fleet = (Replica("r0", 0.0),)
    decision = tick(PLAN, PolicyState(applied=1), 100, pending=1, running=1, replicas=fleet,
                    running_elapsed_s=(90.0,), pending_ages_s=(5.0,))
    assert decision.desired == 1  # its job ends in ~30 s: the queued one starts within the target
    decision = tick(PLAN, PolicyState(applied=1), 100, pending=3, running=1, replicas=fleet,
                    running_elapsed_s=(90.0,), pending_ages_s=(5.0, 5.0, 5.0))
    # Three queued: the 2nd and 3rd would start 2 and 4 minutes late; two new replicas (ready in 45 s) save them.
    assert decision.desired == 3 and decision.reason == Reason.SCALE_UP


def test_an_idle_replica_stays_until_its_paid_interval_ends_then_leaves():
    fleet = (Replica("r0", 0.0), Replica("r1", 200.0))
    assert tick(PLAN, PolicyState(applied=2), 300, replicas=fleet).reason == Reason.HOLD_BILLING_BOUNDARY
    decision = tick(PLAN, PolicyState(applied=2), 560, replicas=fleet)
    assert (decision.desired, decision.reason) == (1, Reason.SCALE_DOWN)


def test_no_scale_down_that_would_throw_away_a_running_job():
    fleet = (Replica("r0", 0.0), Replica("r1", 0.0))
    # r0 idle at its boundary, r1 80 s into a 2-minute job that had waited 30 s: Verda might stop r1, and
    # the job would then have waited 135 s (30 + 80 + the 25 s drain), past the 120 s target.
    decision = tick(PLAN, PolicyState(applied=2), 560, running=1, replicas=fleet, running_elapsed_s=(80.0,),
                    running_waited_s=(30.0,))
    assert (decision.desired, decision.reason) == (2, Reason.HOLD_JOBS_WOULD_BE_LOST)
    # ... unless the job ends within the worker's drain, or the workers retire themselves.
    assert tick(PLAN, PolicyState(applied=2), 560, running=1, replicas=fleet,
                running_elapsed_s=(100.0,)).desired == 1
    kind = replace(PLAN, victim_may_be_busy=False)
    assert tick(kind, PolicyState(applied=2), 560, running=1, replicas=fleet,
                running_elapsed_s=(80.0,), running_waited_s=(30.0,)).desired == 1


def test_timetable_prewarms_before_each_block_and_only_then():
    config = replace(PLAN, timetable=parse_timetable("09:00-09:50*3"), prewarm_lead_s=90)
    nine = 9 * 3600.0
    assert tick(config, PolicyState(applied=0), nine - 120).desired == 0
    decision = tick(config, PolicyState(applied=0), nine - 60)
    assert (decision.desired, decision.reason) == (3, Reason.PREWARM)
    assert tick(config, PolicyState(applied=0), nine + 86_400 - 60).desired == 3  # every day
    # A scaler that ticks seldom (cron, once a minute) and missed the lead still pre-warms, until the
    # replicas would have been ready; after that the queue alone sizes the fleet.
    assert tick(config, PolicyState(applied=0), nine + 30).desired == 3
    assert tick(config, PolicyState(applied=0), nine + 60).desired == 0
    assert prewarm_floor(parse_timetable("23:59-24:00*2"), 86_400 * 3 + 30, 15, 5, 120) == 2  # past midnight


def test_a_block_prewarms_for_the_load_the_last_opening_kept_busy():
    config = replace(PLAN, timetable=parse_timetable("09:00-09:50*2, 10:00-10:50*2, 11:00-11:50*2"),
                     prewarm_lead_s=30)
    nine, ten, eleven = 9 * 3600.0, 10 * 3600.0, 11 * 3600.0
    state = PolicyState(applied=0)
    assert tick(config, state, nine - 15).desired == 2  # nothing learned yet: the declared count
    # The 09:00 opening (its first billing interval) runs 4 jobs at most ticks: 3.6 on average.
    for now in range(int(nine), int(nine) + 600, 60):
        state = tick(config, state, now, running=3 if now < nine + 240 else 4).new_state
    state = tick(config, state, nine + 1200, running=5).new_state  # after the opening: not counted
    assert state.learned_prewarm == 4
    state = replace(state, applied=0)  # the fleet went back to zero in between
    decision = tick(config, state, ten - 15)
    assert (decision.desired, decision.reason, decision.details["learned_prewarm"]) == (4, Reason.PREWARM, 4)
    assert tick(config, state, ten - 60).desired == 0, "only within the pre-warm lead"
    state = tick(config, state, ten, running=0).new_state
    assert tick(config, state, ten + 30).details["prewarm"] == 4, "the 10:00 opening has not taught anything yet"
    # A quiet 10:00 opening (one job) brings 11:00 back to the declared count, never below it.
    for now in range(int(ten), int(ten) + 600, 60):
        state = tick(config, state, now, running=1).new_state
    assert state.learned_prewarm == 4, "learned once the opening is over"
    state = tick(config, state, ten + 600).new_state
    assert state.learned_prewarm == 1
    assert tick(config, replace(state, applied=0), eleven - 15).desired == 2
    assert tick(replace(config, max_replicas=3), PolicyState(applied=0, learned_prewarm=5),
                eleven - 15).desired == 3, "never above max_replicas"


def test_timetable_parsing_names_the_bad_entry():
    blocks = parse_timetable("13:00-13:50, 09:00-09:50*5")
    assert blocks == (Block(32_400, 35_400, 5), Block(46_800, 49_800, None))
    assert format_timetable(blocks) == "09:00-09:50*5, 13:00-13:50"
    # Digits of other scripts (int() reads them; the settings' numbers refuse them), and a replica count of 5,000
    # digits, whose int() error named neither the entry nor SCALER_TIMETABLE.
    for bad in ("9-10", "10:00-09:00", "25:00-26:00", "09:00-09:50*x", "\u0660\u0669:00-10:00",
                "09:00-09:50*" + "9" * 5000, "09:00-09:50*1000"):
        with pytest.raises(ValueError, match="timetable entry"):
            parse_timetable(bad)
    assert prewarm_floor(blocks, 32_400 - 10, 60, 4) == 5
    assert prewarm_floor(blocks, 46_800 - 10, 60, 4) == 4
    assert opening_start(blocks, 86_400 + 32_400 + 599, 600) == 86_400 + 32_400  # its first 10 minutes
    assert opening_start(blocks, 32_400 + 600, 600) is None
    assert opening_start(blocks, 32_400 - 1, 600) is None
    assert opening_start((Block(0, 300, 1),), 299, 600) == 0 and opening_start((Block(0, 300, 1),), 300, 600) is None


def test_a_long_job_is_the_measure_of_whether_a_running_job_is_about_to_end():
    assert long_duration([], 180) == 180
    assert long_duration([100.0] * 19 + [400.0], 180) == 100
    assert long_duration([100.0] * 18 + [400.0, 400.0], 180) == 400
    fleet = (Replica("r0", 0.0), Replica("r1", 0.0))
    # r0 idle at its boundary; r1 has run 100 s: done by the typical 2 minutes, but jobs run up to 8.
    observation = dict(running=1, replicas=fleet, running_elapsed_s=(100.0,), job_duration_s=120.0)
    assert tick(PLAN, PolicyState(applied=2), 560, **observation).desired == 1
    decision = tick(PLAN, PolicyState(applied=2), 560, long_job_duration_s=480.0, **observation)
    assert (decision.desired, decision.reason) == (2, Reason.HOLD_JOBS_WOULD_BE_LOST)


def test_a_spare_replica_leaves_early_at_a_tick_when_no_running_job_would_be_lost():
    fleet = (Replica("r0", 0.0), Replica("r1", 0.0))
    # 150 s before the boundary: nothing runs now, maybe something will then; leave now.
    decision = tick(PLAN, PolicyState(applied=2), 450, replicas=fleet)
    assert (decision.desired, decision.reason) == (0, Reason.SCALE_TO_ZERO)
    # A job runs that Verda might stop: wait for the boundary as before.
    decision = tick(PLAN, PolicyState(applied=2), 450, running=1, replicas=fleet, running_elapsed_s=(10.0,))
    assert (decision.desired, decision.reason) == (2, Reason.HOLD_BILLING_BOUNDARY)
    # Further from the boundary, or with early release off, the paid time is used.
    assert tick(PLAN, PolicyState(applied=2), 300, replicas=fleet).reason == Reason.HOLD_BILLING_BOUNDARY
    off = replace(PLAN, early_release_s=0)
    assert tick(off, PolicyState(applied=2), 450, replicas=fleet).reason == Reason.HOLD_BILLING_BOUNDARY


def test_the_target_itself_is_planned_for_not_a_margin_below_it():
    fleet = (Replica("r0", 0.0),)
    # The queued job (waited 10 s) starts when r0's job ends, ~110 s from now: 120 s in all, the target.
    decision = tick(PLAN, PolicyState(applied=1), 100, pending=1, running=1, replicas=fleet,
                    running_elapsed_s=(10.0,), pending_ages_s=(10.0,), job_duration_s=120.0)
    assert decision.desired == 1


def test_the_p95_lets_a_few_jobs_start_past_the_target_while_few_recent_ones_did():
    on_time = [30.0] * 38
    assert late_allowance(on_time, 2, 120) == 2  # 5 % of 40 jobs
    assert late_allowance([*on_time, 200.0], 1, 120) == 1  # one of the recent ones already used its part
    assert late_allowance([], 3, 120) == 0  # no history: every job counts
    # One replica frees in 40 s; the 2nd queued job would start at 160 s, past 120 but within 1.5x: allowed.
    assert replicas_to_add(0, [40], [0, 0], 120, 120, 45, room=4) == 1
    assert replicas_to_add(0, [40], [0, 0], 120, 120, 45, room=4, allowed=1) == 0
    # ... never beyond 1.5x the target, whatever the allowance (the 3rd would start at 280 s).
    assert replicas_to_add(0, [40], [0, 0, 0], 120, 120, 45, room=4, allowed=2) == 1
    fleet = (Replica("r0", 0.0),)
    observation = dict(pending=2, running=1, replicas=fleet, running_elapsed_s=(80.0,), pending_ages_s=(0.0, 0.0),
                       job_duration_s=120.0)
    assert tick(PLAN, PolicyState(applied=1), 100, **observation).desired == 2
    decision = tick(PLAN, PolicyState(applied=1), 100, recent_waits_s=tuple(on_time), **observation)
    assert (decision.desired, decision.details["late_allowed"]) == (1, 2)
    late = tuple([200.0] * 2 + on_time[2:])
    assert tick(PLAN, PolicyState(applied=1), 100, recent_waits_s=late, **observation).desired == 2


def test_at_a_boundary_restarting_a_young_job_beats_buying_the_spares_another_interval():
    fleet = tuple(Replica(f"r{n}", 0.0) for n in range(4))
    # Four replicas at their boundary, one job 10 s into a 2-minute run: Verda may stop it with the spares.
    young = dict(running=1, replicas=fleet, running_elapsed_s=(10.0,), job_duration_s=120.0)
    decision = tick(PLAN, PolicyState(applied=4), 560, **young)
    # Restarting 35 s of work (10 s run + the drain) saves 3 spare intervals (1800 s): go down to 1.
    assert (decision.desired, decision.reason) == (1, Reason.SCALE_DOWN_RESTARTING_JOBS)
    assert decision.details["restarted_work_s"] == 35.0
    # Weighed at 20, a restart 80 s into the run (105 s x 20) costs more than the 1800 s saved: hold.
    old = dict(young, running_elapsed_s=(80.0,))
    weighty = replace(PLAN, lost_work_weight=20)
    assert tick(weighty, PolicyState(applied=4), 560, **old).reason == Reason.HOLD_JOBS_WOULD_BE_LOST
    never = replace(PLAN, lost_work_weight=0)
    assert tick(never, PolicyState(applied=4), 560, **young).reason == Reason.HOLD_JOBS_WOULD_BE_LOST


def test_a_restart_goes_ahead_only_while_the_restarted_job_still_meets_the_target():
    fleet = tuple(Replica(f"r{n}", 0.0) for n in range(4))
    young = dict(running=1, replicas=fleet, running_elapsed_s=(10.0,), job_duration_s=120.0)
    # The job had waited 60 s (earlier runs count: the queue keeps its age): handed back, it will have waited
    # 95 s when an idle replica takes it: restart, however often it was restarted before.
    decision = tick(PLAN, PolicyState(applied=4), 560, running_waited_s=(60.0,), **young)
    assert (decision.desired, decision.reason) == (1, Reason.SCALE_DOWN_RESTARTING_JOBS)
    # It had waited 100 s: it would have waited 135 s, past the 120 s target: hold, however cheap the restart.
    decision = tick(PLAN, PolicyState(applied=4), 560, running_waited_s=(100.0,), **young)
    assert (decision.desired, decision.reason) == (4, Reason.HOLD_JOBS_WOULD_BE_LOST)
    # A queued job (aged 100 s) counts too: keeping one replica, it would wait behind the restarted job, past
    # the target. Two may leave, not three: one idle replica for each.
    queued = dict(young, pending=1, pending_ages_s=(100.0,))
    decision = tick(PLAN, PolicyState(applied=4), 560, running_waited_s=(0.0,), **queued)
    assert (decision.desired, decision.reason) == (2, Reason.SCALE_DOWN_RESTARTING_JOBS)


def test_a_running_job_the_queue_does_not_list_is_never_restarted_by_choice():
    # comfy-multi lists only pending jobs: how far a running one has got is not known, so no bet on it.
    fleet = tuple(Replica(f"r{n}", 0.0) for n in range(4))
    young = dict(running=1, replicas=fleet, running_elapsed_s=(10.0,), job_duration_s=120.0)
    assert tick(PLAN, PolicyState(applied=4), 560, **young).desired == 1
    unlisted = dict(young, running_elapsed_s=())
    assert tick(PLAN, PolicyState(applied=4), 560, **unlisted).reason == Reason.HOLD_JOBS_WOULD_BE_LOST


def test_no_second_restart_while_a_stopped_replica_still_drains():
    # A scale-down 15 s ago: its replica still drains, and its job is still listed as running, so which job
    # the next scale-down would stop cannot be told. Wait for the drain before restarting another.
    fleet = tuple(Replica(f"r{n}", 0.0) for n in range(4))
    young = dict(running=1, replicas=fleet, running_elapsed_s=(10.0,), job_duration_s=120.0)
    draining = PolicyState(applied=4, last_scale_down_at=545.0)
    assert tick(PLAN, draining, 560, **young).reason == Reason.HOLD_JOBS_WOULD_BE_LOST
    drained = PolicyState(applied=4, last_scale_down_at=530.0)
    assert tick(PLAN, drained, 560, **young).reason == Reason.SCALE_DOWN_RESTARTING_JOBS


def test_no_job_is_restarted_when_no_idle_replica_would_take_it():
    fleet = (Replica("r0", 0.0), Replica("r1", 0.0))
    # Both at their boundary and busy: one job just started, one ends within the drain. Stopping one would
    # stop the young job (the worst case) and leave it queued behind the other: hold.
    decision = tick(PLAN, PolicyState(applied=2), 560, running=2, replicas=fleet, running_elapsed_s=(0.0, 100.0),
                    job_duration_s=120.0)
    assert (decision.desired, decision.reason) == (2, Reason.HOLD_JOBS_WOULD_BE_LOST)


def test_a_job_ending_on_a_stopping_replica_buys_no_replica_back():
    # One replica left after a scale-down; the stopped one still runs a job that ends within the drain.
    fleet = (Replica("r0", 0.0),)
    decision = tick(PLAN, PolicyState(applied=1), 300, running=2, replicas=fleet, running_elapsed_s=(110.0, 50.0),
                    job_duration_s=120.0)
    assert decision.desired == 1
    # A running job of unknown age still gets its replica.
    assert tick(PLAN, PolicyState(applied=1), 300, running=2, replicas=fleet).desired == 2
