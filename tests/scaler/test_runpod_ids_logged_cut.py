"""Pod ids are RunPod's answer, of any length: logged cut, as its statuses are, against the fake RunPod on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from demo.providers import POD_BODY
from scaler.providers.runpod.backend import QUOTED_TEXT_LIMIT, RunPodBackend
from scaler.providers.runpod.client import ERROR_TEXT_LIMIT, RunPodAPIError, RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from standins.runpod import FakeRunPod

from .conftest import DEPLOYMENT, RUNPOD_KEY

LONG_ID = "p" * 60_000


@pytest.fixture
async def backend(fake_runpod: FakeRunPod) -> AsyncIterator[RunPodBackend]:
    client = RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url, max_attempts=1)
    backend = RunPodBackend(client, DEPLOYMENT, POD_BODY, health=PodHealthProbe(fake_runpod.health_url))
    yield backend
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
