"""The fault-injection load run, reduced for CI (bench/fault_run.py runs the full one): real replicas
(supervisor + ComfyUI simulator each) and the queue manager's own process, through every fault of the full run:
worker SIGKILL and SIGTERM, ComfyUI killed mid-job, queue manager restarted and SIGKILLed (once together with a
worker's SIGTERM); and the further faults that cost seconds, not minutes (all but comfyui_hang)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal

import pytest

from bench.fault_run import FaultRun, RunConfig, comfyui_pids, processes_using


@pytest.mark.timeout(180)  # ~25 s alone; the margin is for a loaded 2-core runner
async def test_faults_lose_nothing_report_nothing_twice_and_fail_nothing() -> None:
    config = RunConfig(jobs=40, replicas=2, users=4, node_seconds=0.02, lease_timeout_s=1.5, cycles=1, timeout_s=150)
    summary = await FaultRun(config).run()
    assert summary["faults_skipped"] == [], summary
    assert summary["time_to_drain_s"] is not None, summary
    assert (summary["lost"], summary["not_terminal"], summary["double_reports"]) == (0, 0, 0), summary
    assert summary["outputs_mismatched"] == 0, summary
    assert summary["failed"] == 0, summary["failure_reasons"]
    assert summary["completed"] == config.jobs


@pytest.mark.timeout(120)
async def test_a_close_cancelled_while_a_replica_is_frozen_still_ends_every_process() -> None:
    """Ctrl-C again while the close waits for a frozen replica: the queue manager, every supervisor and every
    ComfyUI the run started are ended all the same."""
    run = FaultRun(RunConfig(jobs=0, replicas=2))
    try:
        await run.queue.start()
        await run.pool.keep_up()
        frozen = run.pool.live[0].process
        async with asyncio.timeout(60):
            while not comfyui_pids(frozen.pid):  # its ComfyUI running, to be ended too
                await asyncio.sleep(0.1)
        frozen.send_signal(signal.SIGSTOP)  # SIGTERM stays pending: the close waits for it
        closing = asyncio.create_task(run.close())
        await asyncio.sleep(0)  # the close under way, waiting for the replicas
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(closing, 30)
        async with asyncio.timeout(30):
            while processes_using(run.root):
                await asyncio.sleep(0.1)
            await asyncio.gather(run.queue.process.wait(), frozen.wait())  # type: ignore[union-attr]
    finally:
        for pid in processes_using(run.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(run.root, ignore_errors=True)
    assert run.queue.process is not None
    assert run.queue.process.returncode == 0  # stopped by the close (SIGTERM), not killed by this test
    assert frozen.returncode == -signal.SIGKILL


@pytest.mark.timeout(180)  # ~30 s alone; the margin is for a loaded 2-core runner
async def test_a_frozen_replica_a_kill_mid_delivery_and_a_queue_killed_in_a_burst_end_every_job_once() -> None:
    """The bench's further faults: the whole replica stopped past its lease and thawed (its heartbeat or report
    refused, the job ended once, by the attempt it was handed to), a replica SIGKILLed with a file of its delivery
    open, and the queue manager stopped while reports and polls pile up, then SIGKILLed as they arrive."""
    faults = ("replica_freeze", "delivery_sigkill", "queue_sigkill_in_burst")
    config = RunConfig(jobs=40, replicas=2, users=4, lease_timeout_s=1.5, cycles=1, faults=faults, timeout_s=150)
    summary = await FaultRun(config).run()
    assert (summary["faults"], summary["faults_skipped"]) == (list(faults), []), summary
    assert summary["time_to_drain_s"] is not None, summary
    assert (summary["lost"], summary["not_terminal"], summary["double_reports"]) == (0, 0, 0), summary
    assert summary["outputs_mismatched"] == 0, summary
    assert summary["failed"] == 0, summary["failure_reasons"]
    assert summary["completed"] == config.jobs
