"""bench.soak.Soak.close: the soak's queue manager, workers and ComfyUI stand-ins, ended however the close ends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from bench.soak import REPO, Soak


def soak_args(workers: int) -> argparse.Namespace:
    return argparse.Namespace(workers=workers, lease_timeout=5.0, retention_s=86400.0, seed=1, node_seconds=0.0,
                              worker_source=REPO, fixed_worker_ids=False)  # fmt: skip


async def _answering(health_url: str) -> None:
    """Until the worker's health server answers: the worker takes its stop signals once it listens."""
    async with httpx.AsyncClient(timeout=1) as http, asyncio.timeout(30):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                await http.get(f"{health_url}/health")
                return
            await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_a_close_cancelled_while_a_worker_drains_still_ends_everything() -> None:
    """Ctrl-C again while the close waits for a worker: the queue manager and every worker ended all the same."""
    soak = Soak(soak_args(workers=2))
    try:
        await soak.start()
        frozen = soak.workers[0].process
        assert frozen is not None
        await _answering(soak.workers[0].health_url)  # its SIGTERM handler set: frozen before, SIGTERM killed it
        frozen.send_signal(signal.SIGSTOP)  # SIGTERM stays pending: the close waits for it
        closing = asyncio.create_task(soak.close())
        await asyncio.sleep(0)  # the close under way, waiting for the workers
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(closing, 30)
        processes = [soak.queue.process, *(worker.process for worker in soak.workers)]
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes if p is not None)), 30)
    finally:
        for process in [soak.queue.process, *(worker.process for worker in soak.workers)]:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        shutil.rmtree(soak.root, ignore_errors=True)
    assert soak.queue.process is not None
    assert soak.queue.process.returncode == 0  # stopped by the close (SIGTERM), not killed by this test
    assert frozen.returncode == -signal.SIGKILL


@pytest.mark.timeout(90)
async def test_a_soak_whose_start_fails_ends_what_it_started(tmp_path: Path) -> None:
    """A worker that cannot start (its --worker-source is missing): the queue manager already running is ended."""
    args = soak_args(workers=1)
    args.worker_source = tmp_path / "missing"
    soak = Soak(args)
    try:
        with pytest.raises(FileNotFoundError):
            await asyncio.wait_for(soak.run(), 60)
        assert soak.queue.process is not None
        assert soak.queue.process.returncode == 0  # stopped by the close (SIGTERM)
    finally:
        if soak.queue.process is not None and soak.queue.process.returncode is None:
            soak.queue.process.kill()
            await soak.queue.process.wait()
        shutil.rmtree(soak.root, ignore_errors=True)


DEAF_WORKER = """
import pathlib, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path("ready").write_text("")
time.sleep(600)
"""


@pytest.mark.timeout(90)
async def test_a_worker_deaf_to_sigterm_is_killed_after_the_grace_and_counted(tmp_path: Path) -> None:
    """The churn SIGTERMs a worker that never exits: it is SIGKILLed after the grace, the soak goes on."""
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__init__.py").write_text("")
    (tmp_path / "worker" / "__main__.py").write_text(DEAF_WORKER)
    args = soak_args(workers=1)
    args.worker_source = tmp_path
    soak = Soak(args)
    try:
        await soak.start()
        deaf = soak.workers[0].process
        assert deaf is not None
        async with asyncio.timeout(30):
            while not (tmp_path / "ready").exists():  # its SIGTERM handler in place (it runs in --worker-source)
                await asyncio.sleep(0.05)
        await asyncio.wait_for(soak.end_worker(soak.workers[0], signal.SIGTERM, grace_s=0.5), 30)
    finally:
        await asyncio.wait_for(soak.close(), 60)
        shutil.rmtree(soak.root, ignore_errors=True)
    assert deaf.returncode == -signal.SIGKILL
    assert soak.faults == {"worker_SIGTERM": 1, "worker_SIGTERM_outlived_0.5s_killed": 1}
