"""Worker tests run against the ComfyUI simulator and the queue manager, both real servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from queue_manager.server import QueueManagerServer
from standins.comfyui import ComfyUISimulator
from worker.config import WorkerSettings, load_settings
from worker.execution import RunTimings
from worker.main import Worker

from ..conftest import Answer, Instead, loopback_proxy

# A limit that a test waits out on purpose but that healthy work must also meet (a job's deadline that its prompt must
# reach ComfyUI within, a call to a ComfyUI that later hangs): past the 1-2 s a loaded 2-core CI machine has stalled
# the whole test process, as 0.3, 0.5 and 1 s were not.
HEALTHY_WITHIN_S = 2.5
# HEARTBEAT_TIMEOUT_S for the liveness tests: the loop beats every 0.75 s, so a stall up to 2.25 s is not the loop's.
HEARTBEAT_LIMIT_S = 3.0
# Fast paces for a ComfyUI that stays up. It is given up after HEALTHY_WITHIN_S of silence: at 0.6 s every question of
# a job waited only the 1-s floor (MIN_QUESTION_S), and a stall of the test process past it handed healthy work back.
# The wait for a finished prompt's history entry is as long: at 1 s a stall left a cancelled prompt's entry untidied.
HEALTHY_TIMINGS = RunTimings(
    check_interval_s=0.2, poll_interval_s=0.05, lost_after_s=HEALTHY_WITHIN_S, lost_confirm_s=0.3,
    history_wait_s=HEALTHY_WITHIN_S, interrupt_wait_s=2.0,
)  # fmt: skip
# For the tests that kill or hang ComfyUI mid-job and wait for the worker to give it up: 0.6 s of silence, not 2.5.
COMFYUI_KILLED_TIMINGS = replace(HEALTHY_TIMINGS, lost_after_s=0.6)


async def wedged_verdicts(worker: Worker, run: asyncio.Task[int] | None = None) -> tuple[int, list[str]]:
    """Run ``worker`` to its end (or wait for its ``run`` task), reading /health's verdict (HEARTBEAT_LIMIT_S)
    every 50 ms: its exit code, and the "worker loop wedged" reasons /health would have answered."""
    from health.verdict import liveness

    run = run or asyncio.create_task(worker.run())
    reasons: list[str] = []
    while not run.done():
        reason = liveness(worker.state, HEARTBEAT_LIMIT_S).reason
        if reason and reason.startswith("worker loop wedged") and reason not in reasons:
            reasons.append(reason)
        await asyncio.sleep(0.05)
    return await run, reasons


@pytest.fixture
async def comfy(tmp_path: Path):
    sim = ComfyUISimulator(tmp_path / "comfy-output", tmp_path / "comfy-temp", node_seconds={"ImageBlur": 0.4})
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def qm():
    server = QueueManagerServer(test_hooks=True, extensions=False)  # comfy-multi: the fallback paths
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def settings_for(tmp_path: Path, qm: QueueManagerServer, comfy: ComfyUISimulator):
    def make(**overrides) -> WorkerSettings:
        values = {
            "queue_manager_url": qm.url,
            "comfyui_url": comfy.url,
            "outputs_path": tmp_path / "outputs",
            "poll_interval_s": 0.02,
            "serverless_mode": True,
            "serverless_max_idle_polls": 3,
            "job_timeout_s": 10,
            "comfyui_startup_timeout_s": 5,
            "comfyui_unresponsive_timeout_s": 5,
            "report_retry_budget_s": 5,
            "shutdown_grace_s": 2,
            "worker_id": "test-worker",
            "health_port": 0,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def make_worker(settings_for):
    def make(*, timings: RunTimings = HEALTHY_TIMINGS, **overrides) -> Worker:
        return Worker(settings_for(**overrides), timings=timings)

    return make


# ComfyUI's answer in hand: (the request, the answer's body) → another answer, or None to pass ComfyUI's on.
BodyRewrite = Callable[[web.Request, bytes], web.StreamResponse | None]


def comfyui_proxy(
    comfy_url: str, instead: Instead | None = None, rewrite: BodyRewrite | None = None
) -> contextlib.AbstractAsyncContextManager[str]:
    """A loopback_proxy in front of ComfyUI with the websocket refused (403, as a proxy forbidding upgrades), but
    what ``instead`` or ``rewrite`` answer."""

    async def before(request: web.Request, body: bytes, upstream: aiohttp.ClientSession) -> web.StreamResponse | None:
        if instead is not None and (own := await instead(request, body, upstream)) is not None:
            return own
        return web.Response(status=403, text="websockets are not allowed") if request.path == "/ws" else None

    async def after(request: web.Request, answer: Answer) -> web.StreamResponse | None:
        return rewrite(request, answer.body) if rewrite is not None else None

    return loopback_proxy(comfy_url, before, after)
