"""The queue manager's GET /health, read each tick into comfy_scaler_queue_manager_healthy (ComfyQueueManagerUnhealthy).

Drilled: with the manager's database disk full, submissions and reports answered 503 and /health "unhealthy", but
the scaler's status reads still answered, so no alert paged."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from queue_manager.server import QueueManagerServer
from scaler.loop import ScalerLoop
from scaler.metrics import ScalerMetrics
from scaler.policy import ScalingConfig
from scaler.queue_status import QueueStatusReader

from .conftest import CALL_CUT_OFF_S

BIG = {"1": {"class_type": "EmptyImage", "inputs": {"text": "x" * 200_000}}}


def healthy_gauge(metrics: ScalerMetrics) -> float | None:
    return metrics.registry.get_sample_value("comfy_scaler_queue_manager_healthy")


async def test_the_gauge_follows_a_full_database_down_and_back_up(tmp_path: Path, backend) -> None:
    metrics = ScalerMetrics()
    assert healthy_gauge(metrics) == -1, "unread before the first tick, not 0 (which pages)"
    async with (
        QueueManagerServer(tmp_path / "queue.db") as queue,
        QueueStatusReader(queue.url) as reader,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        loop = ScalerLoop(ScalingConfig(), backend, reader, clock=backend.clock, metrics=metrics)
        await loop.tick()
        assert healthy_gauge(metrics) == 1

        conn = queue.store._conn
        [(pages,)] = conn.execute("PRAGMA page_count").fetchall()
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # what a full disk answers, without filling one
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": BIG})).status_code == 503
        decision = await loop.tick()
        assert healthy_gauge(metrics) == 0
        assert decision.reason != "hold_observation_failed", "the status read still answers: only /health tells"

        conn.execute("PRAGMA max_page_count = 1073741823")  # room again
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": BIG})).status_code == 201
        await loop.tick()
        assert healthy_gauge(metrics) == 1


@pytest.mark.parametrize(
    ("status", "body", "healthy"),
    [
        (200, {"status": "healthy", "redis_connected": True, "queue_depth": 0}, True),  # comfy-multi
        (200, {"status": "unhealthy", "redis_connected": False}, False),
        (200, {"status": "degraded"}, False),
        (503, {"status": "healthy"}, False),
        (503, "<html>503 Service Unavailable</html>", None),
        (404, {"detail": "Not Found"}, None),
        (200, ["healthy"], None),
    ],
    ids=["comfy-multi", "unhealthy", "other-status", "503-naming-healthy", "503-html", "404", "a-list"],
)
async def test_health_is_read_from_the_status_it_names(qm, status, body, healthy) -> None:
    qm.faults.inject("health", status=status, body=body)
    async with QueueStatusReader(qm.url) as reader:
        assert await reader.healthy() is healthy


async def test_an_unreachable_manager_s_health_is_unread() -> None:
    async with QueueStatusReader("http://127.0.0.1:9") as reader:
        assert await reader.healthy() is None


async def test_a_health_read_that_hangs_neither_delays_nor_changes_the_decision(qm, backend) -> None:
    """/health is awaited after the write: a hang past the tick's deadline leaves the scale-up applied."""
    qm.store.submit("alice", {"1": {"class_type": "Noop", "inputs": {}}})
    qm.faults.inject("health", delay_s=3600.0)
    metrics = ScalerMetrics()
    async with QueueStatusReader(qm.url) as reader:
        # The queue's status must be read and the scale-up written within the deadline the hung /health runs into.
        loop = ScalerLoop(
            ScalingConfig(), backend, reader, clock=backend.clock, metrics=metrics, tick_deadline_s=CALL_CUT_OFF_S
        )
        decision = await loop.tick()
    assert (decision.desired, backend.applied) == (1, [1])
    assert healthy_gauge(metrics) == -1
