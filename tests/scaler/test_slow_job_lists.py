"""Job lists (GET /api/jobs) that answer late: the counts that did answer still decide the tick."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from queue_manager.server import QueueManagerServer
from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig
from scaler.queue_status import QueueStatusReader

from .conftest import SlowWrite, StubBackend

WORKFLOW = {"1": {"class_type": "Noop", "inputs": {}}}
TICK_DEADLINE_S = 2.0


async def test_job_lists_that_answer_after_the_tick_deadline_leave_the_counts_to_decide(
    qm: QueueManagerServer, backend: StubBackend
):
    # Before: the status read had answered, but the lists held the queue read past the tick's deadline, so the whole
    # read failed: hold_observation_failed at every tick, the job waited, and after SCALER_QUEUE_OUTAGE_HOLD_S the
    # replicas were released as for a queue manager down.
    qm.store.submit("alice", WORKFLOW)
    qm.faults.inject("list-jobs", delay_s=60.0, times=3)
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(ScalingConfig(target_wait_s=120), backend, reader, tick_deadline_s=TICK_DEADLINE_S)
        with capture_logs() as logs:
            async with asyncio.timeout(10 * TICK_DEADLINE_S):
                decision = await loop.tick()
    decided = next(e for e in logs if e["event"] == "Scaling decision")
    assert "queue_error" not in decided["details"], decided
    assert decision.desired == 1 and backend.applied == [1]
    unreadable = [e for e in logs if e["event"] == "queue_job_list_unreadable"]
    assert sorted(e["list"] for e in unreadable) == [f"GET /api/jobs?status={s}" for s in ("completed", "pending",
                                                                                          "running")]
    assert all("no answer within" in e["error"] for e in unreadable)


async def test_job_lists_left_out_at_half_the_tick_leave_the_other_half_for_the_write(qm: QueueManagerServer, clock):
    """JOB_LISTS_SHARE: lists still unanswered at half the tick's deadline are given up, so a write that takes a
    second still lands within a 4-s tick (lists read up to its deadline would leave the write no time)."""
    backend = SlowWrite(clock, seconds=1.0)
    qm.store.submit("alice", WORKFLOW)
    qm.faults.inject("list-jobs", delay_s=60.0, times=3)
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(ScalingConfig(target_wait_s=120), backend, reader, tick_deadline_s=4.0)
        with capture_logs() as logs:
            decision = await loop.tick()
    decided = next(e for e in logs if e["event"] == "Scaling decision")
    assert decided["apply"] == "wrote", decided
    assert decision.desired == 1 and backend.applied == [1]
