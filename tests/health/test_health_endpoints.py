"""The probes against a real HealthServer on loopback, through every state the worker goes through."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from health.server import HealthServer
from worker.replica_faults import replica_fault
from worker.state import Phase, WorkerState

from ..conftest import stalling_clients


def idle_and_ready(state: WorkerState) -> None:
    state.set_comfyui(True, "0.8.0")
    state.mark_ready()
    state.set_phase(Phase.IDLE)


async def test_answers_while_starting_healthy_but_not_ready(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "phase": "starting"}

    ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    assert ready.json()["reason"] == "starting: waiting for ComfyUI"


async def test_starting_phase_is_not_judged_by_heartbeat(client: httpx.AsyncClient, state: WorkerState) -> None:
    # ComfyUI may load models for minutes; the worker's start-up timeout bounds that, not the heartbeat.
    state.heartbeat_at -= 60
    assert (await client.get("/health")).status_code == 200


async def test_ready_once_comfyui_answers_and_warm_up_ran(client: httpx.AsyncClient, state: WorkerState) -> None:
    state.set_comfyui(True, "0.8.0")
    state.mark_not_ready("warming up")
    assert (await client.get("/ready")).json()["reason"] == "warming up"

    idle_and_ready(state)
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "phase": "idle"}
    assert (await client.get("/health")).json() == {"status": "ok", "phase": "idle"}


async def test_busy_while_a_job_runs(client: httpx.AsyncClient, state: WorkerState) -> None:
    idle_and_ready(state)
    state.job_started("job-1")
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "busy", "phase": "busy"}
    assert (await client.get("/ready")).status_code == 200

    state.job_finished("completed")
    state.set_phase(Phase.IDLE)
    assert (await client.get("/health")).json()["status"] == "ok"


async def test_draining_stays_alive_but_not_ready(client: httpx.AsyncClient, state: WorkerState) -> None:
    idle_and_ready(state)
    state.job_started("job-1")
    state.set_phase(Phase.DRAINING)

    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "busy", "phase": "draining"}
    ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["reason"] == "draining: shutting down"

    state.job_finished("failed")
    assert (await client.get("/health")).json() == {"status": "ok", "phase": "draining"}

    state.set_phase(Phase.STOPPED)
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/ready")).json()["reason"] == "stopped: shutting down"


async def test_fatal_gpu_error_is_unhealthy(client: httpx.AsyncClient, state: WorkerState) -> None:
    idle_and_ready(state)
    state.job_started("job-1")
    message = "CUDA error: an illegal memory access was encountered"
    assert replica_fault("torch.AcceleratorError", message) == "fatal GPU error"
    state.mark_fatal(message)

    health = await client.get("/health")
    assert health.status_code == 503
    assert health.json() == {"status": "unhealthy", "phase": "busy", "reason": message}
    ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["reason"] == message


async def test_dead_comfyui_is_unhealthy_in_any_phase(client: httpx.AsyncClient, state: WorkerState) -> None:
    state.mark_fatal("ComfyUI process exited unexpectedly with code -9")
    health = await client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"
    assert health.json()["reason"] == "ComfyUI process exited unexpectedly with code -9"


@pytest.mark.parametrize("phase", [Phase.IDLE, Phase.BUSY, Phase.DRAINING])
async def test_wedged_heartbeat_is_unhealthy_then_recovers(
    client: httpx.AsyncClient, state: WorkerState, phase: Phase
) -> None:
    idle_and_ready(state)
    state.set_phase(phase)
    state.heartbeat_at -= 5.0  # beyond the 3-s heartbeat timeout the fixture injects

    health = await client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"
    assert health.json()["reason"].startswith("worker loop wedged: no heartbeat for 5 s")

    state.beat()
    assert (await client.get("/health")).status_code == 200


async def test_queue_unreachable_and_failed_jobs_stay_healthy(client: httpx.AsyncClient, state: WorkerState) -> None:
    idle_and_ready(state)
    for _ in range(50):
        state.metrics.poll_errors.inc()
        state.metrics.report_errors.inc()
        state.beat()  # the loop keeps turning while the queue manager is down
    state.job_started("job-1")
    state.job_finished("failed")
    state.mark_not_ready("queue manager unreachable")

    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


async def test_status_for_humans(client: httpx.AsyncClient, state: WorkerState) -> None:
    idle_and_ready(state)
    state.job_started("job-7")
    state.current_prompt_id = "prompt-7"
    state.jobs_completed = 3
    state.jobs_failed = 1
    state.consecutive_idle_polls = 0

    response = await client.get("/status")
    assert response.status_code == 200
    body = response.json()
    assert body["worker_id"] == "worker-test-1"
    assert body["provider"] == "verda"
    assert body["serverless"] is True
    assert body["state"] == "busy"
    assert body["current_job_id"] == "job-7"
    assert body["current_prompt_id"] == "prompt-7"
    assert (body["jobs_completed"], body["jobs_failed"]) == (3, 1)
    assert (body["consecutive_idle_polls"], body["max_idle_polls"]) == (0, 10)
    assert body["versions"] == {"worker": "9.9.9", "comfyui": "0.8.0"}
    assert body["comfyui_up"] is True
    assert body["health"] == {"status": "busy", "reason": None}
    assert body["readiness"] == {"status": "ready", "reason": None}
    assert 0 <= body["uptime_s"] < 60
    assert 0 <= body["heartbeat_age_s"] < 60


async def test_status_counts_idle_polls(client: httpx.AsyncClient, state: WorkerState) -> None:
    idle_and_ready(state)
    for _ in range(4):
        state.idle_poll()
    body = (await client.get("/status")).json()
    assert (body["consecutive_idle_polls"], body["max_idle_polls"]) == (4, 10)
    assert body["current_job_id"] is None


async def test_stop_closes_the_port_and_is_idempotent(state: WorkerState) -> None:
    server = HealthServer(state, host="127.0.0.1", port=0)
    port = await server.start()
    async with httpx.AsyncClient(timeout=2.0) as http:
        assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        await server.stop()
        await server.stop()
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/health")


async def test_port_in_use_is_an_error(state: WorkerState) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = HealthServer(state, host="127.0.0.1", port=taken.getsockname()[1])
        with pytest.raises(OSError):
            await server.start()
        await server.stop()


async def test_stop_does_not_wait_on_clients_that_never_read_or_never_finish_a_body(state: WorkerState) -> None:
    """The worker's exit awaits stop(). Before: aiohttp gave each unfinished connection 60 s to end its handler and
    60 s more once cancelled, and lingered 10 s on an unsent body: one client that pipelined requests and never
    read the answers kept stop() running for over 2 minutes, past the platform's kill, with ComfyUI not stopped."""
    server = HealthServer(state, host="127.0.0.1", port=0)
    port = await server.start()
    async with stalling_clients(port, "/health"):
        await asyncio.wait_for(server.stop(), 30)  # before: over 2 minutes
