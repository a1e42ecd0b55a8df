"""The real worker against the embedded queue manager's extensions (the worker's comfy-multi fallback is tested
in tests/worker against `QueueManagerServer(extensions=False)`): hand back in place, heartbeats hold the lease,
a late report from a worker that lost its job is fenced."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from queue_manager import JobStatus, QueueManagerServer
from standins.comfyui import ComfyUISimulator
from worker.config import load_settings
from worker.execution import RunTimings
from worker.main import Worker

from ..worker.conftest import COMFYUI_KILLED_TIMINGS, HEALTHY_TIMINGS, HEALTHY_WITHIN_S

SLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "slow"}},
}


def make_worker(
    qm: QueueManagerServer, comfy: ComfyUISimulator, tmp_path: Path, *, timings: RunTimings = HEALTHY_TIMINGS,
    **overrides: Any,
) -> Worker:  # fmt: skip
    values: dict[str, Any] = {
        "queue_manager_url": qm.url, "comfyui_url": comfy.url, "outputs_path": tmp_path / "outputs",
        "poll_interval_s": 0.02, "serverless_mode": True, "serverless_max_idle_polls": 3, "job_timeout_s": 10,
        "comfyui_startup_timeout_s": 5, "report_retry_budget_s": 5, "shutdown_grace_s": 2,
        "worker_id": "embedded-worker", "health_port": 0, "lease_heartbeat_s": 0.2,
    }  # fmt: skip
    return Worker(load_settings(**{**values, **overrides}), timings=timings)


async def test_comfyui_dying_hands_the_job_back_in_place_not_as_a_copy(tmp_path: Path) -> None:
    comfy = ComfyUISimulator(tmp_path / "out", tmp_path / "temp", node_seconds={"ImageBlur": 3.0})
    await comfy.start()
    try:
        async with QueueManagerServer(mode="priority", test_hooks=True) as qm:
            job = qm.store.submit("alice", SLOW, priority=0)
            behind = qm.store.submit("bob", SLOW, priority=0)
            worker = make_worker(qm, comfy, tmp_path, serverless_job_limit=1, timings=COMFYUI_KILLED_TIMINGS)
            run = asyncio.create_task(worker.run())
            async with asyncio.timeout(5):
                while not comfy.prompts_received:
                    await asyncio.sleep(0.01)
            await comfy.crash()
            await run
            handed = qm.store.get(job.id)
            assert (handed.status, handed.attempt, handed.priority) == (JobStatus.PENDING, 2, 0)
            assert handed.history[0]["worker_id"] == "embedded-worker"
            assert handed.history[0]["cause"] == "fault", "a dead ComfyUI may be the job's doing"
            assert qm.store.pending_positions(qm.mode)[job.id] == 0, "still ahead of the job submitted after it"
            assert [j.id for j in qm.store.list()] == [job.id, behind.id], "no copy was submitted"
            assert qm.reports.landed(job.id) == [], "a hand back is not a report"
    finally:
        await comfy.stop()


@pytest.mark.parametrize("heartbeat_s", [0.2, 15])
async def test_heartbeats_hold_the_lease_through_a_job_longer_than_it(tmp_path: Path, heartbeat_s: float) -> None:
    """Heartbeats hold a lease through a job longer than it; the lease outlasts a stall of a loaded machine
    (HEALTHY_WITHIN_S: at 2 s a 2-s stall expired it). A LEASE_HEARTBEAT_S longer than the lease (15 s): the job
    answer says the lease, and the worker beats four times within it; before, every job longer than the lease
    was handed back before its first heartbeat, each run, until MAX_ATTEMPTS failed it."""
    lease_s = HEALTHY_WITHIN_S + 0.5
    comfy = ComfyUISimulator(tmp_path / "out", tmp_path / "temp", node_seconds={"ImageBlur": lease_s + 1.0})
    await comfy.start()
    try:
        async with QueueManagerServer(lease_timeout_s=lease_s, test_hooks=True) as qm:
            job = qm.store.submit("alice", SLOW)
            worker = make_worker(qm, comfy, tmp_path, lease_heartbeat_s=heartbeat_s)
            assert await asyncio.wait_for(worker.run(), 60) == 0
            done = qm.store.get(job.id)
            assert (done.status, done.attempt, done.history) == (JobStatus.COMPLETED, 1, [])
            [report] = qm.reports.landed(job.id)
            assert report.endpoint == "complete-job"
    finally:
        await comfy.stop()


def simulator(tmp_path: Path, *, blur_s: float) -> ComfyUISimulator:
    return ComfyUISimulator(tmp_path / "out", tmp_path / "temp", node_seconds={"ImageBlur": blur_s})


async def wait_until(predicate: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_job_stopped_under_again_and_again_is_handed_back_as_a_shutdown_and_completes(tmp_path: Path) -> None:
    """Four replicas stopped under it (scale-down, spot reclaim): MAX_ATTEMPTS is 3, and the job still runs.

    The blur outlasts any stall of a loaded machine between the prompt's arrival and the stop (at 1 s the job
    once finished within the drain); the interrupt ends a prompt only after its running node, so the last
    replica starts once the one ComfyUI the test shares between them is idle again."""
    async with simulator(tmp_path, blur_s=5.0) as comfy, QueueManagerServer(test_hooks=True, max_attempts=3) as qm:
        job = qm.store.submit("alice", SLOW)
        for stop in range(1, 5):
            worker = make_worker(qm, comfy, tmp_path, worker_id=f"replica-{stop}", shutdown_grace_s=0.1)
            run = asyncio.create_task(worker.run())
            await wait_until(lambda n=stop: len(comfy.prompts_received) == n)
            worker.request_shutdown()
            assert await run == 0
            handed = qm.store.get(job.id)
            assert (handed.status, handed.attempt) == (JobStatus.PENDING, stop + 1)
            assert handed.history[-1]["cause"] == "shutdown"
            assert handed.history[-1]["reason"] == (
                f"worker replica-{stop} was stopped (shutdown signal) before the job finished"
            )
        comfy.node_seconds["ImageBlur"] = 0.05
        await wait_until(lambda: comfy.running_prompt_id is None, timeout_s=30)
        assert await make_worker(qm, comfy, tmp_path, worker_id="replica-5").run() == 0
        done = qm.store.get(job.id)
        assert (done.status, done.attempt) == (JobStatus.COMPLETED, 5)
        assert [r.endpoint for r in qm.reports.landed(job.id)] == ["complete-job"]


async def test_comfyui_restarting_under_a_stopping_worker_is_a_fault_not_a_shutdown(tmp_path: Path) -> None:
    """ComfyUI restarted (the job may have crashed it) and the replica is told to stop while the worker waits
    for the supervisor's explanation: the restarted ComfyUI answers the interrupt, yet the job saw it go."""
    async with simulator(tmp_path, blur_s=5.0) as comfy, QueueManagerServer(test_hooks=True) as qm:
        job = qm.store.submit("alice", SLOW)
        worker = make_worker(qm, comfy, tmp_path, shutdown_grace_s=30, platform_kill_delay_s=60)
        run = asyncio.create_task(worker.run())
        await wait_until(lambda: comfy.prompts_received)
        await comfy.crash()
        await comfy.start(port=comfy.port)
        await wait_until(lambda: not worker.state.comfyui_up)  # the job saw its prompt gone
        worker.request_shutdown()
        worker.request_shutdown()  # the second signal ends the drain at once
        await run
        handed = qm.store.get(job.id)
        assert handed.status is JobStatus.PENDING
        assert handed.history[-1]["cause"] == "fault"
        assert "ComfyUI no longer knows the prompt" in handed.history[-1]["reason"]


async def test_comfyui_dead_when_the_stop_comes_is_a_fault_not_a_shutdown(tmp_path: Path) -> None:
    """ComfyUI died and the stop comes before the worker has noticed: it does not answer the interrupt."""
    async with simulator(tmp_path, blur_s=5.0) as comfy, QueueManagerServer(test_hooks=True) as qm:
        job = qm.store.submit("alice", SLOW)
        worker = make_worker(qm, comfy, tmp_path, shutdown_grace_s=0)
        run = asyncio.create_task(worker.run())
        await wait_until(lambda: comfy.prompts_received)
        await comfy.crash()
        worker.request_shutdown()
        await run
        handed = qm.store.get(job.id)
        assert handed.status is JobStatus.PENDING
        assert handed.history[-1]["cause"] == "fault"
        assert handed.history[-1]["reason"].startswith(
            "worker embedded-worker could not interrupt the prompt when it was stopped: "
        )
