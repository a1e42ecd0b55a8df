"""What the providers and the queue manager answer, taken adversarially: odd but well-formed answers from the
fake Verda and the fake RunPod on loopback, and what the scaler makes of them."""

from __future__ import annotations

from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.fleet import FleetBackend, Member
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING
from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.verda.backend import VerdaBackend
from standins.runpod import FakeRunPod
from standins.verda import FakeVerda

from ..conftest import ManualClock
from .conftest import DEPLOYMENT

TICK_S = 15.0
VERDA_PRICE = 2.30


def one_provider_fleet(name: str, backend, price: float, billing, clock: ManualClock) -> FleetBackend:
    spec = ProviderSpec(name, 5, price)
    return FleetBackend([Member(spec, backend, billing)], AllocatorConfig((spec,)), clock=clock)


async def test_a_verda_replica_listed_without_started_at_is_charged_once_not_at_every_tick(
    fake_verda: FakeVerda, make_verda_client, clock: ManualClock
):
    # Verda lists a replica still being placed without its start; before, each tick took it for a new replica
    # started then: 40 ticks charged 40 intervals (15.33 $ in ten minutes for one replica at 2.30 $/h).
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/replicas", 200, method="GET", times=40,
                         body={"list": [{"id": "replica-a", "status": "provisioning"}]})
    fleet = one_provider_fleet("verda", VerdaBackend(make_verda_client(), DEPLOYMENT, clock=clock), VERDA_PRICE,
                               VERDA_BILLING, clock)
    try:
        starts = set()
        for _ in range(40):  # ten minutes: one started 10-minute interval, two if a boundary falls inside
            starts.add((await fleet.observe()).replicas[0].started_at)
            clock.advance(TICK_S)
    finally:
        await fleet.aclose()
    assert len(starts) == 1
    assert fleet.ledger.spent_since(0) <= 2 * VERDA_PRICE * 600 / 3600 + 1e-9


async def test_a_runpod_pod_listed_without_created_at_is_charged_per_second_from_when_it_was_first_seen():
    # Before, the pod's start was "now" at every read: per-second billing charged it nothing, ever.
    clock = ManualClock(1_000_000.0)
    pod = {"id": "pod-1", "name": "comfy-0123abcd", "status": "RUNNING", "cost": 0.69}
    async with FakeRunPod("rpa_test_key", clock=clock) as fake:
        fake.fail_next("/pods", 200, method="GET", times=10, body={"pods": [pod]})
        client = RunPodClient("rpa_test_key", base_url=fake.url, max_attempts=1)
        fleet = one_provider_fleet("runpod", RunPodBackend(client, "comfy", {}, clock=clock), 0.69, RUNPOD_BILLING,
                                   clock)
        try:
            for _ in range(5):
                await fleet.observe()
                clock.advance(60.0)
            await fleet.observe()
        finally:
            await fleet.aclose()
    assert round(fleet.ledger.spent_since(0), 6) == round(300 * 0.69 / 3600, 6)
