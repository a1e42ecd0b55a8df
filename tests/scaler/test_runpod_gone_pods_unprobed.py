"""A pod whose DELETE RunPod answered is not asked its /health, against the fake RunPod on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from structlog.testing import capture_logs

from demo.providers import POD_BODY
from scaler.providers.runpod.backend import STOP_LAG_S, RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from standins.runpod import FakeRunPod

from ..conftest import ManualClock
from .conftest import DEPLOYMENT, RUNPOD_KEY

OBSERVE_EVERY_S = 15.0
UNHEALTHY = {"status": "unhealthy", "reason": "ComfyUI process exited unexpectedly with code 1"}


@pytest.fixture
async def backend(fake_runpod: FakeRunPod, clock: ManualClock) -> AsyncIterator[RunPodBackend]:
    client = RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url, max_attempts=1)
    backend = RunPodBackend(client, DEPLOYMENT, POD_BODY, clock=clock, health=PodHealthProbe(fake_runpod.health_url))
    yield backend
    await backend.aclose()


async def test_a_pod_listed_running_that_runpod_says_is_not_found_is_not_probed_nor_restarted(
    backend: RunPodBackend, fake_runpod: FakeRunPod, clock: ManualClock
):
    # Before: a pod RunPod lists RUNNING but answers 404 to its stop and DELETE (a listing lagging behind a pod gone)
    # was still asked its /health at every observe (16 probes in 120 s for 1 pod kept), and, answering "unhealthy",
    # warned runpod_pod_unhealthy and was sent a stop and a DELETE again as a restart (3 stops, 11 DELETEs).
    # Now only the pod kept is probed (8), the ghost gets its one stop and the DELETEs of a dead pod (1 + 8).
    await backend.apply(2)
    ghost, kept = sorted(fake_runpod.live_pods(), key=lambda pod: pod.id)
    kept.created_at -= timedelta(hours=1)  # the ghost is the newest: the one scaled down
    fake_runpod.fail_next(f"/pods/{ghost.id}/action", 404, method="POST", times=1000)
    fake_runpod.fail_next(f"/pods/{ghost.id}", 404, method="DELETE", times=1000)
    fake_runpod.set_health(ghost.id, 503, UNHEALTHY)
    await backend.apply(1)
    observes = int(STOP_LAG_S // OBSERVE_EVERY_S)
    probes_before = len(fake_runpod.proxy_authorizations)
    with capture_logs() as logs:
        for _ in range(observes):
            clock.advance(OBSERVE_EVERY_S)
            await backend.observe()
    assert len(fake_runpod.proxy_authorizations) - probes_before == observes, "only the pod kept is probed"
    assert [entry for entry in logs if entry["event"] == "runpod_pod_unhealthy"] == []
    assert len(fake_runpod.requests_to(f"/pods/{ghost.id}/action")) == 1
    assert len(fake_runpod.requests_to(f"/pods/{ghost.id}", "DELETE")) == 1 + observes
