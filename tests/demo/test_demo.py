"""The demo end to end: real queue, supervisor + simulator replicas, scaler; every job ends, nothing outlives it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import demo.run
from demo.cli import parse_demo_args, print_report
from demo.replicas import free_loopback_port
from demo.run import DemoOptions, demo_scaling, run_demo
from queue_manager import JobStore
from queue_manager.server import QueueManagerServer
from scaler.policy import Observation, PolicyState, Replica, decide
from standins.comfyui import ComfyUISimulator


@pytest.mark.timeout(180)
async def test_short_demo_finishes_every_job_and_returns_to_zero(tmp_path):
    options = DemoOptions(
        jobs=30, users=6, bad_jobs=2, max_replicas=3, node_seconds=0.05, spread_s=1.0,
        output_dir=tmp_path / "demo", db=tmp_path / "queue.db", idle_to_zero_s=2.0, timeout_s=150, live=False,
    )
    report = await run_demo(options)

    assert report["ok"], report
    assert report["jobs_submitted"] == 30 and report["unfinished"] == []
    assert report["completed"] + report["failed"] == 30
    assert report["failed"] == 2 and all("ComfyUI rejected the workflow" in r for r in report["failure_reasons"])
    assert report["replicas_at_end"] == 0 and report["orphan_processes"] == []
    assert report["replica_starts"] >= 1
    assert json.loads((tmp_path / "demo" / "report.json").read_text()) == report

    async with QueueManagerServer(tmp_path / "queue.db") as qm:  # the demo's own database, reopened
        jobs = qm.store.list(limit=1000)
    completed = [job for job in jobs if job.status == "completed"]
    assert len(completed) >= 28
    # Every file every result lists came back through GET /api/jobs/{id}/outputs/{path}, as written.
    listed = sum(len(job.result["outputs"]) for job in completed)
    assert report["results"] == {"files": listed, "fetched": listed, "failed": 0, "first_failure": None}
    for job in completed:
        outputs = job.result["outputs"]
        assert outputs, job.id
        for item in outputs:
            data = (tmp_path / "demo" / "outputs" / item["path"]).read_bytes()
            assert len(data) == item["bytes"] and hashlib.sha256(data).hexdigest() == item["sha256"]
            assert item["path"].startswith(f"{job.user_id}/{job.id}/")


def test_cli_explains_itself():
    run = subprocess.run([sys.executable, "-m", "demo", "--help"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and "demo" in run.stdout and "queue" in run.stdout
    wrong = subprocess.run([sys.executable, "-m", "demo", "bogus"], capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2 and "unknown command 'bogus'" in wrong.stderr


@pytest.mark.parametrize(("argv", "named"), [
    # Each was a traceback (negative jobs, no users, more replicas than the policy drives) or ran to the timeout.
    (["--jobs", "-1"], "--jobs: -1 is not 1-10000"),
    (["--jobs", "100000000"], "--jobs: 100000000 is not 1-10000"),
    (["--users", "0"], "--users: 0 is not 1-1000"),
    (["--max-replicas", "100000"], "--max-replicas: 100000 is not 1-100"),
    (["--max-replicas", "0"], "--max-replicas: 0 is not 1-100"),
    (["--bad-jobs", "-2"], "--bad-jobs: -2 is not 0-10000"),
    (["--node-seconds", "nan"], "--node-seconds: nan is not 0-3600"),
    (["--node-seconds", "inf"], "--node-seconds: inf is not 0-3600"),
    (["--spread-s", "-5"], "--spread-s: -5 is not 0-86400"),
    (["--price-per-hour", "nan"], "--price-per-hour: nan is not 0-1000"),
    # Under the scaler's least price: a traceback (ValueError from ScalingConfig) once everything had started.
    (["--price-per-hour", "0.0005"], "--price-per-hour: 0.0005 is not 0 (free) or 0.001-1000"),
    (["--price-per-hour", "1e-320"], "--price-per-hour: 1e-320 is not 0 (free) or 0.001-1000"),
    (["--idle-to-zero-s", "nan"], "--idle-to-zero-s: nan is not 0-86400"),
    (["--timeout-s", "0"], "--timeout-s: 0 is not 1-86400"),
    (["--jobs", "ten"], "--jobs: 'ten' is not a whole number"),
    # Every worker refused it at start and was started again, until --timeout-s (900 s by default): NOT OK.
    (["--comfyui-url", "notaurl"], "--comfyui-url: 'notaurl' is not an http:// or https:// URL"),
    (["--comfyui-url", "ftp://127.0.0.1:8188"], "--comfyui-url: 'ftp://127.0.0.1:8188' is not an http:// or https://"),
])
def test_demo_refuses_a_value_it_cannot_run_naming_the_flag(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_demo_args(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--fail", "fake-verda"],
                                  ["--providers", "local,fake-runpod", "--fail", "fake-verda"]])
def test_demo_refuses_to_fail_a_provider_it_does_not_run(capsys, argv):
    """Before: --fail was ignored when the provider was not in --providers (or with no --providers at all): the
    demo ran with nothing failing, and reported no fallback, while the operator asked for one."""
    with pytest.raises(SystemExit) as exit_info:
        parse_demo_args(argv)
    assert exit_info.value.code == 2
    assert "--fail: fake-verda is not one of the providers the demo runs" in capsys.readouterr().err
    assert parse_demo_args(["--providers", "local,fake-verda", "--fail", "fake-verda"]).fail == "fake-verda"


@pytest.mark.parametrize(("option", "where", "named"), [
    ("--output-dir", "a-file", "--output-dir: cannot create"),
    ("--output-dir", "a-file/below", "--output-dir: cannot create"),
    ("--output-dir", "a-file-as-logs", "--output-dir: cannot create"),
    ("--db", "no-such-folder/queue.db", "--db: cannot open"),
    ("--db", ".", "--db: cannot open"),
    ("--db", "a-file", "--db: cannot open"),
])
def test_demo_refuses_a_folder_or_database_it_cannot_use_naming_the_option(tmp_path, capsys, option, where, named):
    """Before: each a traceback (FileExistsError, NotADirectoryError, sqlite3 'unable to open database file' or
    'file is not a database'), the last two once the queue manager was starting; a file in place of its logs
    folder, a NotADirectoryError once the replicas were starting, hidden by an UnboundLocalError."""
    (tmp_path / "a-file").write_bytes(b"not a database, and long enough to have a header: " * 4)
    (tmp_path / "a-file-as-logs").mkdir()
    (tmp_path / "a-file-as-logs" / "logs").touch()
    with pytest.raises(SystemExit) as exit_info:
        parse_demo_args([option, str(tmp_path / where)])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.timeout(180)
async def test_a_result_file_removed_or_altered_before_the_fetch_fails_the_demo(tmp_path, monkeypatch):
    """The fetch reads what the volume holds: one result's file deleted, another's bytes changed after the job
    reported them; the first is not served (404), the second is served but not as the result's sha256 says."""
    fetch_results = demo.run.fetch_results
    spoiled = {}

    async def after_spoiling_two(queue_url, jobs, outputs, *, token):
        removed, altered = (job.result["outputs"][0]["path"] for job in jobs[:2])
        (outputs / removed).unlink()
        (outputs / altered).write_bytes(b"not what the worker wrote")
        spoiled.update(removed=removed, altered=altered, job_id=jobs[0].id)
        return await fetch_results(queue_url, jobs, outputs, token=token)

    monkeypatch.setattr(demo.run, "fetch_results", after_spoiling_two)
    options = DemoOptions(
        jobs=3, users=1, bad_jobs=0, max_replicas=1, node_seconds=0.0, spread_s=0.0,
        output_dir=tmp_path / "demo", idle_to_zero_s=1.0, timeout_s=150, live=False,
    )
    report = await run_demo(options)

    assert report["completed"] == 3 and report["unfinished"] == [] and report["orphan_processes"] == []
    results = report["results"]
    assert results["failed"] == 2 and results["fetched"] == results["files"] - 2, results
    first = results["first_failure"]
    assert (first["job_id"], first["path"]) == (spoiled["job_id"], spoiled["removed"])
    assert first["reason"].startswith("HTTP 404") and "no longer on the volume" in first["reason"]
    assert report["ok"] is False


@pytest.mark.timeout(180)
async def test_demo_with_the_first_provider_failing_falls_back_to_the_fakes(tmp_path):
    options = DemoOptions(
        jobs=12, users=4, bad_jobs=0, max_replicas=4, node_seconds=0.05, spread_s=1.0,
        output_dir=tmp_path / "demo", idle_to_zero_s=2.0, timeout_s=150, live=False,
        providers=("local", "fake-verda", "fake-runpod"), fail="local",
    )
    report = await run_demo(options)

    assert report["ok"], report
    assert report["completed"] == 12 and report["replicas_at_end"] == 0 and report["orphan_processes"] == []
    fleet = report["providers"]
    assert fleet["providers"]["local"]["replica_starts"] == 0
    assert fleet["providers"]["fake-verda"]["replica_starts"] >= 1
    assert fleet["providers"]["fake-runpod"]["replica_starts"] >= 1, "Verda's share is half: RunPod takes the rest"
    assert {"provider": "local", "health": "errors"}.items() <= fleet["moves"][0].items()
    assert [m["reason"] for m in fleet["moves"] if m.get("reason") == "fallback"]
    assert fleet["spend"]["fake-verda"]["last_day"] > 0 and fleet["spend"]["fake-runpod"]["last_day"] > 0
    assert json.loads((tmp_path / "demo" / "ledger.json").read_text())["buckets"]["fake-runpod"]


@pytest.mark.timeout(120)
def test_without_a_terminal_the_demo_logs_its_progress(tmp_path):
    """docs/demo.md: "with --no-live or without a terminal, a log line every 5 s". Without a terminal and without
    --no-live the demo used to print nothing at all until its report, 3 minutes later."""
    run = subprocess.run(
        [sys.executable, "-m", "demo", "demo", "--jobs", "2", "--users", "1", "--bad-jobs", "0", "--max-replicas", "1",
         "--node-seconds", "0", "--idle-to-zero-s", "1", "--timeout-s", "100", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "report.json").read_text())["results"]
    assert results["fetched"] == results["files"] >= 2 and results["failed"] == 0
    assert (f"Results: {results['fetched']} files fetched through the queue manager "
            "(GET /api/jobs/<id>/outputs/<path>), 0 failed") in " ".join(run.stdout.split()), run.stdout
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    progress = [line for line in lines if line["event"] == "Demo progress"]
    assert progress, run.stderr[-2000:]
    assert {"pending", "running", "completed", "replicas", "spend"} <= progress[0].keys()
    # Not drowned: the in-process queue manager and scaler logged every job and tick at info (job_submitted, …).
    assert [line["event"] for line in lines if line["level"] == "info" and line["event"] != "Demo progress"] == []


@pytest.mark.parametrize("fleet", [False, True])
def test_the_demo_s_burst_keeps_its_replicas_while_jobs_wait_past_the_demo_s_target(fleet):
    """Five replicas on the burst, the jobs' length learned (2 s): 80 still queued would wait 32 s on the five.
    With the production target (180 s) the demo kept one replica and served its 100 jobs in turn (p95 wait 174 s)."""
    now = 100.0
    burst = Observation(
        now=now, pending=80, running=5, replicas=tuple(Replica(f"r{i}", now - 5) for i in range(5)),
        pending_ages_s=(5.0,) * 80, running_elapsed_s=(1.0,) * 5, running_waited_s=(4.0,) * 5,
        job_duration_s=2.0, long_job_duration_s=2.2,
    )
    config = demo_scaling(DemoOptions(), fleet=fleet)
    decision = decide(config, PolicyState(applied=5), burst)
    assert decision.desired == 5, decision


@pytest.mark.parametrize("failure", ["queue manager does not start", "error while running"])
async def test_a_demo_that_fails_leaves_no_scratch_folder_and_no_signal_handlers(tmp_path, monkeypatch, failure):
    """Before: the scratch folder (comfy-demo-*, the replicas' ComfyUI folders) was removed only on the normal
    path, and when the queue manager could not start the demo's SIGINT/SIGTERM handlers stayed installed: a
    Ctrl-C after it set an event nobody waits for. And an earlier run's report.json (perhaps "ok": true) stayed,
    to be read as this run's."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    db = tmp_path / "queue.db"
    if failure == "queue manager does not start":
        db.mkdir()  # not a database: sqlite cannot open it
    else:
        def fails(*args, **kwargs):
            raise RuntimeError("boom")

        monkeypatch.setattr(demo.run, "demo_scaling", fails)
    options = DemoOptions(jobs=1, users=1, bad_jobs=0, output_dir=tmp_path / "demo", db=db, live=False)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "report.json").write_text('{"ok": true}')  # an earlier run's
    with pytest.raises((sqlite3.Error, RuntimeError)):
        await run_demo(options)
    assert list(temp.iterdir()) == []
    assert not (tmp_path / "demo" / "report.json").exists(), "an earlier run's report.json was left as this run's"
    loop = asyncio.get_running_loop()
    assert not loop.remove_signal_handler(signal.SIGINT) and not loop.remove_signal_handler(signal.SIGTERM)


async def test_a_demo_whose_replicas_cannot_start_raises_why(tmp_path):
    """Its logs folder a file, as when it was replaced after the command line was checked. Before: an
    UnboundLocalError (the replicas' backend, never made, closed all the same) in place of the NotADirectoryError."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "logs").touch()
    options = DemoOptions(jobs=1, users=1, bad_jobs=0, output_dir=tmp_path / "demo", live=False)
    with pytest.raises(NotADirectoryError):
        await run_demo(options)


def test_requeues_are_counted_for_this_run_s_jobs_only() -> None:
    """With --db reused the store holds earlier runs' jobs too. Before: every requeued job in it was counted, the
    earlier run's as well (2 here, for 1 requeue in this run)."""
    from demo.report import ReplicaLedger, build_report
    from queue_manager import JobRecord
    from queue_manager.store import JobStatus

    def job(job_id: str, requeued_from: str | None = None) -> JobRecord:
        return JobRecord(
            id=job_id, user_id="u", status=JobStatus("completed"), priority=0, workflow={},
            metadata={"requeued_from": requeued_from} if requeued_from else {}, result={"outputs": []}, error=None,
            worker_id="w", created_at=1.0, started_at=2.0, completed_at=3.0,
        )

    jobs = [job("old"), job("old-again", requeued_from="old"), job("new"), job("new-again", requeued_from="new"),
            job("other")]
    report = build_report(
        jobs, ["new", "other"], ReplicaLedger(), span_s=10.0, price_per_hour=1.0, replica_starts=1, outputs="o",
        results={"failed": 0}, replicas_at_end=0,
    )
    assert report["jobs_submitted"] == 2 and report["completed"] == 2
    assert report["requeued_by_scale_down"] == 1


@pytest.mark.timeout(180)
async def test_a_job_that_fails_though_not_broken_on_purpose_makes_the_demo_not_ok(tmp_path):
    """Before: any failure counted as one of --bad-jobs' on purpose: a ComfyUI that failed a good job (here one
    SaveImage raising, as an out-of-memory would) still ended OK, exit 0; with a ComfyUI missing the demo's
    nodes, every job failed and the demo said OK."""
    async with ComfyUISimulator(tmp_path / "comfyui" / "output") as comfyui:
        comfyui.inject_error("CUDA out of memory", class_type="SaveImage", prompts=1)
        options = DemoOptions(
            jobs=3, users=1, bad_jobs=0, max_replicas=1, comfyui_url=comfyui.url, spread_s=0.0,
            output_dir=tmp_path / "demo", idle_to_zero_s=1.0, timeout_s=150, live=False,
        )
        report = await run_demo(options)

    assert report["failed"] == 1 and report["unfinished"] == [] and report["orphan_processes"] == [], report
    assert report["failed_on_purpose"] == 0 and len(report["failed_unexpectedly"]) == 1
    assert report["ok"] is False


@pytest.mark.timeout(120)
async def test_a_demo_stopped_while_submitting_reports_the_jobs_it_had_submitted(tmp_path):
    """--timeout-s (or Ctrl-C) before the last submission. Before: the report said 0 submitted, 0 unfinished
    (wait p50 None) though the queue held the jobs sent so far; now it counts and follows each of them."""
    options = DemoOptions(
        jobs=4, users=1, bad_jobs=0, max_replicas=1, node_seconds=0.0, spread_s=60.0,  # at 1.8, 5.2, 6.4, 10.9 s
        output_dir=tmp_path / "demo", db=tmp_path / "queue.db", idle_to_zero_s=1.0, timeout_s=4, live=False,
    )
    report = await run_demo(options)

    async with QueueManagerServer(tmp_path / "queue.db") as qm:
        in_queue = qm.store.list(limit=100)
    assert 1 <= report["jobs_submitted"] == len(in_queue) < 4, report
    assert report["completed"] + report["failed"] + len(report["unfinished"]) == len(in_queue)
    assert report["ok"] is False



@pytest.mark.timeout(120)
async def test_a_demo_that_times_out_says_so(tmp_path, capsys):
    """Stopped by --timeout-s with the jobs sent so far done. Before: 'NOT OK' (exit 1) and not a word why: no
    unfinished job, no failure; now the report says it timed out."""
    options = DemoOptions(
        jobs=4, users=1, bad_jobs=0, max_replicas=1, node_seconds=0.0, spread_s=60.0,  # at 1.8, 5.2, 6.4, 10.9 s
        output_dir=tmp_path / "demo", timeout_s=4, live=False,
    )
    report = await run_demo(options)
    print_report(report, tmp_path / "demo" / "report.json")

    assert report["stopped"] == "timed out after --timeout-s 4 s" and report["ok"] is False, report
    assert "stopped before the end: timed out after --timeout-s 4 s" in capsys.readouterr().out


@pytest.mark.timeout(180)
async def test_a_failure_reason_is_printed_as_comfyui_gave_it(tmp_path, capsys):
    """Failure reasons went through rich markup: '[/models]' in a ComfyUI error was a MarkupError traceback in
    place of the report's end, and '[a]' vanished from the line."""
    reason, out = await _failure_printed(tmp_path, capsys, "cannot read [a].png in [/models]")
    assert "cannot read [a].png in [/models]" in reason
    assert f"1 x {reason}" in out


async def _failure_printed(tmp_path, capsys, error: str) -> tuple[str, str]:
    """A one-job demo whose job fails with ComfyUI's ``error``: the report's failure reason, and what the printed
    report shows."""
    async with ComfyUISimulator(tmp_path / "comfyui" / "output") as comfyui:
        comfyui.inject_error(error, class_type="SaveImage", prompts=1)
        options = DemoOptions(
            jobs=1, users=1, bad_jobs=0, max_replicas=1, comfyui_url=comfyui.url, spread_s=0.0,
            output_dir=tmp_path / "demo", idle_to_zero_s=1.0, timeout_s=150, live=False,
        )
        report = await run_demo(options)
    capsys.readouterr()
    print_report(report, tmp_path / "demo" / "report.json")
    (reason,) = report["failure_reasons"]
    return reason, capsys.readouterr().out


@pytest.mark.timeout(60)
def test_demo_refuses_a_database_another_process_holds_naming_the_option(tmp_path, capsys):
    """A --db another program is writing (an sqlite3 shell in a transaction, say). Before: accepted, then a
    traceback (sqlite3.OperationalError: database is locked) once the queue manager was starting, exit 1."""
    db = tmp_path / "queue.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE notes (text)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO notes VALUES ('mid-transaction')")
    try:
        with pytest.raises(SystemExit) as exit_info:
            parse_demo_args(["--db", str(db)])
    finally:
        holder.close()
    assert exit_info.value.code == 2
    assert "--db: cannot open" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_demo_refuses_the_database_of_a_queue_manager_serving_it_naming_the_option(tmp_path, capsys):
    """Before: accepted (the serving queue manager holds no transaction open), and the demo's simulated workers
    took that queue manager's jobs as well as its own, completing them with simulated images."""
    db = tmp_path / "queue.db"
    serving = subprocess.Popen(
        [sys.executable, "-m", "queue_manager", "--db", str(db), "--port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert b"queue_manager_started" in serving.stderr.readline()  # the database is open
        with pytest.raises(SystemExit) as exit_info:
            parse_demo_args(["--db", str(db)])
    finally:
        serving.terminate()
        serving.wait(timeout=30)
    assert exit_info.value.code == 2
    assert f"--db: {db} is in use by another process" in capsys.readouterr().err
    assert parse_demo_args(["--db", str(db)]).db == db  # once it has stopped


def test_demo_refuses_a_database_holding_unfinished_jobs_naming_the_option(tmp_path, capsys):
    """Before: a stopped production queue's database was taken, and the demo's simulated workers ran its pending
    jobs, completing them with simulated images (the demo also waits for every job in it)."""
    db = tmp_path / "jobs.db"
    store = JobStore(str(db))
    try:
        store.submit("alice", {"1": {"class_type": "SaveImage", "inputs": {}}})
    finally:
        store.close()
    with pytest.raises(SystemExit) as exit_info:
        parse_demo_args(["--db", str(db)])
    assert exit_info.value.code == 2
    assert f"--db: {db} holds 1 unfinished job (pending or running)" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_queue_manager_started_on_the_database_a_demo_serves_is_refused_naming_the_demo(tmp_path):
    """The other order of the test above. Before: the demo took no lock, the queue manager served the file too and
    handed the demo's jobs out to whoever polled it."""
    db = tmp_path / "queue.db"
    (tmp_path / "tmp").mkdir()
    with (tmp_path / "stderr").open("w") as stderr:
        demo = subprocess.Popen(
            [sys.executable, "-m", "demo", "demo", "--jobs", "1", "--bad-jobs", "0", "--spread-s", "0",
             "--node-seconds", "60", "--max-replicas", "1", "--no-live", "--db", str(db),
             "--output-dir", str(tmp_path / "demo")],
            env={**os.environ, "TMPDIR": str(tmp_path / "tmp")}, stdout=subprocess.DEVNULL, stderr=stderr,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        for _ in range(1200):  # until a replica runs its job: the demo's queue manager serves the database
            if list((tmp_path / "demo" / "logs").glob("*.log")):
                break
            assert demo.poll() is None, (tmp_path / "stderr").read_text()
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "-m", "queue_manager", "--db", str(db), "--port", "0"],
            capture_output=True, text=True, timeout=30,
        )
        demo.send_signal(signal.SIGINT)  # the demo stops the run itself: exit 1, "stopped" in its report
        demo.wait(timeout=60)
    finally:
        demo.kill()
    assert second.returncode == 1, second.stderr
    assert f"--db {db} is served by another queue manager (pid {demo.pid}" in second.stderr


@pytest.mark.timeout(60)
async def test_demo_refuses_a_comfyui_url_where_no_comfyui_answers(tmp_path, capsys):
    """A mistyped port. Before: accepted; every worker waited 60 s for that ComfyUI, was started again, until
    --timeout-s (900 s by default), then NOT OK. Now exit 2 at once, naming the option."""
    nobody = f"http://user:hunter2@127.0.0.1:{free_loopback_port()}"
    with pytest.raises(SystemExit) as exit_info:
        await asyncio.to_thread(parse_demo_args, ["--comfyui-url", nobody])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--comfyui-url: no ComfyUI answers at http://" in err and "hunter2" not in err, err
    async with ComfyUISimulator(tmp_path / "output") as comfyui:
        args = await asyncio.to_thread(parse_demo_args, ["--comfyui-url", comfyui.url])
    assert args.comfyui_url == comfyui.url


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("fault", "named"), [
    ({"status": 500, "body": {"detail": "disk of http://admin:hunter2@db.internal/ is full"}},
     "submission failed: POST /api/jobs answered HTTP 500: disk of http://***@db.internal/ is full"),
    ({"drop": True}, "submission failed: POST /api/jobs failed: RemoteProtocolError"),
])
async def test_a_submission_the_queue_manager_refuses_stops_the_demo_saying_so(tmp_path, monkeypatch, capsys, fault,
                                                                                named):
    """The second POST /api/jobs answered neither 2xx nor 429, or not at all. Before: a traceback out of the demo
    (httpx.HTTPStatusError, RemoteProtocolError) and no report.json; now it stops as on Ctrl-C and says why."""

    class RefusingQueueManager(QueueManagerServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, test_hooks=True, **kwargs)
            self.faults.inject("submit-job", delay_s=0.01)  # the first is accepted
            self.faults.inject("submit-job", **fault)

    monkeypatch.setattr(demo.run, "QueueManagerServer", RefusingQueueManager)
    options = DemoOptions(
        jobs=3, users=1, bad_jobs=0, max_replicas=1, node_seconds=0.0, spread_s=0.0,
        output_dir=tmp_path / "demo", idle_to_zero_s=1.0, timeout_s=100, live=False,
    )
    report = await run_demo(options)
    print_report(report, tmp_path / "demo" / "report.json")

    assert report["stopped"].startswith(named) and report["ok"] is False, report
    assert report["jobs_submitted"] == 1 and report["orphan_processes"] == [], report
    assert json.loads((tmp_path / "demo" / "report.json").read_text()) == report
    out = capsys.readouterr().out
    assert f"stopped before the end: {named}" in " ".join(out.split()) and "hunter2" not in out, out


async def test_a_queue_manager_answering_503_for_a_while_is_waited_out(tmp_path, monkeypatch):
    """503 is the queue manager's "cannot take it now, nothing was changed, retry later" (a busy database). Before:
    the demo stopped at the first one, 'submission failed', with the job never submitted."""

    class BusyQueueManager(QueueManagerServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, test_hooks=True, **kwargs)
            self.faults.inject("submit-job", status=503, times=3)

    monkeypatch.setattr(demo.run, "QueueManagerServer", BusyQueueManager)
    options = DemoOptions(
        jobs=2, users=1, bad_jobs=0, max_replicas=1, node_seconds=0.0, spread_s=0.0,
        output_dir=tmp_path / "demo", idle_to_zero_s=1.0, timeout_s=100, live=False,
    )
    report = await run_demo(options)

    assert report["stopped"] is None and report["jobs_submitted"] == 2 and report["completed"] == 2, report
    assert report["ok"] is True, report


@pytest.mark.timeout(120)
async def test_a_ctrl_c_while_the_results_are_fetched_still_writes_the_report(tmp_path, monkeypatch):
    """The replicas are stopped, the results being fetched. Before: a KeyboardInterrupt traceback out of the demo
    and no report.json; now the fetch stops and the report says so."""
    fetch_results = demo.run.fetch_results

    async def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return await fetch_results(*args, **kwargs)

    monkeypatch.setattr(demo.run, "fetch_results", interrupted)
    options = DemoOptions(
        jobs=2, users=1, bad_jobs=0, max_replicas=1, node_seconds=0.0, spread_s=0.0,
        output_dir=tmp_path / "demo", idle_to_zero_s=1.0, timeout_s=100, live=False,
    )
    try:
        report = await run_demo(options)
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C while the results were fetched was a KeyboardInterrupt out of the demo")

    assert report["stopped"] == "interrupted (Ctrl-C or SIGTERM) while the results were fetched", report
    assert report["completed"] == 2 and report["ok"] is False and report["orphan_processes"] == [], report
    assert json.loads((tmp_path / "demo" / "report.json").read_text()) == report


@pytest.mark.timeout(120)
async def test_replicas_the_scaler_left_running_are_counted_at_the_end(tmp_path, capsys):
    """The fleet not back to zero when the demo stops (here --timeout-s with a job still running on its replica).
    Before: 'replicas at the end: 0', counted after the demo had stopped them itself; now the replica the scaler
    left running is counted."""
    options = DemoOptions(
        jobs=1, users=1, bad_jobs=0, max_replicas=1, node_seconds=60.0, spread_s=0.0,
        output_dir=tmp_path / "demo", idle_to_zero_s=1.0, timeout_s=8, live=False,
    )
    report = await run_demo(options)
    print_report(report, tmp_path / "demo" / "report.json")

    assert report["replicas_at_end"] == 1 and report["ok"] is False, report
    assert report["orphan_processes"] == [], "the demo still stops it"
    assert "replicas at the end: 1" in capsys.readouterr().out


@pytest.mark.timeout(120)
async def test_the_scratch_folder_of_a_demo_killed_outright_goes_at_the_next_run(tmp_path, monkeypatch):
    """SIGKILL runs no `finally`. Before: its comfy-demo-* scratch folder stayed for good; now the next run removes
    it, and only it: not a live run's, nor a folder without the run's pid file."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    killed = subprocess.Popen(
        [sys.executable, "-m", "demo", "demo", "--jobs", "1", "--spread-s", "60", "--no-live",
         "--output-dir", str(tmp_path / "killed")],
        env={**os.environ, "TMPDIR": str(temp)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            left = [folder for folder in temp.glob("comfy-demo-*") if (folder / "queue.db").exists()]
            if left or killed.poll() is not None:
                break
            await asyncio.sleep(0.05)
    finally:
        killed.kill()
        killed.wait(timeout=30)
    assert left, "the demo never made its scratch folder"
    live, unmarked = temp / "comfy-demo-live", temp / "comfy-demo-unmarked"
    live.mkdir()
    (live / "demo.pid").write_text(str(os.getpid()))
    unmarked.mkdir()

    db = tmp_path / "not-a-database"
    db.mkdir()  # this run stops at once: the sweep is at its start
    options = DemoOptions(jobs=1, users=1, bad_jobs=0, output_dir=tmp_path / "demo", db=db, live=False)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with pytest.raises(sqlite3.Error):
        await run_demo(options)
    assert sorted(temp.iterdir()) == [live, unmarked]


@pytest.mark.timeout(60)
def test_only_the_demo_s_own_processes_are_taken_for_survivors(tmp_path):
    """A ComfyUI a replica left running has its replica's SCRATCH_DIR in its environment. Before: any process naming
    the scratch folder in its arguments was taken for one (an operator's `ls` of it, `watch du -sh` on it), and made
    the run NOT OK."""
    scratch = tmp_path / "comfy-demo-run"
    wait = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    left_running = subprocess.Popen(wait, stdin=subprocess.PIPE,
                                    env={**os.environ, "SCRATCH_DIR": str(scratch / "local-1")})
    looking_at_it = subprocess.Popen([*wait, str(scratch)], stdin=subprocess.PIPE)
    try:
        found = demo.run._processes_using(scratch)
    finally:
        for process in (left_running, looking_at_it):
            process.stdin.close()
            process.wait(timeout=30)
    assert left_running.pid in found and looking_at_it.pid not in found, found


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


@pytest.mark.timeout(120)
def test_the_replicas_of_a_demo_killed_outright_are_killed_with_it(tmp_path):
    """SIGKILL runs no `finally`. Before: each replica got SIGTERM, let its job finish and retried the queue manager
    that had died with the demo until its 30 s stop deadline, then logged its exit; now it is killed with the demo,
    its ComfyUI with it."""
    log_file = tmp_path / "demo" / "logs" / "local-worker-1.log"
    killed = subprocess.Popen(
        [sys.executable, "-m", "demo", "demo", "--jobs", "20", "--spread-s", "60", "--max-replicas", "1",
         "--no-live", "--output-dir", str(tmp_path / "demo")],
        env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(1200):  # until the replica has taken a job
            if (log_file.exists() and "Processing job" in log_file.read_text()) or killed.poll() is not None:
                break
            time.sleep(0.05)
        replica = _children(killed.pid)
        comfyui = [child for pid in replica for child in _children(pid)]
    finally:
        killed.kill()
        killed.wait(timeout=30)
    assert len(replica) == 1 and len(comfyui) == 1, (replica, comfyui)
    for _ in range(1200):  # bounded: a regression fails here rather than hangs
        if not any(Path(f"/proc/{pid}").exists() for pid in replica + comfyui):
            break
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in replica + comfyui)
    assert "supervisor.exit" not in log_file.read_text(), "it was asked to stop, not killed"


@pytest.mark.timeout(60)
def test_a_ctrl_c_while_the_comfyui_url_is_probed_is_one_line_and_exit_130(tmp_path):
    """Before: a KeyboardInterrupt traceback (the probe waits up to 10 s for an answer), killed by SIGINT."""
    with socket.socket() as silent:  # takes the probe's connection and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(30)
        demo = subprocess.Popen(
            [sys.executable, "-m", "demo", "demo", "--comfyui-url", f"http://127.0.0.1:{silent.getsockname()[1]}",
             "--output-dir", str(tmp_path / "demo")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's background job ignores it
        )
        try:
            with silent.accept()[0]:  # the demo now waits for an answer
                demo.send_signal(signal.SIGINT)
                _, err = demo.communicate(timeout=30)
        finally:
            demo.kill()
    assert demo.returncode == 130
    assert err.splitlines() == ["comfy-serverless demo: interrupted (Ctrl-C); nothing was started"]


@pytest.mark.timeout(120)
async def test_a_replica_stopped_while_comfyui_is_slow_to_interrupt_hands_its_job_back_before_its_kill(tmp_path):
    """The demo kills a stopping replica 15 s after its SIGTERM. Before: its worker planned for the platform's 30 s
    (PLATFORM_KILL_DELAY_S unset), waited 12.5 s for ComfyUI's interrupt after its 5-s grace and was killed first: the
    job stayed running, for its lease to run out. Now its budget is the demo's: the job is handed back at once."""
    async with ComfyUISimulator(tmp_path / "comfyui" / "output", default_node_seconds=60.0) as comfyui:
        comfyui.slow_down("/interrupt", 60.0)
        options = DemoOptions(
            jobs=1, users=1, bad_jobs=0, max_replicas=1, comfyui_url=comfyui.url, spread_s=0.0,
            output_dir=tmp_path / "demo", db=tmp_path / "queue.db", idle_to_zero_s=1.0, timeout_s=15, live=False,
        )
        report = await run_demo(options)

    async with QueueManagerServer(tmp_path / "queue.db") as qm:
        [job] = qm.store.list(limit=10)
    assert report["orphan_processes"] == [], report
    assert job.status == "pending" and job.attempt == 2, job
    assert [entry["cause"] for entry in job.history] == ["fault"] and "interrupt" in job.history[0]["reason"], job


@pytest.mark.timeout(120)
def test_a_folder_in_place_of_report_json_is_one_line_naming_it(tmp_path):
    """Before: an IsADirectoryError traceback from the removal of the earlier report."""
    (tmp_path / "demo" / "report.json").mkdir(parents=True)
    demo = _demo_to_interrupt(tmp_path, subprocess.DEVNULL)
    try:
        demo.wait(timeout=90)
    finally:
        demo.kill()
    lines = (tmp_path / "stderr").read_text().splitlines()
    assert lines == [f"comfy-serverless demo: cannot remove the earlier {tmp_path / 'demo' / 'report.json'}: "
                     "Is a directory; nothing is left running"], lines
    assert demo.returncode == 1


@pytest.mark.timeout(120)
async def test_a_report_json_that_cannot_be_written_at_the_end_says_where(tmp_path):
    """A folder made in report.json's place while the demo runs. Before: ReportNotWritten, the report lost; now the
    report names the file it could not write, and is NOT OK."""
    options = DemoOptions(jobs=1, users=1, bad_jobs=0, node_seconds=0, spread_s=0, max_replicas=1,
                          output_dir=tmp_path / "demo", idle_to_zero_s=1.0, timeout_s=60, live=False)

    async def block_the_report_once_a_replica_runs():
        while not list((tmp_path / "demo" / "logs").glob("*.log")):
            await asyncio.sleep(0.05)
        (tmp_path / "demo" / "report.json").mkdir()

    blocker = asyncio.create_task(block_the_report_once_a_replica_runs())
    report = await run_demo(options)
    await blocker
    assert report["not_saved"] == [f"cannot write {tmp_path / 'demo' / 'report.json'}: Is a directory"], report
    assert report["completed"] == 1 and report["ok"] is False
    assert list((tmp_path / "demo").glob(".report.json*")) == []


# The demo, its files limited to 200 bytes once the results are fetched (its replicas stopped by then): each write
# past that fails (EFBIG; Python ignores SIGXFSZ), as on a full disk.
DEMO_ON_A_FULL_DISK = (
    "import resource, sys\n"
    "import demo.run\n"
    "from demo.cli import main\n"
    "fetch_results = demo.run.fetch_results\n"
    "async def then_the_disk_is_full(*args, **kwargs):\n"
    "    results = await fetch_results(*args, **kwargs)\n"
    "    resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))\n"
    "    return results\n"
    "demo.run.fetch_results = then_the_disk_is_full\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.timeout(120)
def test_a_report_json_a_full_disk_refuses_is_named_and_the_report_still_printed(tmp_path):
    """Before: one line, `cannot write DIR/report.json: File too large`, and the report of the run was lost. Now the
    report is printed, naming the file it could not write, NOT OK, exit 1."""
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-c", DEMO_ON_A_FULL_DISK, "demo", "--jobs", "1", "--bad-jobs", "0", "--spread-s", "0",
         "--node-seconds", "0", "--max-replicas", "1", "--idle-to-zero-s", "1", "--no-live", "--timeout-s", "90",
         "--output-dir", str(out)],
        capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    printed = " ".join(run.stdout.split())
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "jobs: 1 submitted, 1 completed, 0 failed" in printed, (printed, run.stderr[-3000:])
    assert f"not saved: cannot write {out / 'report.json'}: File too large" in printed, printed
    assert printed.endswith("NOT OK") and run.returncode == 1, printed
    assert not (out / "report.json").exists() and list(out.glob(".report.json*")) == []


# write_report in a process whose files may hold no more than `limit` bytes: killed (SIGXFSZ) the moment a write
# passes it (Python ignores SIGXFSZ unless told otherwise), as a demo killed while writing its report.
WRITE_REPORT_KILLED_MIDWAY = (
    "import resource, signal, sys\n"
    "from pathlib import Path\n"
    "from demo.report import write_report\n"
    "path, limit = sys.argv[1:]\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))\n"
    "write_report(Path(path), {'ok': True, 'unfinished': ['job-%d' % n for n in range(100)]})\n"
)


@pytest.mark.timeout(60)
def test_a_demo_killed_while_writing_its_report_leaves_no_half_of_it(tmp_path):
    """Before: report.json was written in place: a kill midway left its first 200 bytes, not JSON, where a script
    reading the run's outcome looks. Now it is there whole or not at all."""
    path = tmp_path / "demo" / "report.json"
    path.parent.mkdir()
    run = subprocess.run([sys.executable, "-c", WRITE_REPORT_KILLED_MIDWAY, str(path), "200"],
                         capture_output=True, text=True, timeout=60)

    assert run.returncode == -signal.SIGXFSZ, run.stderr
    assert not path.exists(), path.read_text()


def _demo_to_interrupt(tmp_path: Path, stdout: int) -> subprocess.Popen:
    """A one-job demo in a process of its own, its scratch folders in tmp_path/tmp, its stderr in tmp_path/stderr."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    with (tmp_path / "stderr").open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "demo", "demo", "--jobs", "1", "--bad-jobs", "0", "--spread-s", "0",
             "--node-seconds", "0", "--max-replicas", "1", "--idle-to-zero-s", "1", "--no-live",
             "--output-dir", str(tmp_path / "demo")],
            env={**os.environ, "TMPDIR": str(tmp_path / "tmp")}, stdout=stdout, stderr=stderr,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's background job ignores it
        )


def _interrupt(demo: subprocess.Popen, tmp_path: Path) -> list[str]:
    """Ctrl-C to the demo; its exit code checked, its stderr's lines."""
    try:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
    finally:
        demo.kill()
    err = (tmp_path / "stderr").read_text()
    assert "Traceback" not in err, err
    assert demo.returncode == 130, err
    return err.splitlines()


@pytest.mark.timeout(120)
def test_a_ctrl_c_while_the_report_is_printed_is_one_line_and_exit_130(tmp_path):
    """The run over, its Ctrl-C handling removed. Before: a KeyboardInterrupt traceback out of print_report. Here
    the report waits on a terminal that takes no more output (a full pipe) when the Ctrl-C comes."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)
    try:
        demo = _demo_to_interrupt(tmp_path, write_end)
        for _ in range(1200):  # until the report is written and the scratch folder gone: the run is over
            if (tmp_path / "demo" / "report.json").exists() and not list((tmp_path / "tmp").iterdir()):
                break
            if demo.poll() is not None:
                pytest.fail(f"the demo ended before its report was printed: {(tmp_path / 'stderr').read_text()}")
            time.sleep(0.05)
        lines = _interrupt(demo, tmp_path)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert lines[-1].startswith("comfy-serverless demo: interrupted (Ctrl-C); nothing is left running"), lines
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["ok"] is True


@pytest.mark.timeout(120)
def test_a_ctrl_c_before_the_demo_s_own_handling_is_set_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C while the demo sweeps the scratch folder of a run killed earlier, before it handles Ctrl-C itself.
    Before: a KeyboardInterrupt traceback."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    killed_run = tmp_path / "tmp" / "comfy-demo-killed"
    killed_run.mkdir(parents=True)
    (killed_run / "demo.pid").write_text(str(dead.pid))
    files = 20_000  # its removal takes long enough to be caught at it
    for n in range(files):
        (killed_run / f"{n}.log").touch()
    demo = _demo_to_interrupt(tmp_path, subprocess.DEVNULL)
    for _ in range(1200):  # until the sweep has begun removing it
        with contextlib.suppress(FileNotFoundError):
            if len(os.listdir(killed_run)) <= files:
                break
        if demo.poll() is not None:
            pytest.fail(f"the demo ended before it swept: {(tmp_path / 'stderr').read_text()}")
        time.sleep(0.01)
    lines = _interrupt(demo, tmp_path)

    assert lines == ["comfy-serverless demo: interrupted (Ctrl-C); nothing is left running"]
    assert not (tmp_path / "demo" / "report.json").exists()


@pytest.mark.timeout(60)
def test_a_scratch_folder_another_user_planted_does_not_hold_the_demo_s_start(tmp_path):
    """The scratch folders are in the shared temporary folder, where anyone may make one named as the demo's. Before:
    a FIFO as its demo.pid held every demo at its start for good, reading it (a link to /dev/zero: for ever, its
    memory growing). Now only this user's folders with a pid file are looked at; the others are left alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    temp = tmp_path / "tmp"
    fifo, endless, killed_run = temp / "comfy-demo-fifo", temp / "comfy-demo-endless", temp / "comfy-demo-killed"
    for folder in (fifo, endless, killed_run):
        folder.mkdir(parents=True)
    os.mkfifo(fifo / "demo.pid")
    (endless / "demo.pid").symlink_to("/dev/zero")
    (killed_run / "demo.pid").write_text(str(dead.pid))

    sweep = "import sys; from pathlib import Path; from demo.run import _sweep_scratch_of_killed_runs as sweep\n" \
            "sweep(Path(sys.argv[1]))"
    run = subprocess.run([sys.executable, "-c", sweep, str(temp)], capture_output=True, text=True, timeout=30)

    assert run.returncode == 0, run.stderr
    assert sorted(temp.iterdir()) == [endless, fifo]


@pytest.mark.timeout(180)
async def test_control_characters_in_a_failure_reason_are_shown_not_obeyed(tmp_path, capsys):
    """A node's exception message is the job's error as ComfyUI gave it. Before: its escape sequences reached the
    terminal raw: a new window title, a cleared screen, a line written over. Now each is shown escaped."""
    reason, out = await _failure_printed(tmp_path, capsys, "bad\x1b]0;pwned\x07\x1b[2J\rforged\u202eline")
    assert "\x1b]0;pwned" in reason, "the report keeps what ComfyUI said"
    assert not {"\x1b", "\x07", "\r", "\u202e"} & set(out), repr(out)
    assert "bad\\x1b]0;pwned\\x07\\x1b[2J\\rforged\\u202eline" in out, out


@pytest.mark.timeout(180)
async def test_with_several_providers_the_spend_is_each_provider_s_own(tmp_path, capsys):
    """Before: the spend line priced every replica of a fleet at --price-per-hour in 10-minute intervals: free
    `local` replicas cost $0.38 each (a run with --fail local: $1.53 against the $0.78 the providers billed). Now
    each replica is priced at its provider's price, and the bill is what the providers billed by their rules."""
    options = DemoOptions(
        jobs=3, users=1, bad_jobs=0, max_replicas=2, node_seconds=0.05, spread_s=0.0,
        output_dir=tmp_path / "demo", idle_to_zero_s=1.0, timeout_s=100, live=False, providers=("local",),
    )
    report = await run_demo(options)
    print_report(report, tmp_path / "demo" / "report.json")
    out = " ".join(capsys.readouterr().out.split())

    assert report["completed"] == 3 and report["providers"]["providers"]["local"]["replica_starts"] >= 1, report
    assert report["replica_seconds"] > 0
    assert report["cost_usd"]["per_second"] == 0 and report["cost_usd"]["billed_by_the_providers"] == 0, report
    assert "GPU spend: $0.0000 by the second at each provider's price, $0.00 billed by the providers" in out, out


@pytest.mark.timeout(120)
def test_with_several_providers_the_progress_spend_is_each_provider_s_own(tmp_path):
    """Before: the progress lines (and the live table) priced a fleet's replicas at --price-per-hour: free `local`
    ones ran up $0.002 a second, which the report then did not bill. Now each at its provider's price."""
    run = subprocess.run(
        [sys.executable, "-m", "demo", "demo", "--jobs", "4", "--users", "1", "--bad-jobs", "0", "--max-replicas", "1",
         "--node-seconds", "1", "--spread-s", "0", "--idle-to-zero-s", "1", "--timeout-s", "100", "--no-live",
         "--providers", "local", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    progress = [line for line in lines if line["event"] == "Demo progress" and line["replicas"]]
    assert progress, run.stderr[-2000:]
    assert {line["spend"] for line in progress} == {"$0.000"}, progress


@pytest.mark.parametrize("where", ["", " "])
def test_demo_refuses_an_empty_output_dir_naming_the_option(tmp_path, monkeypatch, capsys, where):
    """`--output-dir "$OUT"` with OUT unset. Before: taken for the current folder, which got outputs/, logs/ and
    report.json among its own files."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        parse_demo_args(["--output-dir", where])
    assert exit_info.value.code == 2
    assert "--output-dir: an empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_job_a_scale_down_handed_back_under_its_own_id_is_counted_as_requeued() -> None:
    """The demo's queue manager takes a stopped job back under its id (attempt 2, the hand back in its history); only
    a worker of comfy-multi resubmits it as a copy (`requeued_from`). Before: only copies were counted, so the demo
    always said '0 requeued by a scale-down'."""
    from demo.report import ReplicaLedger, build_report
    from queue_manager import JobRecord
    from queue_manager.store import JobStatus

    def job(job_id: str, history: list[dict]) -> JobRecord:
        return JobRecord(
            id=job_id, user_id="u", status=JobStatus("completed"), priority=0, workflow={}, metadata={},
            result={"outputs": []}, error=None, worker_id="w", created_at=1.0, started_at=2.0, completed_at=3.0,
            attempt=1 + len(history), history=history,
        )

    stopped = {"attempt": 1, "worker_id": "w", "reason": "worker w was stopped", "cause": "shutdown", "at": 2.0}
    died = {**stopped, "attempt": 2, "reason": "ComfyUI died", "cause": "fault"}
    report = build_report(
        [job("a", [stopped]), job("b", [stopped, died]), job("c", [])], ["a", "b", "c"], ReplicaLedger(),
        span_s=10.0, price_per_hour=1.0, replica_starts=1, outputs="o", results={"failed": 0}, replicas_at_end=0,
    )
    assert report["requeued_by_scale_down"] == 2


@pytest.mark.timeout(120)
async def test_a_ledger_json_that_cannot_be_written_makes_the_demo_not_ok_naming_it(tmp_path, capsys):
    """ledger.json, the run's money record, with a folder in its place (a full disk fails it alike). Before: the
    fleet logged each failed save and went on, and the demo said OK; now NOT OK, naming the file."""
    ledger = tmp_path / "demo" / "ledger.json"
    ledger.mkdir(parents=True)
    options = DemoOptions(
        jobs=1, users=1, bad_jobs=0, max_replicas=1, node_seconds=0.0, spread_s=0.0,
        output_dir=tmp_path / "demo", idle_to_zero_s=1.0, timeout_s=100, live=False, providers=("local",),
    )
    report = await run_demo(options)
    print_report(report, tmp_path / "demo" / "report.json")
    out = " ".join(capsys.readouterr().out.split())

    assert report["completed"] == 1 and report["orphan_processes"] == [] and not report["stopped"], report
    assert report["not_saved"] == [f"cannot write {ledger}: Is a directory"], report
    assert report["ok"] is False and json.loads((tmp_path / "demo" / "report.json").read_text()) == report
    assert f"not saved: cannot write {ledger}: Is a directory" in out and out.endswith("NOT OK"), out


# The demo on a full disk (each write to a file fails, EFBIG, as ENOSPC would): from its start, so no temporary folder
# takes tempfile's probe, or from just after the temporary folder was chosen.
DEMO_ON_A_DISK_FULL_FROM = (
    "import resource, sys, tempfile\n"
    "from demo.cli import main\n"
    "if sys.argv.pop(1) == 'the-folder-chosen':\n"
    "    tempfile.gettempdir()\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("full_from", "says"), [
    ("the-start", "cannot create a scratch folder: No usable temporary directory found in ['{temp}'"),
    ("the-folder-chosen", "cannot write {temp}/comfy-demo-"),
])  # fmt: skip
def test_a_temporary_folder_the_demo_cannot_write_to_is_one_line_naming_it(tmp_path, full_from, says):
    """Before: a traceback (FileNotFoundError from tempfile, or OSError writing demo.pid, which left an empty
    comfy-demo-* folder no later run removes). Now one line naming the folder, exit 1, no scratch folder left."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", DEMO_ON_A_DISK_FULL_FROM, full_from, "demo", "--jobs", "1", "--no-live",
         "--output-dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=50, stdin=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(temp)},
    )
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("comfy-serverless demo: " + says.format(temp=temp)), lines
    assert run.returncode == 1
    assert list(temp.iterdir()) == []
