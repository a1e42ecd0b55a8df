"""A stop while the tick waits only on the queue manager's /health, its decision already written: the line says so.

Before, it said "stopping before the tick under way wrote its decision: the platform keeps its count" though the
scale-up had been written."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from queue_manager.server import QueueManagerServer
from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig
from scaler.queue_status import QueueStatusReader

from .conftest import StubBackend


async def test_a_stop_during_a_hung_health_read_says_the_decision_was_written(
    qm: QueueManagerServer, backend: StubBackend, wait, monkeypatch
) -> None:
    monkeypatch.setattr("scaler.loop.STOP_GRACE_S", 0.05)
    qm.store.submit("alice", {"1": {"class_type": "Noop", "inputs": {}}})
    qm.faults.inject("health", delay_s=3600.0)
    stop = asyncio.Event()
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(ScalingConfig(), backend, reader, clock=backend.clock, interval_s=60, tick_deadline_s=600)
        with capture_logs() as logs:
            task = asyncio.create_task(loop.run(stop))
            await wait(lambda: backend.applied == [1])
            await wait(lambda: any(entry["event"] == "Scaling decision" for entry in logs))
            stop.set()
            async with asyncio.timeout(10):
                await task
    [cut] = [entry for entry in logs if entry["event"] == "scaler_tick_cut_short"]
    assert cut["apply"] == "wrote" and "write_under_way" not in cut
    assert "already carried out" in cut["hint"] and "before the tick under way wrote" not in cut["hint"]
