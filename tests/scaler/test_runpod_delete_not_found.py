"""A dead pod that RunPod still lists while its DELETE answers 404 (not found), against the fake RunPod on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from demo.providers import POD_BODY
from scaler.providers.runpod.backend import TERMINATE_LAG_S, TERMINATE_RETRY_S, RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from standins.runpod import FakeRunPod

from ..conftest import ManualClock
from .conftest import DEPLOYMENT, RUNPOD_KEY

TICK_S = 15.0


@pytest.fixture
async def clocked(fake_runpod: FakeRunPod, clock: ManualClock) -> AsyncIterator[RunPodBackend]:
    """The backend on the test's clock, holding one pod."""
    client = RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url, max_attempts=1)
    backend = RunPodBackend(client, DEPLOYMENT, POD_BODY, clock=clock, health=PodHealthProbe(fake_runpod.health_url))
    await backend.apply(1)
    yield backend
    await backend.aclose()


async def test_a_dead_pod_still_listed_whose_delete_answers_404_is_said_once_and_asked_less_often(
    clocked: RunPodBackend, fake_runpod: FakeRunPod, clock: ManualClock
):
    # Before: a 404 was taken as "already gone" and nothing was remembered, so the pod RunPod still listed was
    # DELETEd again at every observe, for ever, each with a runpod_pod_replaced warning (61 of each in 15 min at
    # 15 s), and never said as an error. Now as a DELETE accepted and not carried out: one runpod_pod_replaced, one
    # runpod_pod_not_terminated error after TERMINATE_LAG_S, then a DELETE every TERMINATE_RETRY_S.
    [pod] = fake_runpod.live_pods()
    fake_runpod.exit_pod(pod.id)
    fake_runpod.fail_next(f"/pods/{pod.id}", 404, method="DELETE", times=10_000)
    with capture_logs() as logs:
        for _ in range(int((TERMINATE_LAG_S + TERMINATE_RETRY_S) // TICK_S) + 1):
            await clocked.observe()
            clock.advance(TICK_S)
    assert pod.id in fake_runpod.pods, "RunPod still lists the pod"
    deletes = len(fake_runpod.requests_to(f"/pods/{pod.id}", "DELETE"))
    assert deletes == TERMINATE_LAG_S // TICK_S + 2, "past the bound, asked once every TERMINATE_RETRY_S"
    said = [(entry["event"], entry["log_level"]) for entry in logs if entry.get("pod") == pod.id]
    assert said == [("runpod_pod_replaced", "warning"), ("runpod_pod_not_terminated", "error")]
    [not_terminated] = [entry for entry in logs if entry["event"] == "runpod_pod_not_terminated"]
    assert not_terminated["delete_answer"] == "404 not found" and "console" in not_terminated["hint"]
