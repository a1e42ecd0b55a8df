"""A pod's stop answered 204 (no body), one of the answers RunPod documents for POST /pods/{id}/action."""

from __future__ import annotations

from structlog.testing import capture_logs

from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from standins.runpod import FakeRunPod

from .conftest import API_KEY, pod_body


async def test_a_stop_answered_204_is_taken_and_the_pod_terminated_once_stopped(fake: FakeRunPod, openapi) -> None:
    # Before: the 204 was read as a broken answer (RunPodAPIError "204 ... non-JSON answer"): a scale-down RunPod
    # carried out raised, with a runpod_pod_call_failed warning per pod (2 of 2). Now the pod is read once for its
    # status and the stop goes on as after a 200.
    assert "204" in openapi["paths"]["/v2/pods/{id}/action"]["post"]["responses"]
    client = RunPodClient(API_KEY, base_url=fake.url, max_attempts=1)
    body = {key: value for key, value in pod_body().items() if key != "name"}
    backend = RunPodBackend(client, "comfy-test", body, health=PodHealthProbe(fake.health_url))
    try:
        await backend.apply(2)
        for pod in fake.live_pods():
            fake.fail_next(f"/pods/{pod.id}/action", 204, method="POST", after_effect=True)
        with capture_logs() as logs:
            assert await backend.apply(0) is True
            view = await backend.observe()
    finally:
        await backend.aclose()
    assert [entry for entry in logs if entry["log_level"] in ("warning", "error")] == []
    assert view.replicas == () and fake.pods == {}, "stopped, then terminated"
