"""Every bench in bench/ still runs: each parses its arguments (`main(["--help"])`), and most run for real at
their smallest sizes (`python -m bench.<name>`, as docs/benchmarks.md runs them) and print their figures. Nothing
else runs them, so this is what keeps them from rotting; the figures are not checked (no timing asserts)."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHES = sorted(path.stem for path in (REPO / "bench").glob("*.py") if not path.stem.startswith("_"))

# Each: the smallest arguments the bench accepts, then lines (regular expressions) its figures must print.
REAL_RUNS: dict[str, tuple[list[str], list[str]]] = {
    "batch_online_bound": (["--seeds", "1", "--max-replicas", "1"], [r"^\| 1 \| \d+ / "]),
    "body_flood": (["--clients", "2", "--seconds", "1", "--after", "0"],
                   [r'^\{"server": "health", "clients": 2, .*"max_ms": [\d.]+, .*"rss_peak_mb": \d+']),
    "comfyui_housekeeping": (["--jobs", "2", "--pad-mib", "0.01"],
                             [r'"completed": 2', r'"comfyui_history_entries": \d+', r'"comfyui_rss_mib"']),
    "comfyui_reply_memory": (["--mb", "0.1"], [r'"quick_job"', r'"worker_peak_rss_mib": [\d.]+', r'"text_output_job"']),
    "error_quotes": (["--kib", "4", "--page-mib", "0.01"],
                     [r"^scrub 4 KiB of letters: [\d.]+ s", r"^quote a 0.01 MiB page of short words: [\d.]+ s"]),
    "finish_order": (["--jobs", "50", "--workflow-kb", "1"],
                     [r"^50 finished jobs, .*first open", r"^a page of 100 completed jobs", r"^a finish numbered by"]),
    "head_memory": (["--server", "health", "--clients", "2", "--headers", "2", "--field-bytes", "10", "--hold", "0",
                     "--after-close", "0"], [r'^\{"server": "health", "clients": 2, .*"rss_peak_mb": \d+']),
    "idle_connections": (["--server", "health", "--connections", "2", "--kind", "idle"],
                         [r'^\{"server": "health", "kind": "idle", "connections": 2, "connected": 2']),
    "job_lists": (["--completed", "20", "--repeats", "1"], [r"^before: .* bytes", r"^after: .* bytes"]),
    "job_pages": (["--jobs", "20", "--page", "5"], [r"^order=oldest: 20 jobs", r"^order=newest: 20 jobs"]),
    "ledger_charges": (["--charges", "10"], [r"^buckets kept: \d+; one charge: [\d.]+ µs"]),
    "malformed_log_lines": (["--requests", "20", "--concurrency", "5"], [r'"answered_400": 20, .*"log_lines": \d+']),
    "output_downloads": (["--clients", "2", "--file-mb", "1"], [r"^2 clients x 1 MB: 2/2 received whole",
                                                                 r"^queue manager RSS: before \d+ MB"]),
    "output_lookups": (["--workflow-mb", "1", "--result-mb", "1", "--downloads", "2"], [r"2 downloads .*: median"]),
    "outputs_pruning": (["--orphans", "20", "--young", "5", "--files", "1", "--file-kb", "1"],  # the sweep's mode: ~3 s
                        [r"^one sweep: 20 deleted in [\d.]+ s; job folders left: 5;", r"^GET /api/queue/status dur"]),
    "queue_fairness": (["--pending", "1000", "--finished", "10", "--workflow-kb", "1"],
                       [r"^round_robin, pending 1,000", r"^  POST /api/jobs: [\d.]+ ms", r"^  store.poll: [\d.]+ ms"]),
    "queue_load": (["--jobs", "4", "--replicas", "1"], [r'"completed": 4', r'"queue_peak_rss_mib": [\d.]+']),
    "queue_memory": (["--body-mb", "1", "--result-mb", "1", "--views", "5", "--workflow-mb", "1",
                      "--result-views", "3", "--unread", "2", "--unread-s", "0.5"],
                     [r"^unauthenticated +\d+ MB", r"^20-concurrent +\d+ MB", r"^list-results .*200: 8 jobs",
                      r"^job-views .*5 x 200", r"^result-views .*3 x 200 .*slowest /health [\d.]+ s",
                      r"^unread-views .*after 0.5 s: RSS \d+ MB"]),
    "queue_retention": (["--days", "1", "--jobs-per-day", "10", "--workflow-kb", "1", "--report-every", "1"],
                        [r"^\| 1 \| 10 \| ", r"^status count: "]),
    "queue_round_robin": (["--finished", "10", "--users", "2", "--workflow-kb", "1"],
                          [r"^\| 10 \| [\d.]+ \| [\d.]+ \|"]),
    "rollout_oracle": (["--workload", "studio", "--seeds", "1", "--max-replicas", "3", "--ahead-min", "5"],
                       [r"^\| 1 \| [\d.]+ / \d+ \| [\d.]+ / \d+ \([1-9]\d*\) \| [\d.]+ / \d+ \| [\d.]+ \| "
                        r"(yes|no) \|$"]),
    "runpod_creates": (["--pods", "1", "--latency-s", "0"], [r"^apply\(1\) from 0 pods .*: [\d.]+ s"]),
    "runpod_stops": (["--pods", "1", "--latency-s", "0"], [r"^pause\(\) of 1 pods .*: [\d.]+ s"]),
    "scratch_emptying": (["--files", "10", "--size", "1"], [r"^10 files of 1 B .* removed in [\d.]+ s"]),
    "slow_headers": (["--server", "health", "--clients", "2", "--headers", "2", "--hold", "0"],
                     [r"^\{'server': 'health', 'clients': 2, .*'probe': 200\}"]),
    "view_deliveries": (["--file-mib", "1", "--runs", "1"],
                        [r"^run 1: 1 MiB in [\d.]+ s \(\d+ MiB/s\), longest event-loop stall \d+ ms"]),
    "worker_memory": (["--jobs", "3", "--flood-mb", "1", "--outputs", "100"],  # four workers one after the other: ~5 s
                      [r'"completed": 3', r'"executed_flood_1_mb": \{\n +"worker_exit": 0',
                       r'"listing_100_outputs": \{\n +"worker_exit": 0']),
    "worker_overhead": (["--jobs", "3"], [r'"jobs_per_s": [\d.]+', r'"overhead_ms_p50": [\d.]+']),
}  # fmt: skip
# Only imported and their arguments parsed, each for the reason given.
IMPORT_ONLY = {
    "fault_run": "tests/faults/test_fault_run.py runs it reduced (~25 s alone)",
    "hung_comfyui": "waits for the worker to give up on a hung ComfyUI: ~40 s with 3 s timeouts, minutes by default",
    "scaler_broken_peers": "the scaler waits out its clients' production timeouts against silent peers: minutes",
    "slow_providers": "paces every tick to the 15 s SCALER_INTERVAL_S: minutes",
    "soak": "churn, hard kills and a drain of minutes are what it measures",
}


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
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_MANAGER")}
    env["TMPDIR"] = str(tmp_path)  # what a bench leaves behind goes with the test's folder
    run = subprocess.run([sys.executable, "-m", f"bench.{name}", *arguments], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=100)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    for figure in figures:
        assert re.search(figure, run.stdout, re.MULTILINE), f"{figure!r} not in:\n{run.stdout[-3000:]}"


HUNG_WORKER = "import os, sys, time; open(sys.argv[0] + '.pid', 'w').write(str(os.getpid())); time.sleep(600)"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["comfyui_reply_memory", "worker_memory"])
def test_a_worker_that_never_exits_fails_the_bench_and_is_ended(name: str, tmp_path: Path) -> None:
    """--worker-source whose worker hangs: the bench fails within --worker-timeout and takes the worker with it."""
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__main__.py").write_text(HUNG_WORKER)
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_MANAGER")}
    env["TMPDIR"] = str(tmp_path)
    command = [sys.executable, "-m", f"bench.{name}", "--worker-source", str(tmp_path), "--worker-timeout", "2"]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=100)
    assert run.returncode != 0
    assert "TimeoutError" in run.stderr
    pid = int((tmp_path / "worker" / "__main__.py.pid").read_text())
    assert not Path(f"/proc/{pid}").exists(), "the hung worker was left running"
