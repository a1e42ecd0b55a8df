"""One container, one process: ComfyUI as a child, the worker and its health server in this event loop.

Order on the way out: the worker drains first (its own grace), then ComfyUI is stopped with what is left of
the shutdown deadline. If ComfyUI dies on its own, the worker is aborted so the current job is handed back
with the reason and /health turns unhealthy.
"""

from __future__ import annotations

import asyncio
import os

import structlog

from common.stop_signals import take_stop_signals
from supervisor.comfyui_process import ComfyUIProcess
from supervisor.config import SupervisorSettings, comfyui_environment
from worker.config import WorkerSettings
from worker.main import Worker
from worker.service import STOP_SIGNALS, executor_without_stop_signals, ignore_stop_signals, serve

log = structlog.get_logger()


async def supervise(config: SupervisorSettings, settings: WorkerSettings, worker: Worker | None = None) -> int:
    """Run ComfyUI and the worker until the worker returns; its exit code is the container's."""
    _warn_if_over_stop_budget(config, settings)
    worker = worker or Worker(settings)
    comfyui = ComfyUIProcess(
        config.comfyui_argv(), stop_timeout_s=config.comfyui_stop_timeout_s, env=comfyui_environment(os.environ)
    )
    # serve() takes the signals only once its health server listens; before, a SIGTERM would kill this process and
    # orphan ComfyUI (its own session) while it is being spawned-and-watched.
    _route_stop_signals_to(worker)
    try:
        await comfyui.start()
        watcher = asyncio.create_task(_abort_worker_when_comfyui_exits(comfyui, worker))
        try:
            code = await serve(settings, worker)
        finally:
            comfyui_crashed = watcher.done() and not watcher.cancelled()
            watcher.cancel()
            (outcome,) = await asyncio.gather(watcher, return_exceptions=True)
            if isinstance(outcome, Exception):
                log.error("supervisor.abort_failed", error=repr(outcome))
            await comfyui.stop(min(config.comfyui_stop_timeout_s, worker.deadline.remaining()))
    finally:
        ignore_stop_signals()  # nothing left to stop: their default would replace the worker's exit code
    if comfyui_crashed and code == 0:
        code = 1  # the worker may have been on its way out already; a dead ComfyUI is still a failure
    log.info("supervisor.exit", code=code)
    return code


def _route_stop_signals_to(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(executor_without_stop_signals())  # as run_process does: supervise may run without it
    take_stop_signals(worker.request_shutdown, STOP_SIGNALS)


async def _abort_worker_when_comfyui_exits(comfyui: ComfyUIProcess, worker: Worker) -> None:
    code = await comfyui.wait()
    comfyui.kill_leftovers()  # its helpers held the GPU until stop(), for ever if this process is killed before
    reason = f"ComfyUI process exited unexpectedly with code {code}"
    log.error("comfyui.exited_unexpectedly", code=code)
    worker.state.set_comfyui(False)  # /status and comfy_worker_comfyui_up said 1 for as long as the hand-back took
    worker.abort(reason)  # hands the running job back with the reason and marks the state fatal: /health 503


def _warn_if_over_stop_budget(config: SupervisorSettings, settings: WorkerSettings) -> None:
    needed_s = settings.shutdown_grace_s + config.comfyui_stop_timeout_s
    if needed_s >= settings.platform_kill_delay_s:
        log.warning(
            "supervisor.stop_budget_exceeded",
            shutdown_grace_s=settings.shutdown_grace_s,
            comfyui_stop_timeout_s=config.comfyui_stop_timeout_s,
            platform_kill_delay_s=settings.platform_kill_delay_s,
        )
