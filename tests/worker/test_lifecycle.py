"""Startup, idle exit, job limit and graceful shutdown, in process and as a real process with real signals."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from common.logs import configure_logging, register_secret
from queue_manager.server import QueueManagerServer

from ..conftest import AuthorizationEchoingPeer, wait_for

REPO = Path(__file__).resolve().parents[2]


async def test_idle_exit_after_n_empty_polls(qm, comfy, make_worker):
    worker = make_worker(serverless_max_idle_polls=4)
    with capture_logs() as logs:
        assert await worker.run() == 0
    assert worker.state.consecutive_idle_polls == 4
    assert [e["event"] for e in logs].count("Serverless idle timeout reached") == 1
    assert qm.store.last_heartbeat("test-worker") is not None, "each poll is the worker's heartbeat"


async def test_a_job_resets_the_idle_count(qm, comfy, make_worker, workflows):
    worker = make_worker(serverless_max_idle_polls=3)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.state.consecutive_idle_polls == 2)
    job = qm.store.submit("alice", workflows["quick"])
    assert await run == 0
    assert qm.reports.landed(job.id)
    assert worker.state.consecutive_idle_polls == 3


async def test_job_limit_counts_failed_jobs(qm, comfy, make_worker, workflows):
    failing = qm.store.submit("alice", workflows["invalid_unknown_node"])
    waiting = qm.store.submit("alice", workflows["quick"])
    with capture_logs() as logs:
        assert await make_worker(serverless_job_limit=1, serverless_max_idle_polls=100).run() == 0
    assert qm.reports.landed(failing.id)[0].endpoint == "fail-job"
    assert qm.store.get(waiting.id).status == "pending", "a single-job container takes exactly one job"
    assert "Serverless job limit reached" in [e["event"] for e in logs]


async def test_non_serverless_worker_keeps_polling_until_stopped(qm, comfy, make_worker):
    worker = make_worker(serverless_mode=False, serverless_max_idle_polls=1)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.state.consecutive_idle_polls >= 5)
    assert not run.done()
    worker.request_shutdown()
    assert await asyncio.wait_for(run, 5) == 0


async def test_a_serverless_worker_with_no_idle_limit_polls_until_stopped(qm, comfy, tmp_path):
    """SERVERLESS_MAX_IDLE_POLLS=0: no idle exit, the scaler or the platform ends the replica. Before: 0 was refused
    at start (exit 2), and any limit had a replica the scaler kept warm exit and restart cold when it ran out."""
    port_file = tmp_path / "health-port"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker",
        env=_env(
            QUEUE_MANAGER_URL=qm.url, COMFYUI_URL=comfy.url, OUTPUTS_PATH=tmp_path / "out", HEALTH_PORT=0,
            HEALTH_HOST="127.0.0.1", HEALTH_PORT_FILE=port_file, WORKER_POLL_INTERVAL=0.02, SERVERLESS_MODE="true",
            SERVERLESS_MAX_IDLE_POLLS=0, LOG_FORMAT="json",
        ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )
    idle_polls = 0
    async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(30):
        while idle_polls < 100:
            assert proc.returncode is None, (await proc.communicate())[1].decode()[-2000:]
            if port_file.exists():
                port, host = port_file.read_text().split()
                status = (await client.get(f"http://{host}:{port}/status")).json()
                idle_polls = status["consecutive_idle_polls"]
            await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()[-2000:]
    events = [json.loads(line)["event"] for line in err.decode().splitlines() if line.startswith("{")]
    assert "Serverless idle timeout reached" not in events
    assert "Worker shutdown complete" in events


async def test_sigterm_while_idle_exits_at_once(qm, comfy, make_worker):
    worker = make_worker(poll_interval_s=30, serverless_max_idle_polls=100)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.state.consecutive_idle_polls == 1)
    worker.request_shutdown()
    assert await asyncio.wait_for(run, 5) == 0, "at once: not after the 30-s poll interval"


@pytest.mark.parametrize("when", ["between polls", "during a poll the queue manager is slow to answer"])
async def test_sigterm_while_idle_makes_the_worker_not_ready_at_once(qm, comfy, make_worker, when):
    """Before, during a poll: /ready answered 200 "ready" after the signal for as long as the poll kept its grace
    (SHUTDOWN_GRACE_S, 25 s by default), while the worker only waited to exit."""
    from health.verdict import readiness

    if when != "between polls":
        qm.faults.inject("next-job", delay_s=60)
    worker = make_worker(poll_interval_s=30, serverless_mode=False, shutdown_grace_s=5, platform_kill_delay_s=10)
    run = asyncio.create_task(worker.run())
    if when == "between polls":
        await wait_for(lambda: worker.state.consecutive_idle_polls == 1)
    else:
        await wait_for(lambda: qm.faults.pending("next-job") == 0)  # the poll is at the manager, unanswered
    worker.request_shutdown()
    verdict = readiness(worker.state)  # what /ready answers next
    assert await asyncio.wait_for(run, 10) == 0
    assert (verdict.healthy, verdict.reason) == (False, "stopping: shutting down")


async def test_a_stop_during_the_start_up_never_makes_the_worker_ready(qm, comfy, make_worker):
    """A signal while the worker tidied ComfyUI at start: start-up then marked it ready all the same, and /ready
    answered "ready" until the loop saw the stop."""
    from health.verdict import readiness

    worker = make_worker()
    tidy, said = worker.housekeeping.tidy_earlier_run, []

    async def tidy_then_signalled(*args, **kwargs):
        await tidy(*args, **kwargs)
        worker.request_shutdown()

    def mark_ready_and_note():
        mark_ready()
        said.append(readiness(worker.state))

    mark_ready = worker.state.mark_ready
    worker.housekeeping.tidy_earlier_run = tidy_then_signalled
    worker.state.mark_ready = mark_ready_and_note
    assert await asyncio.wait_for(worker.run(), 10) == 0
    assert [verdict for verdict in said if verdict.healthy] == []


async def test_sigterm_mid_job_within_grace_lets_it_finish(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["slow"])
    worker = make_worker(shutdown_grace_s=5)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    worker.request_shutdown()
    assert await run == 0
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"
    assert len(qm.store.list()) == 1, "nothing requeued"


async def test_sigterm_mid_job_past_grace_interrupts_and_hands_back(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["slow"], metadata={"session": "s1"}, priority=0)
    worker = make_worker(shutdown_grace_s=0.1)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    with capture_logs() as logs:
        worker.request_shutdown()
        assert await run == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    [new] = [j for j in qm.store.list() if j.id != job.id]
    assert report.body["error"] == (
        f"Handed back: worker test-worker was stopped (shutdown signal) before the job finished; "
        f"resubmitted as {new.id}"
    )
    assert new.status == "pending" and new.user_id == "alice" and new.workflow == workflows["slow"]
    assert new.priority == 0, "an instructor's job keeps its priority"
    assert new.metadata == {
        "session": "s1", "requeued_from": job.id, "attempt": 2, "faults": 0,
        "requeue_reasons": ["worker test-worker was stopped (shutdown signal) before the job finished"],
    }
    assert comfy.interrupts_received[-1].body == {"prompt_id": comfy.prompts_received[0].prompt_id}
    assert f"Job {job.id} handed back" in [e["event"] for e in logs]
    assert worker.state.jobs_handed_back == 1 and worker.state.jobs_failed == 0


async def test_second_signal_skips_the_grace(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["slow"])
    worker = make_worker(shutdown_grace_s=60, platform_kill_delay_s=90)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    worker.request_shutdown()
    worker.request_shutdown()
    assert await asyncio.wait_for(run, 5) == 0
    assert "resubmitted as" in qm.reports.landed(job.id)[0].body["error"]


async def test_requeue_disabled_says_so(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["slow"])
    worker = make_worker(shutdown_grace_s=0, requeue_on_shutdown=False)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    worker.request_shutdown()
    assert await run == 0
    assert "not resubmitted (REQUEUE_ON_SHUTDOWN=false)" in qm.reports.landed(job.id)[0].body["error"]
    assert len(qm.store.list()) == 1


async def test_comfyui_process_dying_hands_the_job_back_and_exits_1(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["slow"], priority=0)
    worker = make_worker(shutdown_grace_s=60, platform_kill_delay_s=90)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    worker.abort("ComfyUI process exited unexpectedly with code -9")
    assert await asyncio.wait_for(run, 5) == 1
    [report] = qm.reports.landed(job.id)
    [copy] = [j for j in qm.store.list() if j.id != job.id]
    assert report.body["error"] == (
        f"Handed back: ComfyUI process exited unexpectedly with code -9; resubmitted as {copy.id}"
    )
    assert copy.priority == 0 and copy.status == "pending"
    assert worker.state.fatal_reason
    assert comfy.interrupts_received == [], "a dead ComfyUI is not asked to interrupt"


@pytest.mark.parametrize("signals", ["abort, then SIGTERM", "SIGTERM, then abort"])
async def test_a_stop_signal_around_comfyui_dying_never_makes_the_hand_back_a_shutdown(
    qm, comfy, make_worker, workflows, signals
):
    """The supervisor's abort (ComfyUI died) wins over a stop signal, whichever came first: a fault."""
    job = qm.store.submit("alice", workflows["slow"])
    comfy.freeze(class_type="ImageBlur")  # the job cannot end before the abort, however late this test is
    worker = make_worker(shutdown_grace_s=60, platform_kill_delay_s=90)
    run = asyncio.create_task(worker.run())
    await comfy.wait_until_frozen()
    if signals == "abort, then SIGTERM":
        worker.abort("ComfyUI process exited unexpectedly with code -9")
        worker.request_shutdown()
    else:
        worker.request_shutdown()
        await asyncio.sleep(0.1)  # draining
        worker.abort("ComfyUI process exited unexpectedly with code -9")
    assert await asyncio.wait_for(run, 5) == 1
    [copy] = [j for j in qm.store.list() if j.id != job.id]
    assert copy.metadata["requeue_reasons"] == ["ComfyUI process exited unexpectedly with code -9"]
    assert copy.metadata["faults"] == 1


async def test_comfyui_never_up_exits_1(qm, make_worker, comfy):
    await comfy.stop()
    worker = make_worker(comfyui_startup_timeout_s=0.3)
    with capture_logs() as logs:
        assert await worker.run() == 1
    events = [e["event"] for e in logs]
    assert "ComfyUI never came up; exiting" in events
    # Before it, at once, what it waits for: a wrong COMFYUI_URL was silence for COMFYUI_STARTUP_TIMEOUT_S (600 s).
    assert events.index("Waiting for ComfyUI to answer") < events.index("ComfyUI never came up; exiting")
    [waiting] = [e for e in logs if e["event"] == "Waiting for ComfyUI to answer"]
    assert waiting["comfyui"] == comfy.url and waiting["timeout_s"] == 0.3 and "unreachable" in waiting["error"]
    # ComfyWorkerRestarting's runbook reads the last "Worker shutdown complete" line's reason: it was null here.
    [complete] = [e for e in logs if e["event"] == "Worker shutdown complete"]
    assert complete["reason"].startswith("ComfyUI never came up within 0.3 s: ") and "unreachable" in complete["reason"]


async def test_warmup_runs_before_ready(qm, comfy, make_worker, workflows, tmp_path):
    path = tmp_path / "warmup.json"
    path.write_text(json.dumps(workflows["quick"]))
    worker = make_worker(warmup_workflow=path)
    assert await worker.run() == 0
    assert len(comfy.prompts_received) == 1 and worker.state.jobs_finished == 0


async def test_failed_warmup_leaves_worker_unready_and_serverless_exits(qm, comfy, make_worker, workflows, tmp_path):
    path = tmp_path / "warmup.json"
    path.write_text(json.dumps(workflows["invalid_unknown_node"]))
    worker = make_worker(warmup_workflow=path)
    assert await worker.run() == 1
    assert "warm-up failed" in (worker.state.not_ready_reason or "") or worker.state.not_ready_reason == "stopped"
    assert qm.store.last_heartbeat("test-worker") is None, "an unready worker takes no job"


@pytest.mark.parametrize("content", ["{not json", "[" * 100_000], ids=["not-json", "nested-past-the-parser"])
async def test_an_unreadable_warmup_file_leaves_the_worker_unready_saying_why(make_worker, tmp_path, content):
    path = tmp_path / "warmup.json"
    path.write_text(content)
    worker = make_worker(warmup_workflow=path)
    with capture_logs() as logs:
        assert await worker.run() == 1
    failed = [entry for entry in logs if entry["event"] == "Warm-up failed; the worker stays not ready"]
    assert failed and str(path) == failed[0]["path"]
    [complete] = [e for e in logs if e["event"] == "Worker shutdown complete"]
    assert complete["reason"].startswith("warm-up failed: "), "it was null: the runbook reads the exit's reason there"


async def test_bearer_token_is_sent_and_never_logged(comfy, make_worker, workflows):
    token = "s3cret-token-value"
    buffer = io.StringIO()
    configure_logging("json", "debug", stream=buffer)
    register_secret(token)
    try:
        async with QueueManagerServer(token=token, test_hooks=True) as secured:
            job = secured.store.submit("alice", workflows["invalid_unknown_node"])
            worker = make_worker(queue_manager_url=secured.url, queue_manager_token=token)
            assert await worker.run() == 0
            assert secured.reports.landed(job.id)[0].endpoint == "fail-job"
    finally:
        structlog.reset_defaults()
    logged = buffer.getvalue()
    assert "Worker started" in logged and "Job " in logged
    assert token not in logged
    assert token not in repr(worker.settings)


def _env(**values) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_MANAGER", "SERVERLESS", "WORKER_"))}
    env.update({k: str(v) for k, v in values.items()})
    env["PYTHONPATH"] = str(REPO)
    return env


async def test_configuration_errors_exit_2_naming_every_variable():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker",
        env=_env(WORKER_POLL_INTERVAL="-1", SERVERLESS_MAX_IDLE_POLLS="many", HEALTH_PORT="70000"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO / "tests",
    )
    _, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 2
    for name in ("QUEUE_MANAGER_URL", "WORKER_POLL_INTERVAL", "SERVERLESS_MAX_IDLE_POLLS", "HEALTH_PORT"):
        assert name in text
    assert "Traceback" not in text
    assert "./dev demo" in text


async def test_real_process_sigterm_mid_job_hands_back_and_exits_0(qm, comfy, workflows, tmp_path):
    job = qm.store.submit("alice", workflows["slow"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker",
        env=_env(
            QUEUE_MANAGER_URL=qm.url, COMFYUI_URL=comfy.url, OUTPUTS_PATH=tmp_path / "out", HEALTH_PORT=0,
            WORKER_POLL_INTERVAL=0.05, SERVERLESS_MODE="true", SHUTDOWN_GRACE_S=0.1, LOG_FORMAT="json",
            WORKER_ID="proc-worker",
        ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )
    await wait_for(lambda: comfy.prompts_received, timeout=15)
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()[-2000:]
    events = [json.loads(line)["event"] for line in err.decode().splitlines() if line.startswith("{")]
    handed_back = f"Job {job.id} handed back"
    assert events.index("Worker started") < events.index(handed_back) < events.index("Worker shutdown complete")
    assert "resubmitted as" in qm.reports.landed(job.id)[0].body["error"]


async def test_a_report_after_sigterm_gets_what_is_left_of_the_deadline_not_a_fixed_budget(
    qm, comfy, make_worker, workflows
):
    # The queue manager restarts as the replica is scaled down: its first two answers take 2.2 s and are 503s.
    qm.faults.inject("complete-job", status=503, delay_s=2.2, times=2)
    job = qm.store.submit("alice", workflows["slow"])
    worker = make_worker(shutdown_grace_s=5, platform_kill_delay_s=12)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    worker.request_shutdown()
    assert await asyncio.wait_for(run, 12) == 0
    assert [r.status for r in qm.reports.for_job(job.id)] == [503, 503, 200]
    assert qm.store.get(job.id).status == "completed"


async def test_a_report_already_retrying_at_sigterm_stops_at_the_deadline(qm, comfy, make_worker, workflows):
    qm.faults.inject("complete-job", status=503, times=1000)
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(report_retry_budget_s=60, shutdown_grace_s=0.5, platform_kill_delay_s=1)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: qm.reports.for_job(job.id))
    with capture_logs() as logs:
        worker.request_shutdown()
        signalled = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(run, 5) == 0
    # The log line says the deadline (1 s, the kill) ended the retries; the bound leaves room for the exit after it.
    assert any(e["event"].startswith("Report could not be delivered within the shutdown deadline") for e in logs)
    assert asyncio.get_running_loop().time() - signalled < 3


async def test_the_drain_never_outlasts_the_deadline(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["slow"])
    comfy.freeze(class_type="ImageBlur")
    # The kill 2 s after the grace: what the worker does after the grace (hand back, report, close) has room on
    # a loaded machine, and a drain that waited on the frozen job would still pass the kill.
    worker = make_worker(shutdown_grace_s=1, platform_kill_delay_s=3)
    run = asyncio.create_task(worker.run())
    await comfy.wait_until_frozen()
    worker.request_shutdown()
    signalled = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(run, 10) == 0
    assert 1 <= asyncio.get_running_loop().time() - signalled < 3
    assert qm.reports.landed(job.id)[0].body["error"].startswith("Handed back: worker test-worker was stopped")
    comfy.release()


async def test_a_stop_during_the_warm_up_interrupts_it_and_exits_0(qm, comfy, make_worker, workflows, tmp_path):
    """Before: the stop waited for the warm-up to finish (39 s after SIGTERM for a 40 s warm-up, measured under
    the supervisor), past the platform's kill."""
    path = tmp_path / "warmup.json"
    path.write_text(json.dumps(workflows["slow"]))
    comfy.node_seconds = {"ImageBlur": 30}
    worker = make_worker(warmup_workflow=path, serverless_mode=False)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.running_prompt_id is not None)
    with capture_logs() as logs:
        worker.request_shutdown()
        assert await asyncio.wait_for(run, 10) == 0
    assert [i.running_prompt_id for i in comfy.interrupts_received] == [comfy.prompts_received[0].prompt_id]
    events = [e["event"] for e in logs]
    assert "Stopped during the warm-up" in events and "Warm-up failed; the worker stays not ready" not in events
    assert worker.state.not_ready_reason == "stopped"


async def test_a_stop_during_a_poll_the_queue_manager_does_not_answer_waits_the_grace_not_the_http_timeout(
    qm, comfy, make_worker
):
    """Before: the worker waited for the poll's HTTP timeout (29 s after SIGTERM under the supervisor, with
    HTTP_TIMEOUT_S=30 and a kill 12 s after the signal)."""
    qm.faults.inject("next-job", delay_s=60)
    worker = make_worker(shutdown_grace_s=0.5, platform_kill_delay_s=3, http_timeout_s=60)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: qm.faults.pending("next-job") == 0)  # the poll is at the manager, unanswered
    with capture_logs() as logs:
        worker.request_shutdown()
        assert await asyncio.wait_for(run, 10) == 0
    assert "Stopping without the queue manager's answer to the poll" in [e["event"] for e in logs]


async def test_a_job_the_queue_manager_gives_within_the_grace_after_a_stop_is_handed_back(
    qm, comfy, make_worker, workflows
):
    qm.faults.inject("next-job", delay_s=1)
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(shutdown_grace_s=5, platform_kill_delay_s=10)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: qm.faults.pending("next-job") == 0)
    worker.request_shutdown()
    assert await asyncio.wait_for(run, 10) == 0
    assert comfy.prompts_received == []
    assert "stopped (shutdown signal)" in qm.reports.landed(job.id)[0].body["error"]


async def test_a_job_the_queue_manager_gives_as_comfyui_dies_is_handed_back_not_lost(qm, comfy, make_worker, workflows):
    qm.faults.inject("next-job", delay_s=0.5)
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker()
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: qm.faults.pending("next-job") == 0)
    worker.abort("ComfyUI process exited unexpectedly with code -9")
    assert await asyncio.wait_for(run, 10) == 1
    assert comfy.prompts_received == []
    assert "ComfyUI process exited unexpectedly with code -9" in qm.reports.landed(job.id)[0].body["error"]


async def test_a_health_port_already_taken_exits_1_saying_what_to_do(tmp_path):
    """A second worker on one machine (the default HEALTH_PORT 8000 taken) used to die with an OSError traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker",
            env=_env(QUEUE_MANAGER_URL="http://127.0.0.1:9", OUTPUTS_PATH=tmp_path / "out", HEALTH_HOST="127.0.0.1",
                     HEALTH_PORT=port, LOG_FORMAT="json"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert b"Traceback" not in err
    [failed] = [json.loads(line) for line in err.decode().splitlines() if "Health server cannot listen" in line]
    assert failed["event"] == "Health server cannot listen; exiting" and failed["port"] == port
    assert "HEALTH_PORT" in failed["hint"] and "address already in use" in failed["error"]


# The worker's entry point, with a health server whose stop first sends the process a SIGTERM (a platform that
# repeats its stop signal, an impatient operator), then takes a while (aiohttp waits for requests in flight).
_SIGNALLED_WHILE_HEALTH_STOPS = """
import asyncio, os, signal, sys
from health.server import HealthServer

stop = HealthServer.stop

async def signalled_stop(self):
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.3)
    await stop(self)

HealthServer.stop = signalled_stop
from worker.__main__ import main
sys.exit(main())
"""


async def test_a_stop_signal_while_the_health_server_stops_does_not_kill_the_process(qm, comfy, tmp_path):
    """Before: serve() removed its signal handlers before stopping the health server, so a SIGTERM then killed
    the process outright (exit -15 instead of the worker's 0, the health server never stopped)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SIGNALLED_WHILE_HEALTH_STOPS,
        env=_env(
            QUEUE_MANAGER_URL=qm.url, COMFYUI_URL=comfy.url, OUTPUTS_PATH=tmp_path / "out", HEALTH_PORT=0,
            WORKER_POLL_INTERVAL=0.05, SERVERLESS_MODE="true", SERVERLESS_MAX_IDLE_POLLS=1, LOG_FORMAT="json",
        ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    events = [json.loads(line)["event"] for line in err.decode().splitlines() if line.startswith("{")]
    assert events.index("Worker shutdown complete") < events.index("health.stopped")


# serve() to its end, then a stop signal to itself: one arriving once the worker has stopped, before its caller takes
# the signals (the supervisor stopping ComfyUI; a bare worker's last moments).
_SERVE_THEN_SIGNAL = """
import asyncio, os, signal, sys
from worker.config import load_settings
from worker.service import serve

async def serve_then_signal(sig):
    code = await serve(load_settings())
    os.kill(os.getpid(), sig)
    await asyncio.sleep(0)
    return code

sys.exit(asyncio.run(serve_then_signal(signal.Signals[sys.argv[1]])))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_after_serve_returned_leaves_the_workers_exit_code(qm, comfy, tmp_path, sig):
    """Before: serve() put the stop signals back to their defaults on its way out, so one arriving before the
    supervisor routed them again killed it (143, ComfyUI never stopped in order; a SIGINT a KeyboardInterrupt)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVE_THEN_SIGNAL, sig.name,
        env=_env(
            QUEUE_MANAGER_URL=qm.url, COMFYUI_URL=comfy.url, OUTPUTS_PATH=tmp_path / "out", HEALTH_PORT=0,
            WORKER_POLL_INTERVAL=0.05, SERVERLESS_MODE="true", SERVERLESS_MAX_IDLE_POLLS=1, LOG_FORMAT="json",
        ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"Traceback" not in err


async def test_a_queue_url_password_a_peer_echoes_never_reaches_the_workers_log(comfy, tmp_path):
    """comfy-worker on its own (no supervisor) masked the queue token only: a QUEUE_MANAGER_URL's user and password,
    sent as ``Authorization: Basic <base64>``, went into every "Poll failed" line when a proxy's error page echoed
    the header (decoded by anyone)."""
    password = "url-password-echoed-9c1d"
    basic = base64.b64encode(f"worker:{password}".encode()).decode()
    async with AuthorizationEchoingPeer() as peer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker",
            env=_env(QUEUE_MANAGER_URL=peer.url.replace("http://", f"http://worker:{password}@"), HEALTH_PORT=0,
                     OUTPUTS_PATH=tmp_path / "out", COMFYUI_URL=comfy.url, LOG_FORMAT="json"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        )
        lines = []
        async with asyncio.timeout(30):
            while not any("Poll failed" in line for line in lines):
                lines.append((await proc.stderr.readline()).decode())
                assert lines[-1], "".join(lines)[-2000:]
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
    output = "".join(lines) + rest.decode()
    [poll] = [json.loads(line) for line in lines if "Poll failed" in line]
    assert "you sent Basic ***" in poll["error"], poll
    assert basic not in output and password not in output
