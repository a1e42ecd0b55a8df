"""A container restarted in place: the same SCRATCH_DIR, ports and environment after the supervisor was SIGKILLed
under a job. Verda does not say whether it restarts a container in place or replaces it (docs/verda-api.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from aiohttp import web

from queue_manager import QueueManagerServer

from .conftest import free_ports
from .test_supervisor_with_simulator import job_status, running_job, submit

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("worker_id", [None, "fixed-worker"], ids=["default id", "fixed WORKER_ID"])
async def test_a_second_start_after_a_sigkill_empties_the_last_runs_files_and_runs_the_lost_job(
    base_env, run_supervisor, load_workflow, tmp_path: Path, worker_id: str | None
) -> None:
    async with QueueManagerServer(test_hooks=True, lease_timeout_s=2, reaper_interval_s=0.5) as queue_manager:
        env = {
            **base_env, "QUEUE_MANAGER_URL": str(queue_manager.url), "LEASE_HEARTBEAT_S": "0.5",
            "COMFYUI_EXTRA_ARGS": "--node-seconds ImageBlur=3",  # a stalled machine does not finish it first
        }  # fmt: skip
        if worker_id is None:
            del env["WORKER_ID"]  # the default: a new id at every start
        else:
            env["WORKER_ID"] = worker_id  # the same id after the restart: its polls must not keep the lost job
        first = await run_supervisor(env)
        done = await submit(queue_manager, load_workflow("quick.json"))
        await first.wait_until(lambda: _finished(queue_manager, done), timeout_s=20, what="the first job")
        lost = await submit(queue_manager, load_workflow("slow.json"))
        await first.wait_until(lambda: running_job(first, lost), timeout_s=20, what="the second job to run")
        left_behind = sorted(p.name for p in (tmp_path / "data" / "comfyui" / "output").rglob("*") if p.is_file())
        assert left_behind, "the last success's results stay in ComfyUI's output folder (docs/worker.md)"

        first.signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        second = await run_supervisor(env)

        await second.wait_until(lambda: _finished(queue_manager, lost), timeout_s=30, what="the lost job to run")
        job = await job_status(queue_manager, lost)
        assert (job["status"], job["attempt"]) == ("completed", 2)
        second.signal(signal.SIGTERM)
        assert await second.wait() == 0
        [emptied] = [e for e in second.log_events() if e["event"] == "supervisor.scratch_emptied"]
        assert emptied["files"] >= len(left_behind) and emptied["not_removed"] == 0


async def _finished(queue_manager: QueueManagerServer, job_id: str) -> bool:
    return (await job_status(queue_manager, job_id))["status"] == "completed"


async def test_a_second_container_on_the_same_scratch_disk_is_refused_and_deletes_nothing(
    base_env, run_supervisor, tmp_path: Path
) -> None:
    """Each start empties ComfyUI's output folder: a second container given the same SCRATCH_DIR would delete
    the results the first one's ComfyUI is writing before its worker delivers them."""
    first = await run_supervisor(base_env)
    await first.wait_until(lambda: "comfyui.started" in first.output, what="the first ComfyUI to start")
    being_written = tmp_path / "data" / "comfyui" / "output" / "ComfyUI_00001_.png"
    being_written.write_bytes(b"a result not delivered yet")

    comfyui_port, health_port = free_ports(2)
    second_env = {**base_env, "COMFYUI_URL": f"http://127.0.0.1:{comfyui_port}", "HEALTH_PORT": str(health_port)}
    second = await run_supervisor(second_env)
    assert await second.wait(timeout_s=20) == 2
    [refused] = [e for e in second.log_events() if e["event"] == "supervisor.scratch_in_use"]
    assert refused["variable"] == "SCRATCH_DIR"
    assert f"pid {first.pid}" in refused["error"]
    assert not any(e["event"] == "supervisor.scratch_emptied" for e in second.log_events())
    assert being_written.read_bytes() == b"a result not delivered yet"

    first.signal(signal.SIGTERM)
    assert await first.wait() == 0
    third = await run_supervisor(second_env)  # the lock goes with the process that held it
    await third.wait_until(lambda: "comfyui.started" in third.output, what="ComfyUI to start once the disk is free")
    assert not being_written.exists(), "the scratch disk is emptied as usual once it is this container's"


async def test_a_port_file_a_killed_run_left_is_not_probed_before_the_health_server_listens(
    base_env, run_supervisor, tmp_path: Path
) -> None:
    """With HEALTH_PORT=0, a killed run's HEALTH_PORT_FILE (/tmp survives a restart in place) names its port. Before,
    the HEALTHCHECK probed that port until the new health server wrote its own, and a process holding it now
    answered for this container (here a server answering 200). The start is held before the event loop by a FIFO in
    place of the temporary file ComfyUI's model paths file is written to."""
    async def healthy(_request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    other = web.Application()
    other.router.add_get("/health", healthy)
    runner = web.AppRunner(other)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_file = tmp_path / "health-port"
    port_file.write_text(f"{runner.addresses[0][1]} 127.0.0.1\n")
    partial_model_paths = tmp_path / "data" / "comfyui" / ".extra_model_paths.yaml.partial"
    partial_model_paths.parent.mkdir(parents=True)
    os.mkfifo(partial_model_paths)
    env = {**base_env, "HEALTH_PORT": "0", "HEALTH_PORT_FILE": str(port_file)}
    try:
        supervisor = await run_supervisor(env)
        await supervisor.wait_until(lambda: "supervisor.scratch_emptied" in supervisor.output, what="the start held")
        probe = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "health.probe", env={**env, "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, said = await asyncio.wait_for(probe.communicate(), 30)
        supervisor.signal(signal.SIGINT)
        assert await supervisor.wait() == 130
    finally:
        await runner.cleanup()
    assert probe.returncode == 1, said
    assert "no port to probe" in said.decode()
