"""RunPod's pods are asked for at once, a few at a time, against the fake RunPod on loopback.

They were asked for one after another: a wake-up from 0 to 10 pods at 5 s per call took 55 s before the last pod
was even asked for. The fake holds each create until released: code that sends them in turn never gets past the
first, cut by the test's timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import scaler
from demo.providers import POD_BODY
from scaler.policy import QUOTA_REACHED
from scaler.providers.runpod.backend import CALL_CONCURRENCY, QUOTED_TEXT_LIMIT, RunPodBackend
from scaler.providers.runpod.client import ERROR_TEXT_LIMIT, RunPodAPIError, RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from standins.runpod import FakeRunPod

from ..conftest import ManualClock, wait_for
from .conftest import CALL_CUT_OFF_S, DEPLOYMENT, RUNPOD_KEY

PODS = CALL_CONCURRENCY + 2
GPU = POD_BODY["gpu"]["id"]
SCALER_CODE = Path(scaler.__file__).parent
LONG_ID = "p" * 60_000  # a pod id as RunPod may answer it


def backend_of(fake: FakeRunPod, clock: ManualClock | None = None) -> RunPodBackend:
    client = RunPodClient(RUNPOD_KEY, base_url=fake.url, max_attempts=1)
    return RunPodBackend(client, DEPLOYMENT, POD_BODY, health=PodHealthProbe(fake.health_url),
                         **({"clock": clock} if clock is not None else {}))


@pytest.fixture
async def backend(fake_runpod: FakeRunPod) -> AsyncIterator[RunPodBackend]:
    backend = backend_of(fake_runpod)
    yield backend
    await backend.aclose()


def creates(fake: FakeRunPod) -> int:
    return len(fake.requests_to("/pods", "POST"))


def events(logs: list[dict], event: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == event]


async def test_a_wake_up_asks_for_the_pods_at_once_never_more_than_the_bound(
    backend: RunPodBackend, fake_runpod: FakeRunPod
):
    fake_runpod.hold_writes()
    applying = asyncio.create_task(backend.apply(PODS))
    async with asyncio.timeout(10):  # one at a time, the second create is never sent: fails here, does not hang
        await wait_for(lambda: fake_runpod.in_flight >= CALL_CONCURRENCY)
    await asyncio.sleep(0.2)  # time for a request past the bound to arrive, if one were sent
    assert fake_runpod.in_flight == creates(fake_runpod) == CALL_CONCURRENCY, "more pods asked at once than the bound"
    fake_runpod.release_writes()
    async with asyncio.timeout(10):
        assert await applying is True
    assert len(fake_runpod.live_pods()) == creates(fake_runpod) == PODS
    assert fake_runpod.most_in_flight == CALL_CONCURRENCY
    assert len((await backend.observe()).replicas) == PODS and creates(fake_runpod) == PODS


async def test_a_refusal_asks_for_no_pod_beyond_those_in_flight_and_is_logged_once(
    backend: RunPodBackend, fake_runpod: FakeRunPod
):
    fake_runpod.capacity[GPU] = 0
    with capture_logs() as logs:
        assert await backend.apply(PODS) is False
    assert creates(fake_runpod) == CALL_CONCURRENCY, "the 2 waiting for a slot were asked for after the refusals"
    assert len(events(logs, "runpod_create_refused")) == 1 and (backend.refusal or "").startswith("400")
    assert backend._unlisted == {}, "a refused create made nothing: its name is not counted"
    # While RunPod refuses, each observe asks one create whether it still does, not the 12 missing.
    assert (await backend.observe()).status == QUOTA_REACHED and creates(fake_runpod) == CALL_CONCURRENCY + 1
    fake_runpod.capacity.clear()
    with capture_logs() as logs:
        view = await backend.observe()
    assert view.status == "healthy" and len(view.replicas) == PODS
    assert len(events(logs, "runpod_create_accepted_again")) == 1 and not events(logs, "runpod_create_refused")


async def test_capacity_for_some_of_the_pods_asked_at_once_keeps_them_and_reports_the_rest_refused(
    backend: RunPodBackend, fake_runpod: FakeRunPod
):
    fake_runpod.capacity[GPU] = 3
    with capture_logs() as logs:
        assert await backend.apply(5) is True
    assert creates(fake_runpod) == 5 and len(fake_runpod.live_pods()) == 3
    # Two refusals and three acceptances, answered in any order: one refusal line, and the refusal stands.
    assert [entry["event"] for entry in logs if entry["event"].startswith("runpod_create")] == ["runpod_create_refused"]
    view = await backend.observe()
    assert view.status == QUOTA_REACHED and len(view.replicas) == 3


async def test_a_create_refused_outright_forgets_its_name_and_one_cut_off_keeps_it(wall: ManualClock):
    """The listing lags a minute behind: a name asked for and not listed counts as a pod. A 4xx that made nothing
    must not count (the pod is never made), a create cut off after it landed must (it would be made twice)."""
    async with FakeRunPod(RUNPOD_KEY, network_volumes=("vol-demo",), clock=wall, listing_lag_s=60.0) as fake:
        backend = backend_of(fake, wall)
        try:
            fake.fail_next("/pods", 409, method="POST")
            with capture_logs() as logs, pytest.raises(RunPodAPIError) as raised:
                await backend.apply(3)
            assert raised.value.status == 409
            made = {pod.name for pod in fake.pods.values()}
            asked = {request.json["name"] for request in fake.requests_to("/pods", "POST")}
            assert len(made) == 2 and len(asked) == 3 and set(backend._unlisted) == made
            [failed] = events(logs, "runpod_pod_call_failed")
            assert [failed["pod"]] == list(asked - made) and "RunPod API error 409 on POST /pods" in failed["error"]
            fake.delay_next("/pods", CALL_CUT_OFF_S + 1.5, method="POST")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(CALL_CUT_OFF_S):  # the other create must land within it
                    await backend.apply(4)  # the missing one asked again and one more: one answers too late
            running = [task for task in asyncio.all_tasks()
                       if SCALER_CODE in Path(task.get_coro().cr_code.co_filename).parents]
            assert running == [], "calls left running after the apply was cancelled"
            assert len(fake.pods) == len(backend._unlisted) == 4, "both landed, both counted"
            await backend.observe()
            assert creates(fake) == 5 and len(fake.pods) == 4, "nothing made twice while the listing lags"
        finally:
            await backend.aclose()


def logged_lengths(logs: list[dict], event: str) -> list[int]:
    return [len(entry["pod"]) for entry in logs if entry["event"] == event]


async def test_the_id_a_create_answers_is_logged_cut(backend: RunPodBackend, fake_runpod: FakeRunPod):
    # Before: runpod_pod_created logged the id of POST /pods's answer whole: a 60,000-character line.
    await backend.apply(1)
    [pod] = fake_runpod.live_pods()
    fake_runpod.fail_next("/pods", 201, method="POST", body={**fake_runpod._pod_json(pod), "id": LONG_ID})
    with capture_logs() as logs:
        await backend.apply(2)
    assert logged_lengths(logs, "runpod_pod_created") == [QUOTED_TEXT_LIMIT]


async def test_the_id_of_a_pod_whose_call_failed_is_logged_cut(backend: RunPodBackend, fake_runpod: FakeRunPod):
    # Before: runpod_pod_call_failed logged the listed id whole, and its error the DELETE's path with it in full:
    # two 60,000-character fields in one line.
    await backend.apply(1)
    [pod] = fake_runpod.live_pods()
    fake_runpod.exit_pod(pod.id)
    listed = {**fake_runpod._pod_json(pod), "id": LONG_ID}
    fake_runpod.fail_next("/pods", 200, method="GET", times=10, body={"pods": [listed]})
    with capture_logs() as logs, pytest.raises(RunPodAPIError):
        await backend.apply(1)
    [failed] = [entry for entry in logs if entry["event"] == "runpod_pod_call_failed"]
    assert len(failed["pod"]) == QUOTED_TEXT_LIMIT
    assert len(failed["error"]) < 2_000, failed["error"][:300]


async def test_the_id_of_a_pod_found_after_a_lost_create_answer_is_logged_cut(fake_runpod: FakeRunPod):
    # Before: runpod_create_confirmed_by_listing logged the listed id whole.
    name = f"{DEPLOYMENT}-0000000a"
    async with RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url, max_attempts=2) as client:
        made = await client.create_pod({**POD_BODY, "name": f"{DEPLOYMENT}-0000000b"})
        listed = {**fake_runpod._pod_json(fake_runpod.pods[made.id]), "id": LONG_ID, "name": name}
        fake_runpod.fail_next("/pods", 500, method="POST")
        fake_runpod.fail_next("/pods", 200, method="GET", body={"pods": [listed]})
        with capture_logs() as logs:
            await client.create_pod({**POD_BODY, "name": name})
    assert logged_lengths(logs, "runpod_create_confirmed_by_listing") == [ERROR_TEXT_LIMIT]
