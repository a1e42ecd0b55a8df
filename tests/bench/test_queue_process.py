"""bench.fault_run.QueueProcess: the queue manager of the fault run and the soak, stopped however it is."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from bench.fault_run import QueueProcess
from demo.replicas import free_loopback_port


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
