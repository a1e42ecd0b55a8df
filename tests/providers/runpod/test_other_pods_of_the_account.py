"""GET /pods lists every pod of the account: another deployment's, of whatever shape, is no reason to fail."""

from __future__ import annotations

from collections.abc import Callable

from scaler.providers.base import MAX_LISTED_REPLICAS
from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from scaler.wiring import stop_provider
from standins.runpod import FakeRunPod

from ...conftest import ManualClock
from .conftest import pod_body

HAND_MADE = [
    {"id": "hand-made", "name": "my pod", "status": "RUNNING", "cost": "0.69"},  # cost not a number
    {"name": "other-tool-0123abcd", "status": "RUNNING", "gpu": "RTX 4090"},  # no id, gpu not an object
    {"id": "unnamed", "name": "", "status": "EXITED", "cost": -1},
]


def backend(fake: FakeRunPod, make_client: Callable[..., RunPodClient], clock: ManualClock) -> RunPodBackend:
    body = {k: v for k, v in pod_body().items() if k != "name"}
    return RunPodBackend(make_client(), "comfy", body, clock=clock, health=PodHealthProbe(fake.health_url))


async def test_pods_of_other_deployments_of_any_shape_neither_hide_ours_nor_keep_the_kill_switch_from_them(
    fake: FakeRunPod, make_client: Callable[..., RunPodClient], clock: ManualClock
) -> None:
    """Before: every pod listed was read whole, ours or not: one pod made by hand with `cost` a string failed the
    whole GET /pods (`pods[0].cost='0.69' is not a number`), so the backend saw none of its own pods and the kill
    switch answered NOT STOPPED with both of them running, billed."""
    fake.other_pods = HAND_MADE
    runpod = backend(fake, make_client, clock)
    try:
        await runpod.apply(2)
        assert len((await runpod.observe()).replicas) == 2
        result = await stop_provider("runpod", runpod, timeout_s=10, poll_s=0.05)
    finally:
        await runpod.aclose()
    assert result.stopped, result.detail
    assert fake.live_pods() == []


async def test_a_busy_account_is_no_implausible_list_of_ours(
    fake: FakeRunPod, make_client: Callable[..., RunPodClient], clock: ManualClock
) -> None:
    """MAX_LISTED_REPLICAS bounds this deployment's pods, not the account's: more pods of other deployments than
    that failed every read."""
    fake.other_pods = [{"id": f"o{n}", "name": f"other-{n:08x}", "status": "RUNNING", "cost": 0.69}
                       for n in range(MAX_LISTED_REPLICAS + 1)]
    runpod = backend(fake, make_client, clock)
    try:
        await runpod.apply(1)
        assert len((await runpod.observe()).replicas) == 1
    finally:
        await runpod.aclose()
