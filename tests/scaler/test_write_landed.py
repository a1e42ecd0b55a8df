"""A write of the count that failed (its answer lost) but landed: the next read shows it, and that is no drift."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from queue_manager.server import QueueManagerServer
from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig
from scaler.providers.verda.backend import VerdaBackend
from scaler.queue_status import QueueStatusReader
from standins.verda import FakeVerda

from .conftest import DEPLOYMENT

WORKFLOW = {"1": {"class_type": "Noop", "inputs": {}}}


@pytest.fixture
async def verda(make_verda_client) -> AsyncIterator[VerdaBackend]:
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT)
    yield backend
    await backend.aclose()


async def test_a_failed_write_that_landed_is_not_taken_for_drift_at_the_next_read(
    qm: QueueManagerServer, fake_verda: FakeVerda, verda: VerdaBackend, verda_scaling
):
    # Before: Verda carried out the PATCH and its answer was lost (a 502 from a proxy, a write cut off by the tick's
    # deadline); the next tick read the scaler's own count and logged scaling_drift ("someone changed the replica
    # bounds outside the scaler") and counted it in comfy_scaler_drift_total.
    config = ScalingConfig(target_wait_s=None, billing_aware=False, stabilization_window_s=0, max_replicas=4)
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(config, verda, reader)
        qm.store.submit("alice", WORKFLOW)
        await loop.tick()
        assert verda_scaling() == (1, 1)

        for _ in range(2):
            qm.store.submit("alice", WORKFLOW)
        fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/scaling", 502, method="PATCH", times=2,
                             after_effect=True)
        with capture_logs() as logs:
            await loop.tick()
        assert logs[-1]["apply"] == "failed" and verda_scaling() == (3, 3)

        with capture_logs() as logs:
            await loop.tick()
    events = [entry["event"] for entry in logs]
    assert "scaling_drift" not in events, logs
    assert loop.metrics.drift._value.get() == 0
    landed = [entry for entry in logs if entry["event"] == "platform_write_landed"]
    assert len(landed) == 1 and landed[0]["count"] == 3
    assert logs[-1]["apply"] == "already_set" and logs[-1]["current"] == 3
