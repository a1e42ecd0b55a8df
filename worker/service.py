"""The worker process: health server first (Verda probes from the start), then the worker, health last out."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import structlog

from common.cli import EXIT_CONFIG
from common.logs import flush_logs
from common.stop_signals import take_stop_signals
from worker.config import WorkerSettings
from worker.main import Worker

# SIGHUP too: a closed terminal or `docker kill -s HUP` would otherwise kill the process outright, leaving the job
# it runs unreported (comfy-multi's manager holds it `running` for its hour-long job timeout).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
log = structlog.get_logger()


async def serve(settings: WorkerSettings, worker: Worker | None = None) -> int:
    from health.server import HealthServer

    worker = worker or Worker(settings)
    health = HealthServer(
        worker.state, host=settings.health_host, port=settings.health_port,
        heartbeat_timeout_s=settings.heartbeat_timeout_s, port_file=settings.health_port_file,
    )
    try:
        await health.start()
    except OSError as exc:  # the port is taken (a second worker on this machine?), or HEALTH_HOST is not ours
        privileged = exc.errno in (errno.EACCES, errno.EPERM)  # no restart mends it: the configuration's fault
        log.error(
            "Health server cannot listen; exiting", host=settings.health_host, port=settings.health_port,
            error=f"{type(exc).__name__}: {exc}",
            hint="ports below 1024 (net.ipv4.ip_unprivileged_port_start) need root or CAP_NET_BIND_SERVICE: set "
            "HEALTH_PORT to 1024 or above (0 picks one)" if privileged else "another process holds HEALTH_PORT: stop "
            "it, or set HEALTH_PORT to a free port (0 picks one); HEALTH_HOST must be an address of this machine",
        )  # fmt: skip
        return EXIT_CONFIG if privileged else 1
    # Kept on the way out: a signal after the worker stopped asks it to stop again. Removed, the signals went back to
    # their defaults, and one then (a supervisor stopping ComfyUI, the process's last moments) killed the process.
    take_stop_signals(worker.request_shutdown, STOP_SIGNALS)
    try:
        return await worker.run()
    finally:
        await health.stop()


def run_process(main: Callable[[Worker], Awaitable[int]], settings: WorkerSettings) -> int:
    """``asyncio.run(main(worker))``: the process's exit code. When the worker handed a job back without waiting
    for its delivery's thread, still inside a write to a hung OUTPUTS_PATH, the process exits with that code once
    what that delivery published is removed (Worker.withdraw_left_behind, bounded): asyncio.run's teardown and
    the interpreter's exit wait for every thread, and the replica would go on running (and billing) until the
    platform killed it."""

    async def run_then_exit() -> int:
        asyncio.get_running_loop().set_default_executor(executor_without_stop_signals())
        worker = Worker(settings)
        code = await main(worker)
        ignore_stop_signals()
        if worker.left_behind:
            log.warning("Exiting without waiting for a write to OUTPUTS_PATH that has not returned", code=code,
                        outputs_path=str(settings.outputs_path))
            worker.withdraw_left_behind()
            sys.stdout.flush()
            sys.stderr.flush()
            flush_logs()  # os._exit runs no exit handler: the lines still queued (common.log_writer) go first
            os._exit(code)
        return code

    return asyncio.run(run_then_exit())


def executor_without_stop_signals() -> ThreadPoolExecutor:
    """asyncio.to_thread's threads, which never take a stop signal (see ignore_stop_signals): the loop's thread
    alone does."""
    return ThreadPoolExecutor(
        thread_name_prefix="asyncio", initializer=signal.pthread_sigmask, initargs=(signal.SIG_BLOCK, STOP_SIGNALS)
    )


def ignore_stop_signals() -> None:
    """Ignored once the exit code is decided: the loop's close puts their defaults back, and one arriving then (the
    platform's stop meeting an idle exit) ended the process with 143 (a SIGINT a traceback) in place of that code."""
    loop = asyncio.get_running_loop()
    # remove_signal_handler puts the default action back before SIG_IGN replaces it: blocked meanwhile in this thread,
    # as in every other from its start (the log's, the executor's), one sent in between waits, and SIG_IGN discards it.
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
