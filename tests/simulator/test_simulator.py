"""The simulator's checks: known costs, ours beats naive on the workshop, determinism, the CLI."""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scaler.billing import BillingAnchor, bill_for_runtime
from scaler.policy import ScalingConfig
from scaler.simulator.cli import run_policy, simulate_main
from scaler.simulator.platform import PlatformModel, Simulation, Victim
from scaler.simulator.policies import WorkerModel
from scaler.simulator.report import summarize
from scaler.simulator.workloads import MAX_TRACE_BYTES, JobSpec, Workload, built_in, load_trace


@pytest.fixture(scope="module")
def workshop_reports():
    workload = built_in("workshop", seed=1)
    return {policy: run_policy(workload, policy, seed=1)[0] for policy in ("naive", "ours")}


def test_trickle_under_naive_costs_one_interval_per_job():
    report, _ = run_policy(built_in("trickle", seed=1), "naive-job-limit-1", seed=1)
    assert report.jobs_done == 10
    assert report.cost_usd == pytest.approx(10 * 10 / 60 * 2.30, rel=0.1)  # ~$3.83


def test_always_on_one_costs_a_full_day():
    report, _ = run_policy(built_in("trickle", seed=1), "always-on:1", seed=1)
    assert report.cost_usd == pytest.approx(55.20)


def test_ours_beats_naive_on_the_workshop(workshop_reports):
    naive, ours = workshop_reports["naive"], workshop_reports["ours"]
    print(f"\nworkshop ours/naive: cost x{ours.cost_usd / naive.cost_usd:.2f}, "
          f"p95 wait x{ours.wait_p95_s / naive.wait_p95_s:.2f}")
    assert ours.jobs_done == ours.jobs_total and ours.jobs_failed == 0  # naive hands some jobs back 3 times
    assert ours.cost_usd < naive.cost_usd
    assert ours.wait_p95_s <= naive.wait_p95_s


def test_same_seed_same_numbers():
    first = run_policy(built_in("mixed-batch", seed=7), "ours", seed=7)[0]
    again = run_policy(built_in("mixed-batch", seed=7), "ours", seed=7)[0]
    other = run_policy(built_in("mixed-batch", seed=8), "ours", seed=8)[0]
    assert first == again
    assert first != other


def test_a_busy_replica_chosen_for_scale_down_requeues_its_job():
    # A long and a short job on two replicas: once the short one is done, 2 -> 1, and Verda (worst
    # case) stops the replica still busy with the long one.
    workload = Workload("two", (JobSpec(0, 300), JobSpec(0, 10)), horizon_s=3_600)
    config = ScalingConfig(billing_aware=False, stabilization_window_s=0, scale_down_cooldown_s=0)
    report, outcome = run_policy(workload, "ours", config, seed=0)
    assert report.jobs_done == 2
    assert report.jobs_interrupted >= 1
    assert outcome.interruptions == report.jobs_interrupted


def test_the_runpod_backend_s_choice_stops_the_idle_replica_and_interrupts_no_job():
    # The same two jobs: with idle first (the RunPod backend), 2 -> 1 stops the replica the short job left idle.
    workload = Workload("two", (JobSpec(0, 300), JobSpec(0, 10)), horizon_s=3_600)
    config = ScalingConfig(billing_aware=False, stabilization_window_s=0, scale_down_cooldown_s=0)
    platform = PlatformModel(scale_down_victim=Victim.IDLE_FIRST)
    report, outcome = run_policy(workload, "ours", config, platform, seed=0)
    assert report.jobs_done == 2 and report.jobs_interrupted == 0
    assert len(outcome.replicas) == 2 and min(r.stopped_at for r in outcome.replicas) < 300, "it did scale down"


def test_billing_aware_saves_money_on_the_batch():
    workload = built_in("batch", seed=1)
    aware = run_policy(workload, "ours", ScalingConfig(billing_aware=True), seed=1)[0]
    blind = run_policy(workload, "ours", ScalingConfig(billing_aware=False, idle_to_zero_s=600), seed=1)[0]
    assert aware.cost_usd <= blind.cost_usd


def test_billing_for_runtime_both_anchors():
    assert bill_for_runtime(0, 600, 600, BillingAnchor.STARTED_AT) == 1
    assert bill_for_runtime(0, 601, 600, BillingAnchor.STARTED_AT) == 2
    assert bill_for_runtime(590, 610, 600, BillingAnchor.WALL_CLOCK) == 2
    assert bill_for_runtime(590, 610, 600, BillingAnchor.STARTED_AT) == 1


def test_spot_reclaims_are_replaced_and_counted():
    platform = PlatformModel(spot_reclaims_per_hour=2.0)
    report, _ = run_policy(built_in("workshop", seed=1), "always-on:2", platform=platform, seed=1)
    assert report.spot_reclaims > 0
    assert report.replica_starts == 2 + report.spot_reclaims
    assert report.jobs_done == report.jobs_total


def test_trace_csv_is_read_and_validated(tmp_path):
    trace = tmp_path / "day.csv"
    trace.write_text("submit_s,duration_s,note\n0,30,a\n90.5,12,b\n")
    workload = load_trace(trace)
    assert workload.jobs == (JobSpec(0.0, 30.0), JobSpec(90.5, 12.0))
    trace.write_text("submitted,duration_s\n0,30\n")
    with pytest.raises(ValueError, match="submit_s"):
        load_trace(trace)


def test_cli_writes_json_and_chart(tmp_path, capsys):
    out, chart = tmp_path / "r.json", tmp_path / "c.png"
    code = simulate_main(["--workload", "trickle", "--policy", "naive", "--policy", "ours",
                          "--idle-to-zero-s", "240", "--json", str(out), "--chart", str(chart),
                          "--no-clairvoyant-ratio"])
    assert code == 0
    document = json.loads(out.read_text())
    assert document["scaling_config"]["idle_to_zero_s"] == 240
    assert [r["policy"] for r in document["results"]] == ["naive", "ours"]
    assert chart.stat().st_size > 10_000
    assert "ours vs naive" in capsys.readouterr().out


def test_cli_writes_json_into_a_folder_it_creates(tmp_path):
    out = tmp_path / "results" / "day-1" / "r.json"  # was a FileNotFoundError traceback after every run
    assert simulate_main(["--workload", "trickle", "--policy", "ours", "--json", str(out),
                          "--no-clairvoyant-ratio"]) == 0
    assert json.loads(out.read_text())["results"][0]["policy"] == "ours"


@pytest.mark.parametrize("flag", ["--json", "--chart"])
def test_cli_refuses_a_result_path_it_cannot_write_before_simulating(tmp_path, capsys, flag):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        simulate_main(["--workload", "trickle", "--policy", "ours", flag, str(a_file / "r.out")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"{flag} {a_file / 'r.out'}: cannot create its folder" in captured.err
    assert "simulated" not in captured.out + captured.err, "refused before any run"


def test_cli_says_so_when_the_results_cannot_be_written_after_all(capsys):
    # /dev/full passes every check and refuses the write (ENOSPC), as a disk that filled during the runs would.
    assert simulate_main(["--workload", "trickle", "--policy", "ours", "--json", "/dev/full",
                          "--no-clairvoyant-ratio"]) == 1
    assert "No space left on device" in capsys.readouterr().out


def test_cli_json_to_stdout_is_pure_json(capsys):
    assert simulate_main(["--workload", "batch", "--policy", "always-on:1", "--json", "-",
                          "--no-clairvoyant-ratio"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["jobs_done"] == 500


@pytest.mark.parametrize("price", ["0", "0.01"])
def test_the_clairvoyant_ratio_is_the_same_at_any_price_and_the_json_stays_json(tmp_path, price):
    ratios = {}
    for each in ("2.30", price):  # 0: a free local GPU; 0.01: intervals of a fifth of a cent, rounded to $0.00
        out = tmp_path / f"{each}.json"
        assert simulate_main(["--workload", "trickle", "--policy", "naive", "--price-per-hour", each,
                              "--json", str(out)]) == 0

        def refuse(constant):
            raise AssertionError(f"not JSON: {constant}")  # was Infinity at price 0: jq stopped at it

        (result,) = json.loads(out.read_text(), parse_constant=refuse)["results"]
        ratios[each] = (result["cost_vs_clairvoyant"], result["cost_vs_plan"])
    assert ratios[price] == ratios["2.30"]  # was (inf, inf) at 0; at 0.01 (2.0, 1.333) against (1.11, 1.11)


def test_cli_rejects_an_unknown_policy():
    with pytest.raises(SystemExit):
        simulate_main(["--policy", "sometimes"])


@pytest.mark.parametrize(("argv", "named"), [
    (["--max-shutdown-handbacks", "-1"], "max_shutdown_handbacks must be >= 0"),
    # Each of these ran for ever (a tick of 0 s or less, 10^8 replicas or seeds) or gave a traceback.
    (["--tick-s", "0"], "tick_s must be 1-3600 s"),
    (["--tick-s", "-1"], "tick_s must be 1-3600 s"),
    (["--tick-s", "nan"], "tick_s must be a finite number"),
    (["--cold-start-s", "-100"], "cold_start_s must be >= 0"),
    (["--cold-start-s", "nan"], "cold_start_s must be a finite number"),
    (["--health-check-delay-s", "inf"], "health_check_delay_s must be a finite number"),
    (["--price-per-hour", "nan"], "--price-per-hour nan: must be 0 (free) or between"),
    (["--spot-reclaims-per-hour", "1e9"], "spot_reclaims_per_hour must be 0-60"),
    (["--spot-reclaims-per-hour", "-1"], "spot_reclaims_per_hour must be 0-60"),
    (["--target-wait-s", "inf"], "target_wait_s must be a finite number"),
    (["--policy", "ours:target_wait_s=nan"], "target_wait_s must be a finite number"),
    (["--policy", "ours:max_replicas=100000000"], "max_replicas must be <= 100"),
    (["--policy", "always-on:100000000"], "at most 100 replicas"),
    (["--policy", "always-on:" + "9" * 5000], "at most 100 replicas"),  # "Exceeds the limit (4300 digits)"
    (["--policy", "always-on:\u00b2"], "'always-on:\u00b2': no such policy"),  # "invalid literal for int()"
    (["--policy", "always-on:\u0661"], "'always-on:\u0661': no such policy"),  # ran 1 replica: other scripts' digits
    (["--policy", "ours:max_replicas=\u0661\u0660"], "max_replicas='\u0661\u0660' is not a number"),  # ran 10
    (["--policy", "clairvoyant:\u0661\u0662\u0660"], "the p95 target must be seconds > 0"),  # planned at 120 s
    (["--policy", "clairvoyant:nan"], "the p95 target must be seconds > 0"),
    (["--policy", "clairvoyant:inf"], "the p95 target must be seconds > 0"),
    (["--policy", "clairvoyant:120,max_replicas=0"], "the clairvoyant plans with max_replicas >= 1"),  # traceback
    (["--seeds", "1-100000000"], "at most 1000 seeds"),
    (["--seeds", "5-1"], "5-1 runs backwards"),  # simulated nothing, exit 0
    (["--seeds", "1-"], "--seeds '1-': use e.g. 1-5"),  # ran seed 1 alone
    (["--seeds", ""], "--seeds '': use e.g. 1-5"),  # ran --seed's 1
    (["--seeds", "\u00b2"], "--seeds '\u00b2': use e.g. 1-5"),  # "invalid literal for int() with base 10"
    (["--seeds", "9" * 5000], "use e.g. 1-5"),  # "Exceeds the limit (4300 digits) for integer string conversion"
    (["--seeds", "1-3,2"], "a seed twice"),  # seed 2 ran twice and counted twice in the summary
    (["--policy", "ours:billing_aware=flase"], "billing_aware='flase' is not one of true"),  # was taken as false
    (["--policy", "ours:max_replicas=3,max_replicas=10"], "max_replicas is set twice"),  # the last one won
    (["--policy", "clairvoyant:120,150"], "'120' and '150': one value without a name"),  # planned at 150 s
    (["--policy", "ours:billing_aware=none"], "billing_aware cannot be none"),  # ran as None, taken as false
    (["--policy", "always-on:1,max_replicas=3"], "always-on reads no setting: drop max_replicas"),  # ignored
    (["--policy", "naive:target_wait_s=60"], "naive reads only max_replicas: drop target_wait_s"),  # ignored
    # Checked against the defaults, then run against --max-replicas 3: a traceback after the other rows.
    (["--max-replicas", "3", "--policy", "naive", "--policy", "ours:min_replicas=5"],
     "'ours:min_replicas=5': invalid ScalingConfig: need 0 <= min_replicas <= max_replicas"),
])
def test_cli_refuses_a_value_it_cannot_simulate_naming_it(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        simulate_main(["--workload", "trickle", "--no-clairvoyant-ratio", *argv])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_cli_refuses_a_clairvoyant_ratio_with_no_replica_to_plan_with(capsys):
    with pytest.raises(SystemExit) as exit_info:  # was a traceback from the planner
        simulate_main(["--workload", "trickle", "--max-replicas", "0", "--policy", "naive"])
    assert exit_info.value.code == 2
    assert "'naive': with max_replicas 0 no clairvoyant can be planned" in capsys.readouterr().err


@pytest.mark.parametrize(("row", "named"), [
    ("10,nan", "duration_s must be > 0"),  # was a traceback
    ("inf,100", "submit_s must be 0-2678400 s"),  # ran for ever
    ("10,1e12", "duration_s must be > 0 and <= 86400 s"),  # ran for ever
    ("-1,100", "submit_s must be 0-2678400 s"),
    ("10,0", "duration_s must be > 0"),
    ("ten,100", "submit_s must be a number of seconds, not 'ten'"),  # named no column
    ("10,", "duration_s must be a number of seconds, not ''"),  # named no column
    ("10", "duration_s is missing"),  # "float() argument must be a string or a real number, not 'NoneType'"
])
def test_cli_refuses_a_trace_row_it_cannot_simulate_naming_line_and_column(tmp_path, capsys, row, named):
    trace = tmp_path / "day.csv"
    trace.write_text(f"submit_s,duration_s\n20,100\n{row}\n")
    with pytest.raises(SystemExit) as exit_info:
        simulate_main(["--trace", str(trace), "--policy", "ours", "--no-clairvoyant-ratio"])
    assert exit_info.value.code == 2
    assert f"day.csv:3: {named}" in capsys.readouterr().err


def test_a_trace_value_out_of_range_is_quoted_cut_short(tmp_path, capsys):
    trace = tmp_path / "day.csv"
    trace.write_text(f"submit_s,duration_s\n20,{' ' * 100_000}-1\n")  # float() reads it: -1
    with pytest.raises(SystemExit):
        simulate_main(["--trace", str(trace), "--policy", "ours", "--no-clairvoyant-ratio"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "duration_s must be > 0" in line]
    assert line.endswith("not '-1'") and len(line) < 400  # was the whole 100 000-character cell


def test_a_trace_error_names_the_line_in_the_file_after_blank_lines(tmp_path, capsys):
    trace = tmp_path / "day.csv"
    trace.write_text("submit_s,duration_s\n20,100\n\n\n10,0\n")  # a blank line a spreadsheet leaves
    with pytest.raises(SystemExit) as exit_info:
        simulate_main(["--trace", str(trace), "--policy", "ours", "--no-clairvoyant-ratio"])
    assert exit_info.value.code == 2
    assert "day.csv:5: duration_s must be > 0" in capsys.readouterr().err  # was day.csv:3


def test_a_trace_saved_with_a_byte_order_mark_is_read(tmp_path):
    trace = tmp_path / "day.csv"
    trace.write_text("submit_s,duration_s\n0,30\n90.5,12\n", encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    workload = load_trace(trace)  # was "missing column(s) submit_s"
    assert workload.jobs == (JobSpec(0.0, 30.0), JobSpec(90.5, 12.0))


def test_a_trace_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    """Before: opened as a file, a FIFO with no writer held the simulator for good."""
    fifo = tmp_path / "day.csv"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "scaler.simulator", "--trace", str(fifo), "--policy", "ours", "--no-clairvoyant-ratio"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2, done.stderr
    assert f"{fifo}: a directory, a FIFO or a device, not a file: no trace" in done.stderr


def test_cli_refuses_a_trace_with_a_column_twice(tmp_path, capsys):
    trace = tmp_path / "day.csv"
    trace.write_text("submit_s,duration_s,submit_s\n0,30,7200\n")  # two exports pasted side by side
    with pytest.raises(SystemExit) as exit_info:  # was run with the last column's submit_s, silently
        simulate_main(["--trace", str(trace), "--policy", "ours", "--no-clairvoyant-ratio"])
    assert exit_info.value.code == 2
    assert "day.csv: column(s) submit_s more than once in the header" in capsys.readouterr().err


def test_cli_refuses_a_trace_csv_cannot_read(tmp_path, capsys):
    trace = tmp_path / "day.csv"
    trace.write_text("submit_s,duration_s\n20,100\n10," + "1" * 200_000 + "\n")
    with pytest.raises(SystemExit) as exit_info:  # was a traceback (_csv.Error)
        simulate_main(["--trace", str(trace), "--policy", "ours", "--no-clairvoyant-ratio"])
    assert exit_info.value.code == 2
    assert "day.csv: after line 2: field larger than field limit" in capsys.readouterr().err


def test_cli_refuses_a_trace_that_is_not_utf8_naming_the_file(tmp_path, capsys):
    trace = tmp_path / "day.csv"
    trace.write_bytes("submit_s,duration_s\n20,100\n# caf\u00e9\n".encode("latin-1"))  # a spreadsheet's export
    with pytest.raises(SystemExit) as exit_info:
        simulate_main(["--trace", str(trace), "--policy", "ours", "--no-clairvoyant-ratio"])
    assert exit_info.value.code == 2
    assert "day.csv: not UTF-8 text (byte 32: invalid continuation byte)" in capsys.readouterr().err


def test_cli_refuses_a_trace_larger_than_it_reads(tmp_path, capsys):
    trace = tmp_path / "day.csv"
    trace.write_text("submit_s,duration_s\n20,100\n")
    with trace.open("r+b") as handle:  # one endless line of NULs, as /dev/zero: was read whole, memory without end
        handle.truncate(MAX_TRACE_BYTES + 1)
    with pytest.raises(SystemExit) as exit_info:
        simulate_main(["--trace", str(trace), "--policy", "ours", "--no-clairvoyant-ratio"])
    assert exit_info.value.code == 2
    assert f"day.csv: more than {MAX_TRACE_BYTES} bytes" in capsys.readouterr().err


def test_benchmark_a_day_of_workshop(capsys):
    workload = built_in("workshop", seed=1)
    began = time.perf_counter()
    run_policy(workload, "ours", seed=1)
    with capsys.disabled():
        print(f"\n[benchmark] a day of workshop under ours: {(time.perf_counter() - began) * 1000:.0f} ms")


@dataclass
class OnOff:
    """One replica, stopped every ``period_s`` for a tick: a long job is interrupted again and again."""

    period_s: float
    worker: WorkerModel = field(default_factory=WorkerModel)
    name: str = "on-off"

    def target(self, now, queue, replicas):
        return 0 if now > 0 and now % self.period_s == 0 else 1


@pytest.mark.parametrize("limit, failed", [(20, 0), (3, 1), (0, 0)])
def test_a_job_fails_only_past_the_queues_bound_on_replica_stop_hand_backs(limit, failed):
    workload = Workload("long", (JobSpec(0, 400),), horizon_s=3_600)
    platform = PlatformModel(max_shutdown_handbacks=limit)
    outcome = Simulation(workload, OnOff(period_s=180), platform, seed=0).run()
    report = summarize(workload.name, "on-off", outcome, platform)
    # Interrupted every 180 s (19 times in the hour): a replica stop does not use up the job's attempts, so
    # by default it is still queued at the horizon; with a bound of 3 the queue gives up at the third.
    assert report.jobs_failed == failed
    assert outcome.jobs[0].interruptions == 3 if failed else outcome.jobs[0].interruptions > 3
    assert report.jobs_unfinished == 1 - failed
    assert report.wait_max_s == 3_600  # a failed job never left out: it waits the whole horizon


def test_naive_follows_the_deploy_defaults_no_job_limit():
    workload = Workload("two", (JobSpec(0, 60), JobSpec(70, 60)), horizon_s=3_600)
    limited, _ = run_policy(workload, "naive-job-limit-1", seed=0)
    default, _ = run_policy(workload, "naive", seed=0)
    # The second job finds the first one's worker still warm; with a job limit of 1 it waits a cold start.
    assert default.cold_starts < limited.cold_starts
    assert default.wait_max_s < limited.wait_max_s


def test_unfinished_jobs_count_as_waiting_until_the_horizon():
    workload = Workload("late", (JobSpec(0, 10), JobSpec(3_500, 600)), horizon_s=3_600)
    report, _ = run_policy(workload, "ours", seed=0)
    assert report.jobs_unfinished == 1
    assert report.wait_max_s == 3_600
