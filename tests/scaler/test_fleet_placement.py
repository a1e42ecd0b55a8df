"""Placement over the fake Verda and the fake RunPod on loopback: providers that never serve, that flap,
and that leave the list while their replicas run."""

from __future__ import annotations

import time

import pytest

from demo.providers import POD_BODY
from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.fleet import FleetBackend, Member
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING
from scaler.providers import VerdaBackend
from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from standins.runpod import FakeRunPod
from standins.verda import FakeVerda

DEPLOYMENT = "comfyui-worker-serverless"
RUNPOD_KEY = "rpa_fleet_placement_key_do_not_log"
TICK_S = 15.0
START_DEADLINE_S = 120.0
RETRY_S = 300.0


@pytest.fixture
def wall(clock):
    clock.now = time.time()
    return clock


def make_fleet(make_verda_client, fake_runpod: FakeRunPod, wall, *, verda_price: float, runpod_price: float,
               **fleet_options) -> FleetBackend:
    config = AllocatorConfig(
        providers=(
            ProviderSpec("verda", max_replicas=3, price_per_hour=verda_price),
            ProviderSpec("runpod", max_replicas=3, price_per_hour=runpod_price, commit_s=TICK_S),
        ),
        error_ticks=2, start_deadline_s=START_DEADLINE_S, retry_after_s=RETRY_S,
    )
    runpod = RunPodBackend(RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url), DEPLOYMENT, POD_BODY, clock=wall,
                           health=PodHealthProbe(fake_runpod.health_url))
    members = [
        Member(config.providers[0], VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall), VERDA_BILLING),
        Member(config.providers[1], runpod, RUNPOD_BILLING),
    ]
    return FleetBackend(members, config, clock=wall, **fleet_options)


async def ticks(fleet: FleetBackend, wall, count: int) -> None:
    for _ in range(count):
        wall.advance(TICK_S)
        await fleet.observe()


@pytest.mark.parametrize("stuck", ["provisioning", "worker_starting"])
async def test_runpod_pods_that_never_serve_degrade_runpod_and_its_shortfall_goes_to_verda(
    make_verda_client, fake_verda: FakeVerda, wall, verda_scaling, stuck
):
    """RunPod's backend reported every listed pod as ready: pods stuck PROVISIONING (no host could pull the
    image), or whose worker never left "starting", kept RunPod healthy for ever (300 s past a 120 s start
    deadline, nothing degraded), and the queue's 2 replicas ran nowhere."""
    delay_s = 10**6 if stuck == "provisioning" else 0.0
    async with FakeRunPod(RUNPOD_KEY, network_volumes=("vol-demo",), provision_delay_s=delay_s) as fake_runpod:
        fleet = make_fleet(make_verda_client, fake_runpod, wall, verda_price=2.99, runpod_price=0.44)
        try:
            await fleet.observe()
            await fleet.apply(2)  # RunPod is the cheaper: both asked of it
            for pod in fake_runpod.live_pods():
                fake_runpod.set_health(pod.id, 200, {"status": "ok", "phase": "starting"})
            await ticks(fleet, wall, int(START_DEADLINE_S // TICK_S) + 1)
            assert fleet.state.health["runpod"].degraded == "start_deadline"
            assert fleet.state.targets == {"runpod": 0, "verda": 2}
            assert verda_scaling() == (2, 2)
            assert fake_runpod.live_pods() == [], "pods that never served are let go"
        finally:
            await fleet.aclose()


async def test_runpod_pods_count_as_ready_once_their_worker_takes_jobs(make_verda_client, fake_verda, wall):
    async with FakeRunPod(RUNPOD_KEY, network_volumes=("vol-demo",)) as fake_runpod:
        fleet = make_fleet(make_verda_client, fake_runpod, wall, verda_price=2.99, runpod_price=0.44)
        try:
            await fleet.observe()
            await fleet.apply(2)
            await ticks(fleet, wall, int(START_DEADLINE_S // TICK_S) + 1)  # the fake's workers answer "idle"
            assert fleet.status_report(wall())["providers"]["runpod"]["ready"] == 2
            assert fleet.state.health["runpod"].degraded is None
        finally:
            await fleet.aclose()


@pytest.mark.parametrize("verda_answers_again", [True, False])
async def test_a_provider_that_flapped_into_errors_still_goes_to_zero_when_the_queue_is_empty(
    make_verda_client, fake_verda: FakeVerda, wall, verda_scaling, verda_answers_again
):
    """Verda failed its reads for 2 ticks (degraded for errors, back-off 300 s), then the queue emptied. The
    unreadable provider's count was kept whatever the queue needed, for the whole back-off even once Verda
    answered again: 3 replicas pinned for 19 ticks (285 s) with nothing to do, up to an hour once the back-off
    has doubled. Its status read failing does not keep the write from landing."""
    async with FakeRunPod(RUNPOD_KEY, network_volumes=("vol-demo",)) as fake_runpod:
        fleet = make_fleet(make_verda_client, fake_runpod, wall, verda_price=2.30, runpod_price=2.99)
        try:
            await fleet.observe()
            await fleet.apply(3)
            await ticks(fleet, wall, 1)
            assert verda_scaling() == (3, 3)
            status = f"/container-deployments/{DEPLOYMENT}/status"
            fake_verda.fail_next(status, 503, times=4 if verda_answers_again else 1000)  # 2 tries a read
            await ticks(fleet, wall, 2)
            assert fleet.state.health["verda"].degraded == "errors"
            await fleet.apply(0)
            await ticks(fleet, wall, 2)
            assert fleet.state.targets == {"verda": 0, "runpod": 0}
            assert verda_scaling() == (0, 0)
            assert fake_runpod.live_pods() == []
        finally:
            await fleet.aclose()


async def test_an_unreadable_provider_keeps_its_replicas_while_the_queue_needs_them(
    make_verda_client, fake_verda: FakeVerda, wall, verda_scaling
):
    """Unreadable, a provider keeps its count while the queue needs it, and follows the queue down."""
    async with FakeRunPod(RUNPOD_KEY, network_volumes=("vol-demo",)) as fake_runpod:
        fleet = make_fleet(make_verda_client, fake_runpod, wall, verda_price=2.30, runpod_price=2.99)
        try:
            await fleet.observe()
            await fleet.apply(3)
            await ticks(fleet, wall, 1)
            fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/status", 503, times=1000)
            await ticks(fleet, wall, 3)
            assert fleet.state.health["verda"].degraded == "errors"
            assert fleet.state.targets["verda"] == 3 and verda_scaling() == (3, 3)
            await fleet.apply(2)
            await ticks(fleet, wall, 1)
            assert fleet.state.targets["verda"] == 2
        finally:
            await fleet.aclose()
