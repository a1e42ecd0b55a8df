"""A repair whose answer is past the client's limit is logged, not raised: the observation stands."""

from __future__ import annotations

from structlog.testing import capture_logs

from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from standins.runpod import FakeRunPod

from .conftest import API_KEY, pod_body

LIMIT_BYTES = 64 * 1024


async def test_a_delete_answered_past_the_limit_leaves_the_observation_standing(fake: FakeRunPod) -> None:
    # Before: a dead pod's DELETE answered with more than the client reads (AnswerTooLarge) ended the observe, the
    # pods it had read lost: RunPod counted unreadable for the tick, as a failed listing. A stop's or a create's
    # RunPodAPIError was logged (runpod_reconcile_failed) and the observation stood; now this failure too.
    client = RunPodClient(API_KEY, base_url=fake.url, max_attempts=1, answer_limit_bytes=LIMIT_BYTES)
    body = {key: value for key, value in pod_body().items() if key != "name"}
    backend = RunPodBackend(client, "comfy-test", body, health=PodHealthProbe(fake.health_url))
    try:
        await backend.apply(2)
        dead, kept = fake.live_pods()
        fake.exit_pod(dead.id)
        fake.fail_next(f"/pods/{dead.id}", 200, method="DELETE", after_effect=True, body={"x": "y" * LIMIT_BYTES})
        with capture_logs() as logs:
            view = await backend.observe()
    finally:
        await backend.aclose()
    assert kept.id in {replica.id for replica in view.replicas}
    [failed] = [entry for entry in logs if entry["event"] == "runpod_reconcile_failed"]
    assert f"more than {LIMIT_BYTES} bytes" in failed["error"]
