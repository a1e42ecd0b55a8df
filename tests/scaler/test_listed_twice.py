"""A platform that lists the same replica twice (a pagination or replication glitch of its API): one replica, counted
and charged once, and never stopped to bring the count down to what runs already."""

from __future__ import annotations

from datetime import UTC, datetime

from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig
from scaler.providers.verda.backend import VerdaBackend
from standins.verda import FakeVerda

from ..conftest import ManualClock
from .conftest import DEPLOYMENT

VERDA_PRICE = 2.30
TICK_S = 15.0


async def test_a_verda_replica_listed_twice_is_pinned_and_charged_as_one(fake_verda: FakeVerda, make_verda_client,
                                                                         verda_scaling, wall: ManualClock, queue):
    # Before: the first tick counted 2 replicas, pinned min = max = 2 (Verda started a second for one running job)
    # and charged both: 0.77 $ for the first ten minutes, not 0.38.
    replica = {"id": "replica-a", "status": "running", "started_at": datetime.fromtimestamp(wall(), UTC).isoformat()}
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/replicas", 200, method="GET", times=8,
                         body={"list": [replica, replica]})
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall)
    queue.running = 1
    loop = ScalerLoop(ScalingConfig(price_per_replica_hour=VERDA_PRICE), backend, queue, clock=wall)
    try:
        for _ in range(4):
            await loop.tick()
            wall.advance(TICK_S)
        view = await backend.observe()
    finally:
        await backend.aclose()
    assert [r.id for r in view.replicas] == ["replica-a"]
    assert verda_scaling() == (1, 1)
    assert loop.state.ledger.spent_since(0) == VERDA_PRICE * 600 / 3600

