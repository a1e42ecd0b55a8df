"""bench.fault_run.QueueProcess: the queue manager of the fault run and the soak, stopped however it is."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest
from aiohttp import web

from bench.fault_run import QueueProcess
from demo.replicas import free_loopback_port

from ..conftest import served


async def test_a_frozen_queue_manager_is_killed_after_the_grace(tmp_path: Path) -> None:
    queue = QueueProcess(tmp_path, free_loopback_port(), lease_timeout_s=30)
    await queue.start()
    assert queue.process is not None
    queue.process.send_signal(signal.SIGSTOP)  # frozen: SIGTERM waits until it runs again
    try:
        await asyncio.wait_for(queue.stop(grace_s=0.5), 30)
    finally:
        if queue.process.returncode is None:
            queue.process.kill()
            await queue.process.wait()
    assert queue.process.returncode == -signal.SIGKILL


@pytest.mark.timeout(60)
async def test_a_queue_manager_that_exits_at_start_fails_the_start_with_its_reason(tmp_path: Path) -> None:
    """A mistaken setting (here inherited from the operator's environment): the start fails as soon as the process
    exits, quoting its log, rather than after 20 s of polling with no reason."""
    queue = QueueProcess(tmp_path, free_loopback_port(), lease_timeout_s=30)
    queue.env["FINISHED_JOB_RETENTION_S"] = "not-a-number"
    with pytest.raises(RuntimeError, match="the queue manager exited 2: ") as failure:
        await asyncio.wait_for(queue.start(), 30)
    assert "FINISHED_JOB_RETENTION_S: Input should be a valid number" in str(failure.value)


@pytest.mark.timeout(60)
async def test_a_queue_manager_that_never_answers_fails_the_start_within_its_bound(tmp_path: Path) -> None:
    """Its port accepts connections but nothing answers (the process frozen before it could listen, a silent
    program on the port): the start fails after the bound its message states, not after 400 one-second polls."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(100)  # connections completed by the kernel, never accepted
        queue = QueueProcess(tmp_path, silent.getsockname()[1], lease_timeout_s=30)
        starting = asyncio.create_task(queue.start(timeout_s=3))
        try:
            async with asyncio.timeout(10):
                while queue.process is None:
                    await asyncio.sleep(0)
            queue.process.send_signal(signal.SIGSTOP)  # before its interpreter is up: it never takes the port
            with pytest.raises(RuntimeError, match="the queue manager did not come up in 3 s"):
                await asyncio.wait_for(starting, 30)
        finally:
            starting.cancel()
            if queue.process is not None and queue.process.returncode is None:
                queue.process.kill()
                await queue.process.wait()


@pytest.mark.timeout(60)
async def test_a_start_is_not_taken_from_another_server_answering_on_its_port(tmp_path: Path) -> None:
    """The port is picked free and bound later by the child: a server that takes it meanwhile and answers /health
    200 made the start return at once, with this queue manager not up (and, its port taken, about to exit 1)."""

    async def healthy(_: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    app = web.Application()
    app.router.add_get("/health", healthy)
    async with served(app) as url:
        queue = QueueProcess(tmp_path, int(url.rsplit(":", 1)[1]), lease_timeout_s=30)
        with pytest.raises(RuntimeError, match=r"the queue manager exited 1: (?s:.*)another process listens on"):
            await asyncio.wait_for(queue.start(), 30)
