"""The multi-provider simulator: a workshop day whose primary has no capacity for an hour."""

from __future__ import annotations

import pytest
from rich.console import Console

from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING
from scaler.policy import ScalingConfig
from scaler.simulator.providers import SimProvider, main, outage_day, print_runs, simulate
from scaler.simulator.workloads import built_in


@pytest.fixture(scope="module")
def runs():
    return {run.name: run for run in outage_day(seed=1, outage_start_h=10.0, outage_h=1.0)}


def test_without_fallback_the_outage_hour_waits_and_with_it_nobody_does(runs):
    calm = runs["no outage, Verda only"]
    stuck = runs["Verda out 1 h, no fallback"]
    saved = runs["Verda out 1 h, RunPod fallback"]
    assert calm.done == stuck.done == saved.done == calm.jobs, "every job ends by the evening in each case"
    assert stuck.p95_wait_s() > 3_000, "jobs submitted in the outage wait for Verda's capacity to return"
    assert saved.p95_wait_s() < 300
    assert sum(1 for wait in saved.waits if wait > 600) == 0


def test_fallback_is_paid_only_around_the_outage(runs):
    calm, saved = runs["no outage, Verda only"], runs["Verda out 1 h, RunPod fallback"]
    assert calm.cost["verda"] > 0 and "runpod" not in calm.cost
    assert saved.cost["runpod"] > 0
    assert 60 <= saved.fallback_s / 60 <= 120, "engaged for the hour, plus the back-off and drain back"
    assert runs["Verda out 1 h, no fallback"].fallback_s == 0


def test_the_command_prints_the_table(capsys):
    assert main(["--seed", "1", "--outage-h", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "Verda out 0.5 h, RunPod fallback" in out and "p95 wait s" in out


@pytest.mark.parametrize(("argv", "named"), [
    # Each simulated no outage at all and printed rows headed "Verda out -1 h" / "Verda out nan h".
    (["--outage-h", "-1"], "--outage-h -1: more than 0"),
    (["--outage-h", "nan"], "--outage-h nan: more than 0"),
    (["--outage-h", "0"], "--outage-h 0: more than 0"),
    (["--outage-start-h", "-5"], "--outage-start-h -5: an hour of the day"),
    (["--outage-start-h", "inf"], "--outage-start-h inf: an hour of the day"),
    (["--outage-start-h", "30"], "--outage-start-h 30: an hour of the day"),
])
def test_the_command_refuses_an_outage_outside_the_day_naming_the_flag(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_jobs_an_outage_never_lets_start_count_as_waiting_to_the_day_s_end():
    # Verda out from 09:00, before the first job, to midnight, no fallback: no job ever starts.
    stuck = next(run for run in outage_day(seed=1, outage_start_h=9.0, outage_h=15.0) if "no fallback" in run.name)
    assert stuck.done == 0
    assert len(stuck.waits) == stuck.jobs == 415  # were 0 waits: p95 and max wait 0 s
    assert stuck.p95_wait_s() > 8 * 3600


def test_fallback_minutes_are_counted_at_the_tick_the_day_ran_with():
    verda = SimProvider("verda", 2.30, 60.0, VERDA_BILLING, 10, outages=((10 * 3_600, 11 * 3_600),))
    runpod = SimProvider("runpod", 2.99, 90.0, RUNPOD_BILLING, 10)
    run = simulate("30-s ticks", built_in("workshop", 1), (verda, runpod), ScalingConfig(max_replicas=10), tick_s=30.0)
    console = Console(width=200, record=True)
    print_runs(console, [run])
    minutes = int(console.export_text().split("30-s ticks")[1].split("│")[-2])
    assert 60 <= minutes <= 120, "engaged for the hour, plus the back-off and drain back"  # was 30-60: 15-s ticks
