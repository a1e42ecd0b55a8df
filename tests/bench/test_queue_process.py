"""bench.fault_run.QueueProcess: the queue manager of the fault run and the soak, stopped however it is."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

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
