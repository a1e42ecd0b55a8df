"""RunPodBackend against the fake RunPod API: the pinned count, replacement, scale-down order, refusals, pause."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from scaler.policy import PAUSED, QUOTA_REACHED
from scaler.providers.base import Backend
from scaler.providers.runpod.backend import QUOTED_TEXT_LIMIT, RunPodBackend
from scaler.providers.runpod.client import RunPodAPIError, RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from standins.runpod import FakeRunPod

from ...conftest import ManualClock
from .conftest import GPU, pod_body

NAME = "comfy-test"


@pytest.fixture
async def backend(runpod: RunPodClient, fake: FakeRunPod, clock: ManualClock) -> AsyncIterator[RunPodBackend]:
    body = {k: v for k, v in pod_body().items() if k != "name"}
    backend = RunPodBackend(runpod, NAME, body, clock=clock, health=PodHealthProbe(fake.health_url))
    yield backend
    await backend.aclose()


def statuses(fake: FakeRunPod) -> list[str]:
    return sorted(pod.status for pod in fake.live_pods())


def test_has_every_method_of_the_backend_protocol() -> None:
    for name in ("observe", "apply", "pause", "resume", "aclose"):
        assert hasattr(Backend, name)
        assert inspect.iscoroutinefunction(getattr(RunPodBackend, name)), name


def test_rejects_bad_names_and_a_named_body(runpod: RunPodClient) -> None:
    with pytest.raises(ValueError, match="prefix"):
        RunPodBackend(runpod, "Comfy_Test", {})
    with pytest.raises(ValueError, match="name"):
        RunPodBackend(runpod, NAME, pod_body())


async def test_apply_pins_the_count(backend: RunPodBackend, fake: FakeRunPod) -> None:
    assert await backend.apply(3) is True
    view = await backend.observe()
    assert len(view.replicas) == 3 and view.status == "healthy"
    assert all(pod.name.startswith(f"{NAME}-") for pod in fake.pods.values())
    assert await backend.apply(3) is False  # already so: nothing written
    assert len(fake.requests_to("/pods", "POST")) == 3


async def test_replicas_carry_their_creation_time(backend: RunPodBackend, fake: FakeRunPod, clock: ManualClock) -> None:
    clock.now = time.time()  # the fake stamps createdAt with the real time: a start far ahead of the clock is no start
    await backend.apply(1)
    (replica,) = (await backend.observe()).replicas
    pod = next(iter(fake.pods.values()))
    assert replica.id == pod.id
    assert replica.started_at == pytest.approx(pod.created_at.timestamp(), abs=1)


async def test_nothing_is_touched_before_the_first_apply(
    backend: RunPodBackend, runpod: RunPodClient, fake: FakeRunPod
) -> None:
    for index in range(2):
        await runpod.create_pod(pod_body(name=f"{NAME}-0000000{index}"))
    view = await backend.observe()  # a restarted scaler reads what runs before deciding
    assert len(view.replicas) == 2 and len(fake.pods) == 2


async def test_other_pods_of_the_account_are_left_alone(
    backend: RunPodBackend, runpod: RunPodClient, fake: FakeRunPod
) -> None:
    for name in ("my-notebook", f"{NAME}-notours", f"{NAME}x-12345678"):
        await runpod.create_pod(pod_body(name=name))
    await backend.apply(0)
    assert len((await backend.observe()).replicas) == 0
    assert sorted(pod.name for pod in fake.pods.values()) == sorted(
        ["my-notebook", f"{NAME}-notours", f"{NAME}x-12345678"]
    )


async def test_scale_down_terminates_starting_pods_first_then_the_newest(
    backend: RunPodBackend, fake: FakeRunPod, clock: ManualClock
) -> None:
    fake.start_delay_s = 100
    await backend.apply(2)
    clock.advance(100)  # both running
    await backend.apply(3)  # a third one, still starting
    starting = [pod.id for pod in fake.live_pods() if pod.status != "RUNNING"]
    assert len(starting) == 1
    await backend.apply(2)
    assert starting[0] in fake.terminated
    assert statuses(fake) == ["RUNNING", "RUNNING"]
    await backend.apply(0)
    assert fake.live_pods() == []


async def test_scale_down_stops_idle_pods_before_busy_ones(
    backend: RunPodBackend, fake: FakeRunPod, clock: ManualClock
) -> None:
    fake.start_delay_s = 100
    await backend.apply(3)
    clock.advance(100)
    oldest, middle, newest = sorted(fake.live_pods(), key=lambda pod: pod.created_at)
    for pod in (oldest, newest):
        fake.set_health(pod.id, 200, {"status": "ok", "phase": "busy"})
    await backend.observe()  # the backend reads each pod's /health here
    await backend.apply(2)
    assert fake.requests_to(f"/pods/{middle.id}/action", "POST")  # idle, though not the newest
    assert not fake.requests_to(f"/pods/{newest.id}/action", "POST")
    assert not fake.requests_to(f"/pods/{oldest.id}/action", "POST")


async def test_scale_down_stops_the_container_before_terminating(backend: RunPodBackend, fake: FakeRunPod) -> None:
    await backend.apply(1)
    (pod_id,) = fake.pods
    await backend.apply(0)
    assert fake.requests_to(f"/pods/{pod_id}/action", "POST")[0].json == {"action": "stop"}
    assert fake.requests_to(f"/pods/{pod_id}", "DELETE")
    assert fake.terminated[pod_id].history[-2:] == ["EXITED", "TERMINATED"]


async def test_a_pod_still_stopping_is_terminated_by_the_next_observe(backend: RunPodBackend, fake: FakeRunPod) -> None:
    await backend.apply(1)
    (pod_id,) = fake.pods
    fake.fail_next(f"/pods/{pod_id}/action", 502, method="POST", after_effect=True, times=10)
    with pytest.raises(RunPodAPIError):
        await backend.apply(0)  # the stop took effect but every answer was lost: the pod is left EXITED
    assert pod_id in fake.pods and fake.pods[pod_id].status == "EXITED"
    view = await backend.observe()
    assert view.replicas == () and pod_id in fake.terminated


async def test_a_lost_stop_answer_is_retried_then_terminated(backend: RunPodBackend, fake: FakeRunPod) -> None:
    await backend.apply(1)
    (pod_id,) = fake.pods
    fake.fail_next(f"/pods/{pod_id}/action", 502, method="POST", after_effect=True)
    await backend.apply(0)  # the retried stop answers 409 (already EXITED): terminated at once
    assert pod_id in fake.terminated


async def test_scale_to_zero_stops_billing(backend: RunPodBackend, fake: FakeRunPod, clock: ManualClock) -> None:
    await backend.apply(2)
    clock.advance(60)
    await backend.apply(0)
    spent = fake.billed_usd()
    clock.advance(3600)
    assert fake.billed_usd() == spent == pytest.approx(2 * 60 * 0.69 / 3600, abs=1e-6)
    assert fake.pods == {}  # terminated, not stopped: no disk left to bill


async def test_a_pod_that_dies_is_replaced_at_the_next_observe(backend: RunPodBackend, fake: FakeRunPod) -> None:
    await backend.apply(2)
    dead = next(iter(fake.pods))
    fake.exit_pod(dead, "ERROR")
    view = await backend.observe()
    assert len(view.replicas) == 2 and dead not in {r.id for r in view.replicas}
    assert dead in fake.terminated


async def test_no_capacity_reports_quota_reached_until_a_create_succeeds(
    backend: RunPodBackend, fake: FakeRunPod
) -> None:
    fake.capacity[GPU] = 1
    await backend.apply(3)
    view = await backend.observe()
    assert view.status == QUOTA_REACHED and len(view.replicas) == 1
    assert "no longer any instances" in (backend.refusal or "")
    fake.capacity.clear()
    view = await backend.observe()
    assert view.status == "healthy" and len(view.replicas) == 3


async def test_spent_balance_reports_quota_reached(
    backend: RunPodBackend, fake: FakeRunPod, clock: ManualClock
) -> None:
    await backend.apply(1)
    fake.balance_usd = 0.01
    clock.advance(3600)
    await backend.apply(2)
    assert (await backend.observe()).status == QUOTA_REACHED
    assert (backend.refusal or "").startswith("402")


async def test_pause_terminates_everything_and_holds_zero(backend: RunPodBackend, fake: FakeRunPod) -> None:
    await backend.apply(2)
    await backend.pause()
    assert fake.pods == {}
    view = await backend.observe()
    assert view.status == PAUSED and view.replicas == ()
    await backend.apply(2)  # pinned again while paused: still nothing runs
    assert fake.pods == {}
    await backend.resume()
    assert len((await backend.observe()).replicas) == 2


async def test_observe_reads_once_when_nothing_needs_repair(backend: RunPodBackend, fake: FakeRunPod) -> None:
    await backend.apply(2)
    before = len(fake.requests_to("/pods", "GET"))
    await backend.observe()
    assert len(fake.requests_to("/pods", "GET")) == before + 1


async def test_a_failed_repair_does_not_fail_the_observation(backend: RunPodBackend, fake: FakeRunPod) -> None:
    await backend.apply(2)
    dead = next(iter(fake.pods))
    fake.exit_pod(dead)
    fake.fail_next(f"/pods/{dead}", 500, method="DELETE", times=4)  # every try of one observe (max_attempts 4)
    view = await backend.observe()
    assert len(view.replicas) == 1  # the dead pod is not counted; its replacement waits for the next observe
    assert len((await backend.observe()).replicas) == 2
    assert dead in fake.terminated


async def test_cost_per_hour_is_what_runpod_bills_for_the_live_pods(backend: RunPodBackend) -> None:
    await backend.apply(3)
    await backend.observe()
    assert backend.cost_per_hour == pytest.approx(3 * 0.69)


async def test_price_per_hour_comes_from_the_catalogue(backend: RunPodBackend) -> None:
    assert await backend.price_per_hour() == 0.69


async def test_negative_count_is_refused(backend: RunPodBackend) -> None:
    with pytest.raises(ValueError):
        await backend.apply(-1)


# --- /health through RunPod's proxy ------------------------------------------------------------------

UNHEALTHY = {"status": "unhealthy", "reason": "ComfyUI process exited unexpectedly with code 1"}


async def test_a_pod_unhealthy_three_probes_in_a_row_is_replaced(backend: RunPodBackend, fake: FakeRunPod) -> None:
    await backend.apply(1)
    await backend.observe()
    (sick,) = fake.pods
    fake.set_health(sick, 503, UNHEALTHY)
    for _ in range(2):
        assert {r.id for r in (await backend.observe()).replicas} == {sick}
    view = await backend.observe()
    assert sick in fake.terminated and fake.terminated[sick].history[-2:] == ["EXITED", "TERMINATED"]
    assert len(view.replicas) == 1 and view.replicas[0].id != sick


async def test_the_reason_an_unhealthy_pod_gives_is_logged_cut(backend: RunPodBackend, fake: FakeRunPod) -> None:
    """A pod's /health reason was logged whole: a pod answering 60,000 characters within the answer's 64 KiB limit
    wrote a 60,000-character log line at every judgement. It is cut to QUOTED_TEXT_LIMIT."""
    await backend.apply(1)
    (sick,) = fake.pods
    fake.set_health(sick, 503, {"status": "unhealthy", "reason": "ComfyUI exited: " + "x" * 60_000})
    with capture_logs() as logs:
        for _ in range(3):
            await backend.observe()
    (judged,) = [e for e in logs if e["event"] == "runpod_pod_unhealthy"]
    assert judged["reason"].startswith("ComfyUI exited: x") and len(judged["reason"]) == QUOTED_TEXT_LIMIT


async def test_a_healthy_answer_resets_the_count(backend: RunPodBackend, fake: FakeRunPod) -> None:
    await backend.apply(1)
    (pod_id,) = fake.pods
    for answer in [UNHEALTHY, UNHEALTHY, {"status": "busy", "phase": "busy"}, UNHEALTHY, UNHEALTHY]:
        fake.set_health(pod_id, 200 if answer["status"] == "busy" else 503, answer)
        await backend.observe()
    assert pod_id in fake.pods
    assert backend.health.phase[pod_id] == "busy"


async def test_proxy_errors_and_starting_pods_are_not_counted(
    backend: RunPodBackend, fake: FakeRunPod, clock: ManualClock
) -> None:
    fake.start_delay_s = 100
    await backend.apply(1)
    (pod_id,) = fake.pods
    fake.set_health(pod_id, 503, UNHEALTHY)
    for _ in range(5):
        await backend.observe()  # STARTING: not probed
    assert fake.proxy_authorizations == []
    clock.advance(100)
    fake.set_health(pod_id, 502, {"status": "gateway"})
    for _ in range(5):
        await backend.observe()  # an answer that says nothing about the worker
    assert pod_id in fake.pods and len(fake.proxy_authorizations) == 5
    for status, body in ((503, {"status": "not_ready", "reason": "draining: shutting down"}), (500, UNHEALTHY)):
        fake.set_health(pod_id, status, body)  # /ready's 503, or "unhealthy" on a 500: no judgement
        for _ in range(3):
            await backend.observe()
    assert pod_id in fake.pods and len(fake.proxy_authorizations) == 11


async def test_the_probe_never_carries_the_api_key(backend: RunPodBackend, fake: FakeRunPod) -> None:
    await backend.apply(2)
    await backend.observe()
    assert len(fake.proxy_authorizations) == 2 and set(fake.proxy_authorizations) == {None}


async def test_pods_are_probed_but_not_touched_before_the_first_apply(
    backend: RunPodBackend, runpod: RunPodClient, fake: FakeRunPod
) -> None:
    """Pods found at a start are asked their /health, so the ones serving count as ready at the first apply (a
    restarted fleet drained them as 0 ready); none is stopped before the backend is told a count."""
    serving = await runpod.create_pod(pod_body(name=f"{NAME}-00000000"))
    sick = await runpod.create_pod(pod_body(name=f"{NAME}-11111111"))
    fake.set_health(sick.id, 503, UNHEALTHY)
    for _ in range(4):
        view = await backend.observe()
    assert view.ready == 1 and backend.health.phase == {serving.id: "idle"}
    assert set(fake.pods) == {serving.id, sick.id} and fake.requests_to(f"/pods/{sick.id}/action") == []


@pytest.mark.parametrize("before_apply", [3, 4])
async def test_unhealthy_answers_before_the_first_apply_count_after_it(
    backend: RunPodBackend, runpod: RunPodClient, fake: FakeRunPod, before_apply: int
) -> None:
    """Judged at the third answer before the first apply, when the backend touches nothing, the pod's count was
    dropped all the same: it needed three more unhealthy answers after the apply (two after four)."""
    sick = await runpod.create_pod(pod_body(name=f"{NAME}-11111111"))
    fake.set_health(sick.id, 503, UNHEALTHY)
    for _ in range(before_apply):
        await backend.observe()
    assert sick.id in fake.pods and fake.requests_to(f"/pods/{sick.id}/action") == []
    await backend.apply(1)
    view = await backend.observe()
    assert sick.id in fake.terminated and [r.id for r in view.replicas] != [sick.id]

