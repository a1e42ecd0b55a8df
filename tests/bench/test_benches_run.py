"""Every bench in bench/ still runs: each parses its arguments (`main(["--help"])`), and most run for real at
their smallest sizes (`python -m bench.<name>`, as docs/benchmarks.md runs them) and print their figures. Nothing
else runs them, so this is what keeps them from rotting: every figure line is checked for its shape, units, finite
numbers and verdicts (all jobs completed, every probe answered), never for speed."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.scaler_broken_peers import silent_run

REPO = Path(__file__).resolve().parents[2]
BENCHES = sorted(path.stem for path in (REPO / "bench").glob("*.py") if not path.stem.startswith("_"))

# Each: the smallest arguments the bench accepts, then lines (regular expressions) its figures must print: every
# figure line, whole, with its units and its verdicts (all answered, none left open); `#` stands for a finite number.
REAL_RUNS: dict[str, tuple[list[str], list[str]]] = {
    "batch_online_bound": (["--seeds", "1", "--max-replicas", "1"],
                           [r"^\| seed \| ours: intervals / p95 / max \| cheapest plan",
                            r"^\| 1 \| # / # / # \| (# / # / # \(.+ from # s, .+ from # s\)|none meets the p95) \| "
                            r"(# / # / # \(.+ from # s, .+ from # s\)|none meets the p95) \| # \|$"]),
    "body_flood": (["--clients", "2", "--seconds", "1", "--after", "0"],
                   [r'^\{"server": "health", "clients": 2, "seconds": 1.0, "connections": [1-9]\d*, '
                    r'"probes": \{"200": [1-9]\d*\}, "p50_ms": #, "max_ms": #, "server_cpu_s": #, "rss_before_mb": #, '
                    r'"rss_peak_mb": #, "rss_end_mb": #, "after_s": 0.0, "rss_after_mb": #\}$']),
    "comfyui_housekeeping": (["--jobs", "2", "--pad-mib", "0.01"],
                             [r'"jobs": \{\n +"completed": 2\n +\},\n +"seconds": #,\n +'
                              r'"comfyui_history_entries": \d+,\n +"comfyui_history_json_mib": #,\n +'
                              r'"comfyui_rss_mib": \{\n +"before": #,\n +"after": #', r'"one_parsed_prompt_mib": #',
                              r'"comfyui_output_folder": \{\n +"files": \d+,\n +"bytes": \d+',
                              r'"comfyui_temp_folder": \{\n +"files": \d+,\n +"bytes": \d+',
                              r'"outputs_path": \{\n +"files": 2,\n +"bytes": [1-9]\d*']),
    "comfyui_reply_memory": (["--mb", "0.1"],
                             [r'"text_output_mb": #',
                              *(rf'"{job}": \{{\n +"worker_exit": 0,\n +"worker_peak_rss_mib": #,\n +'
                                r'"job_status": "completed"' for job in ["quick_job", "text_output_job"])]),
    "error_quotes": (["--kib", "4", "--page-mib", "0.01"],
                     [*(rf"^scrub 4 KiB of {re.escape(shape)}: # s$" for shape in ["letters", "dotted", "query pairs",
                                                                                 "unended pairs", "%25 runs",
                                                                                 "https%3A%2F%2F then letters"]),
                      r"^quote a 0.01 MiB page of short words: # s, # MiB allocated at peak$"]),
    "finish_order": (["--jobs", "50", "--workflow-kb", "1"],
                     [r"^50 finished jobs, 1 KiB workflows, # MB: first open \(numbering\) # s, second open # ms$",
                      *(rf"^a page of 100 completed jobs, newest first, {code}, {where}: # ms \(best of 20\)$"
                        for code in ["before", "after"] for where in ["first page", "halfway"]),
                      *(rf"^a finish numbered by the {by}, {result}: # us \({jobs} jobs\)$"
                        for by in ["update", "trigger"]
                        for result, jobs in [("2-byte result", 2000), ("1000000-byte result", 200)])]),
    "head_memory": (["--server", "health", "--clients", "2", "--headers", "2", "--field-bytes", "10", "--hold", "0",
                     "--after-close", "0"],
                    [r'^\{"server": "health", "clients": 2, "headers": 2, "field_bytes": 10, "head_kib": \d+, '
                     r'"sent_in_s": #, "rss_before_mb": #, "rss_peak_mb": #, "rss_end_mb": #, "open_at_end": 2, '
                     r'"probe": "200", "after_close_s": 0.0, "rss_closed_mb": #\}$']),
    "idle_connections": (["--server", "health", "--connections", "2", "--kind", "idle"],
                         [r'^\{"server": "health", "kind": "idle", "connections": 2, "connected": 2, '
                          r'"server_open_files": \d+, "rss_before_mb": #, "rss_held_mb": #, "kb_per_connection": -?#, '
                          r'"alive": true, "/health": \{"answers": \{"200": 20\}, "p50_ms": #, "max_ms": #\}, '
                          r'"/ready": \{"answers": \{"503": 20\}, "p50_ms": #, "max_ms": #\}\}$']),  # no ComfyUI
    "job_lists": (["--completed", "20", "--repeats", "1"],
                  [r"^before: status=completed&limit=500: # bytes, # ms \(best of 1\)$",
                   r"^after: status=completed&limit=50&order=newest: # bytes, # ms \(best of 1\)$"]),
    "job_pages": (["--jobs", "20", "--page", "5"],
                  [r"^one page \(all a client could see before\): 5 jobs, # bytes$",
                   *(rf"^order={order}: 20 jobs in 4 pages, # bytes, # s; first page # ms, last # ms$"
                     for order in ["oldest", "newest"])]),
    "ledger_charges": (["--charges", "10"], [r"^buckets kept: \d+; one charge: # µs$"]),
    "malformed_log_lines": (["--requests", "20", "--concurrency", "5"],
                            [r'^\{"requests": 20, "answered_400": 20, "in_s": #, "log_lines": 1, "log_bytes": \d+, '
                             r'"last_line": "Malformed HTTP request refused \(400\)']),
    "output_downloads": (["--clients", "2", "--file-mb", "1"],
                         [r"^2 clients x 1 MB: 2/2 received whole, 2 MB in # s \(# MB/s\)$",
                          r"^queue manager RSS: before # MB, during #-# MB \(\d+ samples\), after # MB, peak # MB$"]),
    "output_lookups": (["--workflow-mb", "1", "--result-mb", "1", "--downloads", "2"],
                       [r"^workflow ~1 MB, result ~1 MB, 2 downloads of a 16 KiB output: median # ms, max # ms; "
                        r"Python's peak allocation # MB$"]),
    "outputs_pruning": (["--orphans", "20", "--young", "5", "--files", "1", "--file-kb", "1"],  # the sweep's mode: ~3 s
                        [r"^20 orphan and 5 young job folders, 1 files of 1 KiB each, 20 users$",
                         r"^one sweep: 20 deleted in # s; job folders left: 5; "
                          r"RSS # MB before it, peak # MB during it$",
                         *(rf"^GET /api/queue/status {when}: [1-9]\d* requests, p50 # ms, p99 # ms, max # ms$"
                           for when in ["before", "during"])]),
    "queue_fairness": (["--pending", "1000", "--finished", "10", "--workflow-kb", "1"],
                       [r"^round_robin, pending 1,000, finished 10, settings none; median of \d+:$",
                        *(rf"^  {re.escape(measure)}: # ms$" for measure in [
                            "POST /api/jobs", "GET /api/jobs/{id} (pending)", "GET /api/jobs, 1000 pending",
                            "GET next-job", "store.submit", "store.poll"])]),
    "queue_load": (["--jobs", "4", "--replicas", "1"],
                   [r'"jobs": 4,\n +"replicas": 1,\n +"completed": 4,\n +"failed": 0,\n +"wall_s": #,\n +'
                    r'"jobs_per_s": #,\n +"queue_latency_ms_p50": #,\n +"queue_latency_ms_p99": #,\n +'
                    r'"queue_requests_timed": [1-9]\d*,\n +"queue_peak_rss_mib": #\n\}']),
    "queue_memory": (["--body-mb", "1", "--result-mb", "1", "--views", "5", "--workflow-mb", "1",
                      "--result-views", "3", "--unread", "2", "--unread-s", "0.5"],
                     [r"^scenario +RSS before +RSS after +peak +answers$",
                      r"^unauthenticated +# MB +# MB +# MB +3 x 401 \(\d+ B answer\)$",
                      r"^oversized-submit +# MB +# MB +# MB +1 x 4(13|22) \(\d+ B answer\)$",
                      r"^result-1MB +# MB +# MB +# MB +1 x 404 \(\d+ B answer\)$",
                      r"^20-concurrent +# MB +# MB +# MB +(\d+ x (404|503) \(\d+ B answer\)(, )?)+$",
                      r"^list-results +# MB +# MB +# MB +200: 8 jobs, # MB answer$",
                      r"^job-views +# MB +# MB +# MB +5 x 200 \(\d+ B answer\)$",
                      r"^result-views +# MB +# MB +# MB +3 x 200 \(1 MB answer\), all in # s; slowest /health # s, "
                      r"next-job # s$",
                      r"^unread-views +# MB +# MB +# MB +after 0.5 s: RSS # MB, /health # s$"]),
    "queue_retention": (["--days", "1", "--jobs-per-day", "10", "--workflow-kb", "1", "--report-every", "1"],
                        [r"^\| 1 \| 10 \| # \| 10 \| # \|$", r"^slowest reaper pass with retention: # ms$",
                         r"^status count: # ms \(retention\) vs # ms \(kept for good\)$",
                         r"^first pass over the kept-for-good database: 10 rows purged in # ms$"]),
    "queue_round_robin": (["--finished", "10", "--users", "2", "--workflow-kb", "1"], [r"^\| 10 \| # \| # \|$"]),
    "rollout_oracle": (["--workload", "mixed-batch", "--seeds", "1", "--max-replicas", "10", "--ahead-min", "5"],
                       [r"^\| seed \| ours \| rollout oracle \(overrides\) \| clairvoyant \|",
                        r"^\| 1 \| # / \d+ \| # / \d+ \([1-9]\d*\) \| # / \d+ \| # \| (yes|no) \|$"]),
    "runpod_creates": (["--pods", "1", "--latency-s", "0"],
                       [r"^apply\(1\) from 0 pods at 0 s per request: # s, [1-9]\d* requests, at most 1 in flight$"]),
    "runpod_stops": (["--pods", "1", "--latency-s", "0"],
                     [r"^pause\(\) of 1 pods at 0 s per request: # s, [1-9]\d* requests, at most 1 in flight$"]),
    "scaler_soak": (["--days", "0.05", "--interval-s", "600"],  # 7 ticks of each scaler
                    [*(rf"^{kind} day 0.05: RSS # MiB, scaler\+common allocated # KiB \([+-]# KiB since the start\); "
                       rf"files: {files}$" for kind, files in [("single", r"state.json \d+ B"),
                                                               ("fleet", r"ledger.json \d+ B, state.json \d+ B")]),
                     *(rf"^{kind} day 0.05 collections: (\S+ \d+, )+metrics.label_sets \d+, (\S+ \d+, )*"
                       r"verda.first_seen \d+.*; jobs \d+ \(given up \d+, pending \d+\), replica ids \d+, "
                       r"alerts delivered \d+, ticks failed 0$"
                       for kind in ["single", "fleet"]),
                     *(rf"^{kind}: 0.05 simulated days in # s$" for kind in ["single", "fleet"]),
                     r"^warnings and errors logged: .+$"]),
    "scratch_emptying": (["--files", "10", "--size", "1"], [r"^10 files of 1 B \(0 MB\) removed in # s$"]),
    "slow_headers": (["--server", "health", "--clients", "2", "--headers", "2", "--hold", "0"],
                     [r"^\{'server': 'health', 'clients': 2, 'head_kib': \d+, 'rss_before_mb': \d+, "
                      r"'rss_held_mb': \d+, 'hold_s': 0.0, 'open_after_hold': 0, 'rss_after_hold_mb': \d+, "
                      r"'probe': 200\}$"]),
    "stalled_readers": (["--clients", "2", "--watch", "0"],  # the clients send for 5 s
                        [r'^\{"clients": 2, "rss_before_mb": \d+, "samples": \[\], "/health": \{"answers": '
                         r'\{"200": 20\}, "p50_ms": #, "max_ms": #\}\}$']),
    "storage_probes": (["--mib", "2", "--seconds", "30"],
                       [r"^the 2 MiB report refused: database or disk is full$",
                        r"^/health every 1 s for 30 s: [1-9]\d* probe writes, \d+ MiB written, # s; status unhealthy$",
                        r"^room again: healthy after \d+ s$"]),
    "view_deliveries": (["--file-mib", "1", "--runs", "1"],
                        [r"^run 1: 1 MiB in # s \(\d+ MiB/s\), longest event-loop stall \d+ ms, "
                         r"longest step without progress \d+ ms$"]),
    "worker_memory": (["--jobs", "3", "--flood-mb", "1", "--outputs", "100"],  # four workers one after the other: ~5 s
                      [r'"jobs": 3,\n +"completed": 3,\n +"rss_mib_after_n_jobs": \[\n +"1: #",\n +"2: #",\n +'
                       r'"3: #"\n +\],\n +"peak_rss_mib": #\n',
                       *(rf'"{run}": \{{\n +"worker_exit": 0,\n +"worker_peak_rss_mib": #,\n +"seconds": #,\n +'
                         r'"job_status": "completed"' for run in ["quick_job", "executed_flood_1_mb",
                                                                 "listing_100_outputs"])]),
    "worker_overhead": (["--jobs", "3"],
                        [r'"jobs": 3,\n +"history_lag_ms": #,\n +"wall_s": #,\n +"jobs_per_s": #,\n +'
                         r'"overhead_ms_p50": #,\n +"overhead_ms_p99": #,\n +"overhead_ms_max": #\n\}']),
}  # fmt: skip
NUMBER = r"\d+(?:\.\d+)?"  # what `#` stands for: no nan, no inf, no sign
# Only imported and their arguments parsed, each for the reason given.
IMPORT_ONLY = {
    "fault_run": "tests/faults/test_fault_run.py runs it reduced (~25 s alone)",
    "hung_comfyui": "waits for the worker to give up on a hung ComfyUI: ~40 s with 3 s timeouts, minutes by default",
    "scaler_broken_peers": "the scaler waits out its clients' production timeouts against silent peers: minutes",
    "slow_providers": "paces every tick to the 15 s SCALER_INTERVAL_S: minutes",
    "soak": "churn, hard kills and a drain of minutes are what it measures",
}


def run_bench(
    name: str, arguments: list[str], tmp_path: Path, timeout_s: float = 100, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    """`python -m bench.<name>` in a session of its own: a bench still running after `timeout_s` is killed with
    every server it started (a bench killed alone leaves its children running). From another `cwd`, the packages
    there come first (docs/benchmarks.md measures another version so)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_MANAGER")}
    env["TMPDIR"] = str(tmp_path)  # what a bench leaves behind goes with the test's folder
    if cwd != REPO:
        env["PYTHONPATH"] = str(REPO)  # bench/ itself
    command = [sys.executable, "-m", f"bench.{name}", *arguments]
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as bench:  # fmt: skip
        try:
            stdout, stderr = bench.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.communicate()
            raise
    return subprocess.CompletedProcess(command, bench.returncode, stdout, stderr)


def test_every_bench_is_run_or_says_why_not() -> None:
    assert sorted([*REAL_RUNS, *IMPORT_ONLY]) == BENCHES
    assert not set(REAL_RUNS) & set(IMPORT_ONLY)


@pytest.mark.parametrize("name", BENCHES)
def test_parses_its_arguments(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"bench.{name}").main(["--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


@pytest.mark.timeout(120)  # each is a few seconds alone; the margin is for a loaded 2-core runner
@pytest.mark.parametrize("name", sorted(REAL_RUNS))
def test_runs_at_its_smallest_and_prints_its_figures(name: str, tmp_path: Path) -> None:
    arguments, figures = REAL_RUNS[name]
    run = run_bench(name, arguments, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for figure in figures:
        line = figure.replace("#", NUMBER)
        assert re.search(line, run.stdout, re.MULTILINE), f"{figure!r} not in:\n{run.stdout[-3000:]}"
    assert not re.search(r"\b(nan|inf)\b", run.stdout, re.IGNORECASE), run.stdout[-3000:]


HUNG_WORKER = "import os, sys, time; open(sys.argv[0] + '.pid', 'w').write(str(os.getpid())); time.sleep(600)"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["comfyui_housekeeping", "comfyui_reply_memory", "worker_memory"])
def test_a_worker_that_never_exits_fails_the_bench_and_is_ended(name: str, tmp_path: Path) -> None:
    """--worker-source whose worker hangs: the bench fails within --worker-timeout and takes the worker and its
    scratch folder with it."""
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__main__.py").write_text(HUNG_WORKER)
    run = run_bench(name, ["--worker-source", str(tmp_path), "--worker-timeout", "2"], tmp_path)
    assert run.returncode != 0
    assert "TimeoutError" in run.stderr
    pid = int((tmp_path / "worker" / "__main__.py.pid").read_text())
    assert not Path(f"/proc/{pid}").exists(), "the hung worker was left running"
    assert [path.name for path in tmp_path.iterdir()] == ["worker"], "the bench's scratch (its TMPDIR) was left"


@pytest.mark.timeout(60)
def test_a_bench_past_its_time_is_killed_with_the_servers_it_started(tmp_path: Path) -> None:
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__main__.py").write_text(HUNG_WORKER)
    with pytest.raises(subprocess.TimeoutExpired):  # the queue manager and ComfyUI up, the worker hung
        run_bench("comfyui_reply_memory", ["--worker-source", str(tmp_path)], tmp_path, timeout_s=10)
    worker = (tmp_path / "worker" / "__main__.py.pid").read_text()
    assert [pid for pid, command in processes() if pid == worker or str(tmp_path) in command] == []


def processes() -> list[tuple[str, str]]:
    """(pid, command line) of every process still running (a zombie is dead, its parent yet to reap it)."""
    found = []
    for pid in Path("/proc").iterdir():
        with contextlib.suppress(OSError):  # gone meanwhile
            if pid.name.isdigit() and (pid / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append((pid.name, (pid / "cmdline").read_bytes().decode(errors="replace")))
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["comfyui_reply_memory", "worker_memory"])
def test_a_bench_stopped_with_sigterm_ends_the_processes_it_started(name: str, tmp_path: Path) -> None:
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__main__.py").write_text(HUNG_WORKER)
    pid_file = tmp_path / "worker" / "__main__.py.pid"
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_MANAGER")}
    env["TMPDIR"] = str(tmp_path)
    command = [sys.executable, "-m", f"bench.{name}", "--worker-source", str(tmp_path)]
    with subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True) as bench:
        try:
            for _ in range(300):  # the worker up: the bench's servers are too
                if pid_file.exists() and pid_file.read_text():
                    break
                time.sleep(0.1)
            bench.send_signal(signal.SIGTERM)
            code = bench.wait(timeout=30)
            worker = pid_file.read_text()
            left = [pid for pid, command in processes() if pid == worker or str(tmp_path) in command]
        finally:
            with contextlib.suppress(ProcessLookupError):  # what the bench left in its session: a failure leaves none
                os.killpg(bench.pid, signal.SIGKILL)
    assert left == []
    assert code == 128 + signal.SIGTERM


def started_under(folder: Path) -> list[str]:
    """Pids of the live processes whose command line or environment names `folder`."""
    return [pid for pid, command in processes() if str(folder) in command or str(folder) in environ(pid)]


def environ(pid: str) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return ""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "arguments", "worker"),
                         [("fault_run", ["--jobs", "1000000", "--replicas", "1"], "supervisor"),
                          ("soak", ["--workers", "1", "--minutes", "10"], "worker")])  # fmt: skip
def test_a_bench_killed_outright_takes_its_queue_manager_and_workers_along(
    name: str, arguments: list[str], worker: str, tmp_path: Path
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_MANAGER")}
    env["TMPDIR"] = str(tmp_path)  # its scratch folder, named by every process it starts
    with subprocess.Popen([sys.executable, "-m", f"bench.{name}", *arguments], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, start_new_session=True) as bench:  # fmt: skip
        try:
            for _ in range(600):  # its queue manager and a worker past their exec
                running = {command.split("\0")[2] for pid, command in processes() if pid in started_under(tmp_path)
                           and command.split("\0")[1:2] == ["-m"]}  # fmt: skip
                if {"queue_manager", worker} <= running:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"bench.{name} never started its queue manager and {worker}")
            bench.kill()
            bench.wait(timeout=30)
            for _ in range(300):
                if not started_under(tmp_path):
                    break
                time.sleep(0.1)
            left = [(pid, command) for pid, command in processes() if pid in started_under(tmp_path)]
        finally:
            for pid in started_under(tmp_path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    assert left == []


SILENT_WORKER = "import time; time.sleep(600)"  # runs, but its health server never answers


@pytest.mark.timeout(120)
def test_a_worker_0_that_does_not_answer_at_the_end_fails_the_soak_with_its_figures(tmp_path: Path) -> None:
    """Worker 0's /health unreachable at the end (crashed, hung): reported as such, the figures printed and the
    exit 1, rather than a ConnectError traceback after the whole run and nothing printed."""
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__init__.py").write_text("")
    (tmp_path / "worker" / "__main__.py").write_text(SILENT_WORKER)
    arguments = ["--jobs", "0", "--workers", "1", "--minutes", "0.05", "--drain-s", "5", "--sample-s", "0.5",
                 "--worker-source", str(tmp_path)]  # fmt: skip
    run = run_bench("soak", arguments, tmp_path, timeout_s=90)
    assert run.returncode == 1, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["worker_0_health_at_end"] == "ConnectError"
    # Drained (no job: at once, but one status read takes 0.4 s on a loaded machine); the health alone fails it.
    assert summary["drain_s"] is not None and summary["drain_s"] < 5 and summary["not_terminal"] == 0


def scaler_source(tmp_path: Path, program: str) -> Path:
    """A checkout whose `python -m scaler.cli` is `program`."""
    (tmp_path / "scaler").mkdir()
    (tmp_path / "scaler" / "__init__.py").write_text("")
    (tmp_path / "scaler" / "cli.py").write_text(program)
    return tmp_path / "scaler" / "cli.py"


@pytest.mark.timeout(60)
def test_a_scaler_that_fails_to_start_fails_the_bench_without_figures(tmp_path: Path) -> None:
    scaler_source(tmp_path, "import sys; sys.exit('SCALER_INTERVAL_S: not a number')")  # as a bad setting: exit 1
    run = run_bench("scaler_broken_peers", ["--scaler-source", str(tmp_path), "--flood-mb", "1"], tmp_path)
    assert run.returncode != 0
    assert "SCALER_INTERVAL_S: not a number" in run.stderr
    assert "peak RSS" not in run.stdout


@pytest.mark.timeout(60)
def test_a_scaler_that_never_exits_fails_the_bench_and_is_ended(tmp_path: Path) -> None:
    cli = scaler_source(tmp_path, HUNG_WORKER)
    run = run_bench("scaler_broken_peers", ["--scaler-source", str(tmp_path), "--scaler-timeout", "2"], tmp_path)
    assert run.returncode != 0
    assert "TimeoutError" in run.stderr
    pid = int(Path(f"{cli}.pid").read_text())
    assert not Path(f"/proc/{pid}").exists(), "the hung scaler was left running"


SCALER_WITH_A_CUT_LOG_LINE = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sys.stderr.write('{"event": "Scaling decision"}\\n{"event": "Scaling dec\\n')
sys.stderr.flush()
time.sleep(60)
"""


@pytest.mark.timeout(60)
async def test_a_scaler_log_line_that_is_not_json_fails_the_bench_naming_the_line(tmp_path: Path) -> None:
    scaler_source(tmp_path, SCALER_WITH_A_CUT_LOG_LINE)
    with pytest.raises(RuntimeError, match="not JSON") as failure:
        await silent_run(tmp_path, sigterm_after_s=1.0, timeout_s=10.0)
    assert """{"event": "Scaling dec\\n""" in str(failure.value)


@pytest.mark.timeout(120)
def test_jobs_that_never_end_fail_the_queue_load_within_its_timeout(tmp_path: Path) -> None:
    """Its replicas' worker refuses its settings and exits (nothing starts it again): the bench fails after
    --timeout naming how many jobs ended, rather than polling the queue for ever."""
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__init__.py").write_text("")
    (tmp_path / "worker" / "__main__.py").write_text("raise SystemExit('SOME_SETTING: not valid')")
    run = run_bench("queue_load", ["--jobs", "2", "--replicas", "1", "--timeout", "3"], tmp_path, timeout_s=60,
                    cwd=tmp_path)  # fmt: skip
    assert run.returncode != 0
    assert "TimeoutError: 0 of 2 jobs ended in 3 s (--timeout)" in run.stderr
    assert "jobs_per_s" not in run.stdout


def health_server_source(tmp_path: Path, program: str) -> None:
    """A checkout whose `health.server` is `program`."""
    (tmp_path / "health").mkdir()
    (tmp_path / "health" / "__init__.py").write_text("")
    (tmp_path / "health" / "server.py").write_text(program)


@pytest.mark.timeout(60)
def test_a_health_server_that_fails_to_start_fails_the_malformed_lines_bench_with_its_reason(tmp_path: Path) -> None:
    """The bench logs into memory what it measures: its own failure still reaches its stderr."""
    health_server_source(tmp_path, "class HealthServer:\n    def __init__(self, *args, **kwargs):\n"
                                   "        raise OSError('no port to bind')\n")  # fmt: skip
    run = run_bench("malformed_log_lines", ["--requests", "2"], tmp_path, timeout_s=30, cwd=tmp_path)
    assert run.returncode != 0
    assert "OSError: no port to bind" in run.stderr


SILENT_HEALTH_SERVER = """
import asyncio


class HealthServer:
    def __init__(self, *args, **kwargs):
        self.held = []

    async def start(self):
        async def hold(reader, writer):  # reads the head, never answers nor closes
            self.held.append(writer)
            await reader.readuntil(b"\\r\\n\\r\\n")
            await asyncio.Event().wait()

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self):
        self.server.close()
        for writer in self.held:
            writer.close()
"""


@pytest.mark.timeout(90)
def test_a_server_that_never_answers_fails_the_malformed_lines_bench_within_its_bound(tmp_path: Path) -> None:
    """A health server (another version) that keeps a malformed request's connection open without answering: the
    bench fails naming it, rather than waiting for the connection's end for ever."""
    health_server_source(tmp_path, SILENT_HEALTH_SERVER)
    run = run_bench("malformed_log_lines", ["--requests", "2", "--concurrency", "2"], tmp_path, timeout_s=60,
                    cwd=tmp_path)  # fmt: skip
    assert run.returncode != 0
    assert "the health server did not answer a malformed request and close in 10 s" in run.stderr
    assert "answered_400" not in run.stdout


@pytest.mark.timeout(60)
def test_a_server_that_exits_at_start_fails_the_bench_at_once_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistaken setting in the operator's environment: the queue manager exits at start. The bench says why,
    from the server's log, rather than 'never printed its port' 20 s later with the log deleted."""
    monkeypatch.setenv("FINISHED_JOB_RETENTION_S", "not-a-number")
    run = run_bench("idle_connections", ["--server", "queue", "--connections", "2", "--kind", "idle"], tmp_path)
    assert run.returncode != 0
    assert "the queue server exited 2: " in run.stderr
    assert "FINISHED_JOB_RETENTION_S" in run.stderr


REFUSING_QUEUE_MANAGER = """
import http.server
class Refusing(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(413)
        self.send_header("Content-Length", "0")
        self.end_headers()
server = http.server.HTTPServer(("127.0.0.1", 0), Refusing)
print(f"url=http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
"""


@pytest.mark.timeout(60)
def test_large_bodies_refused_fail_the_bench_instead_of_being_timed(tmp_path: Path) -> None:
    """A queue manager (another version, another limit) answering 413 to the legitimate posts."""
    (tmp_path / "queue_manager").mkdir()
    (tmp_path / "queue_manager" / "__init__.py").write_text("")
    (tmp_path / "queue_manager" / "__main__.py").write_text(REFUSING_QUEUE_MANAGER)
    run = run_bench("body_flood", ["--large-bodies", "1"], tmp_path, cwd=tmp_path)
    assert run.returncode != 0
    assert "submit_10MB: POST /api/jobs answered 413, not 201" in run.stderr
    assert "_p50_ms" not in run.stdout


@pytest.mark.timeout(60)
def test_the_orphan_sweeps_peak_rss_is_the_sweeps_alone(tmp_path: Path) -> None:
    """A 128 MiB result file written before the sweep: its buffer is no part of the sweep's peak."""
    run = run_bench("outputs_pruning", ["--orphans", "1", "--files", "1", "--file-kb", str(128 * 1024)], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    peak = re.search(r"peak (\d+) MB during it", run.stdout)
    assert peak, run.stdout
    assert int(peak.group(1)) < 128, run.stdout
