"""The whole container process: supervisor + ComfyUI simulator child + worker, against the queue manager."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from typing import Any

import httpx
import pytest

from queue_manager import QueueManagerServer

from .conftest import child_pids


async def submit(queue_manager: QueueManagerServer, workflow: dict[str, Any], priority: int = 2) -> str:
    async with httpx.AsyncClient(base_url=str(queue_manager.url), timeout=5.0) as http:
        body = {"user_id": "alice", "workflow": workflow, "priority": priority}
        response = await http.post("/api/jobs", json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"]


async def job_status(queue_manager: QueueManagerServer, job_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=str(queue_manager.url), timeout=5.0) as http:
        return (await http.get(f"/api/jobs/{job_id}")).json()


async def running_job(supervisor, job_id: str) -> bool:
    response = await supervisor.get("/status")
    return response is not None and response.json()["current_job_id"] == job_id


async def test_health_first_ready_only_once_comfyui_answers(base_env, run_supervisor) -> None:
    env = {**base_env, "COMFYUI_EXTRA_ARGS": "--startup-delay 0.5 --highvram"}
    supervisor = await run_supervisor(env)

    health = await supervisor.wait_until(lambda: supervisor.get("/health"), what="/health to answer")
    assert health.status_code == 200
    assert await supervisor.status_of("/ready") == 503  # ComfyUI is still "scanning models"

    await supervisor.wait_until(
        lambda: _is(supervisor.status_of("/ready"), 200), timeout_s=15, what="/ready to turn 200"
    )
    status = (await supervisor.get("/status")).json()
    assert status["state"] == "idle"
    assert status["comfyui_up"] is True
    assert status["versions"]["comfyui"] == "0.8.0"

    # ComfyUI got the supervisor's arguments: loopback, the shared output directory, the model paths file,
    # and COMFYUI_EXTRA_ARGS passed through.
    async with httpx.AsyncClient(base_url=env["COMFYUI_URL"], timeout=5.0) as comfyui:
        argv = (await comfyui.get("/system_stats")).json()["system"]["argv"]
    scratch = env["SCRATCH_DIR"]
    assert argv[argv.index("--listen") + 1] == "127.0.0.1"
    assert argv[argv.index("--output-directory") + 1] == f"{scratch}/comfyui/output"
    assert argv[argv.index("--extra-model-paths-config") + 1] == f"{scratch}/comfyui/extra_model_paths.yaml"
    assert argv[-3:] == ["--startup-delay", "0.5", "--highvram"]
    assert f"[comfyui] Adding extra search path from {scratch}/comfyui/extra_model_paths.yaml" in supervisor.output

    supervisor.signal(signal.SIGTERM)
    assert await supervisor.wait() == 0


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_a_stop_signal_drains_the_job_then_stops_comfyui(
    base_env, run_supervisor, queue_manager: QueueManagerServer, load_workflow, stop: signal.Signals
) -> None:
    """SIGHUP (a closed terminal, `docker kill -s HUP`) as SIGTERM. Before, it killed the supervisor outright: no
    report, so comfy-multi's manager held the job `running` for its hour-long job timeout."""
    env = {**base_env, "COMFYUI_EXTRA_ARGS": "--node-seconds ImageBlur=0.4"}
    supervisor = await run_supervisor(env)
    child = await supervisor.comfyui_pid()
    job_id = await submit(queue_manager, load_workflow("slow.json"))
    await supervisor.wait_until(lambda: running_job(supervisor, job_id), what="the job to start")

    supervisor.signal(stop)
    await supervisor.wait_until(lambda: _is(supervisor.status_of("/ready"), 503), what="/ready 503 while draining")
    draining = await supervisor.get("/health")
    assert draining is not None and draining.status_code == 200  # a drain must never look like a crash
    assert supervisor.is_running(child)  # ComfyUI still runs the job the worker is draining

    assert await supervisor.wait() == 0
    assert not supervisor.is_running(child)
    assert (await job_status(queue_manager, job_id))["status"] == "completed"
    assert [r.endpoint for r in queue_manager.reports.landed(job_id)] == ["complete-job"]
    events = [e["event"] for e in supervisor.log_events()]
    assert events.index("comfyui.stopped") > events.index("Worker shutdown complete")


async def test_comfyui_death_hands_the_job_back_with_its_priority_and_turns_health_unhealthy(
    base_env, run_supervisor, queue_manager: QueueManagerServer, load_workflow
) -> None:
    env = {**base_env, "COMFYUI_EXTRA_ARGS": "--node-seconds ImageBlur=30"}
    supervisor = await run_supervisor(env)
    child = await supervisor.comfyui_pid()
    job_id = await submit(queue_manager, load_workflow("slow.json"), priority=0)
    await supervisor.wait_until(lambda: running_job(supervisor, job_id), what="the job to start")
    # Hold the failure report a moment, so the unhealthy /health can be seen before the process exits.
    queue_manager.faults.inject("fail-job", delay_s=0.5)

    os.kill(child, signal.SIGKILL)
    unhealthy = await supervisor.wait_until(
        lambda: _response_if(supervisor.get("/health"), 503), what="/health 503 after ComfyUI died"
    )
    assert unhealthy.json()["status"] == "unhealthy"
    assert unhealthy.json()["reason"] == "ComfyUI process exited unexpectedly with code -9"

    assert await supervisor.wait() == 1
    job = await job_status(queue_manager, job_id)
    [copy] = [j for j in queue_manager.store.list() if j.id != job_id]
    # The worker may see its connection drop before the supervisor's abort arrives: the abort's reason wins.
    assert job["error"] == f"Handed back: ComfyUI process exited unexpectedly with code -9; resubmitted as {copy.id}"
    assert (copy.status, copy.priority) == ("pending", 0), "an instructor's job stays an instructor's job"
    assert copy.metadata["requeued_from"] == job_id
    assert copy.metadata["faults"] == 1


async def test_status_and_metrics_say_comfyui_is_down_once_it_died(
    base_env, run_supervisor, queue_manager: QueueManagerServer
) -> None:
    """An idle worker does not talk to ComfyUI: after its death /status and comfy_worker_comfyui_up went on saying
    it was up until the process exited (a poll in flight, a job's hand-back: seconds)."""
    supervisor = await run_supervisor(base_env)
    child = await supervisor.comfyui_pid()
    await supervisor.wait_until(lambda: _is(supervisor.status_of("/ready"), 200), timeout_s=15, what="/ready 200")
    queue_manager.faults.inject("next-job", delay_s=2)  # a poll in flight keeps the worker alive meanwhile
    await supervisor.wait_until(lambda: not queue_manager.faults.pending("next-job"), what="the slow poll")

    os.kill(child, signal.SIGKILL)
    await supervisor.wait_until(lambda: _response_if(supervisor.get("/health"), 503), what="/health 503")
    status = (await supervisor.get("/status")).json()
    metrics = (await supervisor.get("/metrics")).text

    assert status["comfyui_up"] is False
    assert "comfy_worker_comfyui_up 0.0" in metrics.splitlines()
    assert await supervisor.wait() == 1


async def test_a_sigterm_right_after_comfyui_died_still_hands_the_job_back_as_a_fault(
    base_env, run_supervisor, queue_manager: QueueManagerServer, load_workflow
) -> None:
    """The job may have killed ComfyUI; the platform's stop arriving just after must not make it a shutdown."""
    env = {**base_env, "COMFYUI_EXTRA_ARGS": "--node-seconds ImageBlur=30"}
    supervisor = await run_supervisor(env)
    child = await supervisor.comfyui_pid()
    job_id = await submit(queue_manager, load_workflow("slow.json"))
    await supervisor.wait_until(lambda: running_job(supervisor, job_id), what="the job to start")

    os.kill(child, signal.SIGKILL)
    supervisor.signal(signal.SIGTERM)

    assert await supervisor.wait() == 1
    job = await job_status(queue_manager, job_id)
    [copy] = [j for j in queue_manager.store.list() if j.id != job_id]
    assert job["error"] == f"Handed back: ComfyUI process exited unexpectedly with code -9; resubmitted as {copy.id}"
    assert copy.metadata["faults"] == 1


async def test_a_hung_comfyui_ends_the_container_with_1_after_the_unresponsive_timeout_and_is_killed(
    base_env, run_supervisor
) -> None:
    """Alive but answering nothing (SIGSTOP: a deadlocked ComfyUI looks the same from outside): the replica must
    not idle, billed, for COMFYUI_STARTUP_TIMEOUT_S; the platform replaces it."""
    env = {**base_env, "COMFYUI_UNRESPONSIVE_TIMEOUT_S": "1", "HTTP_TIMEOUT_S": "1", "COMFYUI_STARTUP_TIMEOUT_S": "300"}
    supervisor = await run_supervisor(env)
    child = await supervisor.comfyui_pid()
    await supervisor.wait_until(lambda: _is(supervisor.status_of("/ready"), 200), timeout_s=15, what="/ready 200")

    os.kill(child, signal.SIGSTOP)
    assert await supervisor.wait(timeout_s=20) == 1
    assert not supervisor.is_running(child), "a stopped ComfyUI does not take SIGTERM: it is killed"
    events = {e["event"]: e for e in supervisor.log_events()}
    assert events["ComfyUI did not come back; exiting"]["timeout_s"] == 1
    assert "comfyui.kill" in events
    assert events["Worker shutdown complete"]["reason"] == "ComfyUI stopped answering and did not come back within 1 s"


# ComfyUI with a helper of its own holding its output (as a custom node starts one), then the simulator in its place.
WITH_A_HELPER = shlex.join([sys.executable, "-c", (
    "import os, subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "os.execv(sys.executable, [sys.executable, '-m', 'standins.comfyui', *sys.argv[1:]])"
)])


async def test_a_comfyui_crash_is_seen_while_a_helper_it_started_holds_its_output(
    base_env, run_supervisor, queue_manager: QueueManagerServer, load_workflow
) -> None:
    """Before: the supervisor waited for ComfyUI's pipes to close as well: with a helper holding them its crash went
    unseen, /health said 200, and the job was handed back only after COMFYUI_UNRESPONSIVE_TIMEOUT_S (120 s)."""
    env = {**base_env, "COMFYUI_COMMAND": WITH_A_HELPER, "COMFYUI_EXTRA_ARGS": "--node-seconds ImageBlur=30"}
    supervisor = await run_supervisor(env)
    comfyui = await supervisor.comfyui_pid()
    (helper,) = await supervisor.wait_until(lambda: child_pids(comfyui), what="ComfyUI's helper")
    job_id = await submit(queue_manager, load_workflow("slow.json"))
    await supervisor.wait_until(lambda: running_job(supervisor, job_id), what="the job to start")

    os.kill(comfyui, signal.SIGKILL)

    assert await supervisor.wait() == 1
    job = await job_status(queue_manager, job_id)
    assert job["error"].startswith("Handed back: ComfyUI process exited unexpectedly with code -9"), job
    assert not supervisor.is_running(helper)


async def test_comfyuis_own_children_die_with_it_before_the_worker_has_finished(
    base_env, run_supervisor, queue_manager: QueueManagerServer
) -> None:
    """Before: a helper ComfyUI started outlived its crash until the worker had finished (a poll in flight, a job's
    hand-back), holding the GPU meanwhile; and for ever if the supervisor was killed in between."""
    supervisor = await run_supervisor({**base_env, "COMFYUI_COMMAND": WITH_A_HELPER})
    comfyui = await supervisor.comfyui_pid()
    (helper,) = await supervisor.wait_until(lambda: child_pids(comfyui), what="ComfyUI's helper")
    await supervisor.wait_until(lambda: _is(supervisor.status_of("/ready"), 200), timeout_s=15, what="/ready 200")
    queue_manager.faults.inject("next-job", delay_s=30)  # a poll in flight keeps the worker alive meanwhile
    await supervisor.wait_until(lambda: not queue_manager.faults.pending("next-job"), what="the slow poll")

    os.kill(comfyui, signal.SIGKILL)
    await supervisor.wait_until(lambda: not supervisor.is_running(helper), what="the helper to be killed")

    assert supervisor.process is not None and supervisor.process.returncode is None, "killed before the stop"
    supervisor.signal(signal.SIGKILL)
    await supervisor.wait()


@pytest.mark.parametrize("extra_env", [{"SERVERLESS_MODE": "true", "SERVERLESS_MAX_IDLE_POLLS": "3"}])
async def test_idle_exit_code_passes_through_and_comfyui_is_stopped(
    base_env, run_supervisor, extra_env: dict[str, str]
) -> None:
    supervisor = await run_supervisor({**base_env, **extra_env})
    child = await supervisor.comfyui_pid()

    assert await supervisor.wait() == 0
    assert not supervisor.is_running(child)
    assert "Serverless idle timeout reached" in supervisor.output


async def _is(status: Any, expected: int) -> bool:
    return (await status) == expected


async def _response_if(response: Any, expected: int) -> httpx.Response | None:
    result = await response
    return result if result is not None and result.status_code == expected else None
