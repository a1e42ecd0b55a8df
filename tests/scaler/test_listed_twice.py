"""A platform that lists the same replica twice (a pagination or replication glitch of its API): one replica, counted
and charged once, and never stopped to bring the count down to what runs already."""

from __future__ import annotations

from datetime import UTC, datetime

from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig
from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from scaler.providers.verda.backend import VerdaBackend
from standins.runpod import FakeRunPod
from standins.verda import FakeVerda

from ..conftest import ManualClock
from .conftest import DEPLOYMENT

RUNPOD_KEY = "rpa_test_key"
POD_BODY = {"image": "ghcr.io/acme/worker:1", "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}, "cloud": "SECURE",
            "disk": 20, "ports": ["8000/http"]}
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


async def test_a_runpod_pod_listed_twice_is_not_stopped_as_a_surplus():
    # Before: at a count of 1 the backend saw 2 pods, stopped and terminated the only one (its job handed back and
    # started over), then created another at the next observe.
    async with FakeRunPod(RUNPOD_KEY) as fake:
        backend = RunPodBackend(RunPodClient(RUNPOD_KEY, base_url=fake.url, max_attempts=1), "comfy", POD_BODY,
                                health=PodHealthProbe(fake.health_url))
        try:
            await backend.apply(1)
            [pod] = fake.live_pods()
            listed = [fake._pod_json(pod)] * 2
            fake.fail_next("/pods", 200, method="GET", times=3, body={"pods": listed})
            view = await backend.observe()
        finally:
            await backend.aclose()
        assert fake.live_pods() == [pod]
    assert len(view.replicas) == 1
