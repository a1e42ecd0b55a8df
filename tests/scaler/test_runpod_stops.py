"""RunPod's pods are stopped and terminated at once, a few at a time, against the fake RunPod on loopback.

They were stopped one after another: with 10 pods and 1 s per call, `pause()` (the kill switch) took 20 s, and at
5 s per call it ran past the kill switch's 120-s bound and left pods billing. The fake holds each stop until the
number asked for are in flight at once: code that sends them in turn waits for ever, cut by the test's timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import scaler
from demo.providers import POD_BODY
from scaler.providers.runpod.backend import (
    CALL_CONCURRENCY,
    QUOTED_TEXT_LIMIT,
    STOP_LAG_S,
    TERMINATE_LAG_S,
    TERMINATE_RETRY_S,
    RunPodBackend,
)
from scaler.providers.runpod.client import RunPodAPIError, RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from standins.runpod import FakeRunPod

from ..conftest import ManualClock, wait_for
from .conftest import DEPLOYMENT, RUNPOD_KEY

PODS = CALL_CONCURRENCY + 2
OBSERVE_EVERY_S = 15.0
SCALER_CODE = Path(scaler.__file__).parent
UNHEALTHY = {"status": "unhealthy", "reason": "ComfyUI process exited unexpectedly with code 1"}


@pytest.fixture
async def backend(fake_runpod: FakeRunPod) -> AsyncIterator[RunPodBackend]:
    client = RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url, max_attempts=1)
    backend = RunPodBackend(client, DEPLOYMENT, POD_BODY, health=PodHealthProbe(fake_runpod.health_url))
    yield backend
    await backend.aclose()


@pytest.fixture
async def clocked(fake_runpod: FakeRunPod, clock: ManualClock) -> AsyncIterator[RunPodBackend]:
    """The backend on the test's clock, holding one pod."""
    client = RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url, max_attempts=1)
    backend = RunPodBackend(client, DEPLOYMENT, POD_BODY, clock=clock, health=PodHealthProbe(fake_runpod.health_url))
    await backend.apply(1)
    yield backend
    await backend.aclose()


def stops(fake: FakeRunPod) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/action") and r.json == {"action": "stop"})


async def test_pause_stops_the_pods_at_once_never_more_than_the_bound(backend: RunPodBackend, fake_runpod):
    await backend.apply(PODS)
    fake_runpod.hold_writes()
    pausing = asyncio.create_task(backend.pause())
    async with asyncio.timeout(10):  # one at a time, the second stop is never sent: fails here, does not hang
        await wait_for(lambda: fake_runpod.in_flight >= CALL_CONCURRENCY)
    await asyncio.sleep(0.2)  # time for a request past the bound to arrive, if one were sent
    assert fake_runpod.in_flight == CALL_CONCURRENCY, "more pods stopped at once than the bound"
    fake_runpod.release_writes()
    async with asyncio.timeout(10):
        await pausing
    assert fake_runpod.live_pods() == [] and fake_runpod.pods == {}, "every pod stopped, then terminated"
    assert fake_runpod.most_in_flight == CALL_CONCURRENCY
    assert stops(fake_runpod) == PODS


async def test_one_pod_refusing_its_stop_leaves_the_others_stopped_and_the_error_raised(
    backend: RunPodBackend, fake_runpod: FakeRunPod
):
    await backend.apply(4)
    refusing = next(iter(fake_runpod.pods))
    fake_runpod.pods[refusing].created_at = datetime.now(UTC) + timedelta(hours=1)  # the newest: stopped first
    fake_runpod.fail_next(f"/pods/{refusing}/action", 400, method="POST")
    with pytest.raises(RunPodAPIError) as raised:
        await backend.pause()
    assert raised.value.status == 400 and f"/pods/{refusing}/action" in raised.value.request
    assert list(fake_runpod.pods) == [refusing], "the other three stopped and terminated"
    assert stops(fake_runpod) == 4
    await backend.pause()  # and the next reconcile stops the one left
    assert fake_runpod.pods == {}


async def test_each_pod_refusing_its_stop_is_logged_not_only_the_first(backend: RunPodBackend, fake_runpod):
    """Only the first failure was raised, and so logged: a second pod left running (billed) was named nowhere."""
    await backend.apply(4)
    refusing = sorted(fake_runpod.pods)[:2]
    for pod_id in refusing:
        fake_runpod.fail_next(f"/pods/{pod_id}/action", 400, method="POST")
    with capture_logs() as logs, pytest.raises(RunPodAPIError):
        await backend.pause()
    failed = [entry for entry in logs if entry["event"] == "runpod_pod_call_failed"]
    assert sorted(entry["pod"] for entry in failed) == refusing
    assert all(entry["log_level"] == "warning" for entry in failed)
    for entry in failed:
        assert f"RunPod API error 400 on POST /pods/{entry['pod']}/action" in entry["error"]
    assert RUNPOD_KEY not in repr(logs)
    assert sorted(fake_runpod.pods) == refusing, "the other two stopped and terminated"


async def test_a_pause_cancelled_mid_stop_leaves_no_call_running(backend: RunPodBackend, fake_runpod: FakeRunPod):
    """The kill switch's 120-s bound and the tick's deadline cancel the pause: every stop in flight must end with it,
    not run on unseen (and terminate pods after the caller was told it gave up)."""
    await backend.apply(PODS)
    fake_runpod.hold_writes()
    pausing = asyncio.create_task(backend.pause())
    async with asyncio.timeout(10):
        await wait_for(lambda: fake_runpod.in_flight >= CALL_CONCURRENCY)
    pausing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pausing
    running = [task for task in asyncio.all_tasks() if SCALER_CODE in Path(task.get_coro().cr_code.co_filename).parents]
    assert running == [], "calls left running after the pause was cancelled"
    sent = len(fake_runpod.requests)
    fake_runpod.release_writes()
    await wait_for(lambda: fake_runpod.in_flight == 0)
    assert len(fake_runpod.requests) == sent, "no stop or terminate sent after the cancellation"
    assert stops(fake_runpod) == CALL_CONCURRENCY


async def test_pods_unhealthy_together_are_replaced_at_once(backend: RunPodBackend, fake_runpod: FakeRunPod):
    await backend.apply(3)
    await backend.observe()
    sick = list(fake_runpod.pods)
    for pod_id in sick:
        fake_runpod.set_health(pod_id, 503, UNHEALTHY)
    for _ in range(2):
        await backend.observe()
    fake_runpod.hold_writes(until_in_flight=len(sick))
    async with asyncio.timeout(10):  # one at a time, the first stop waits for ever for the others
        view = await backend.observe()
    assert set(sick) <= set(fake_runpod.terminated)
    assert len(view.replicas) == 3 and not set(sick) & {r.id for r in view.replicas}


async def test_a_pod_whose_stop_is_accepted_and_never_happens_is_terminated(
    clocked: RunPodBackend, fake_runpod: FakeRunPod, clock: ManualClock
):
    # Before: RunPod answered each stop with the pod still RUNNING and never stopped it; asked again at every observe,
    # the pod ran on, billed, for as long as the scaler ran (0.69 $/h for ever). Now terminated STOP_LAG_S on.
    [pod] = fake_runpod.live_pods()
    fake_runpod.fail_next(f"/pods/{pod.id}/action", 200, times=1000, body=fake_runpod._pod_json(pod))
    started = clock()
    with capture_logs() as logs:
        await clocked.apply(0)
        while clock() - started <= STOP_LAG_S:
            clock.advance(15.0)
            await clocked.observe()
    assert fake_runpod.live_pods() == []
    assert [entry["pod"] for entry in logs if entry["event"] == "runpod_pod_stop_not_taken"] == [pod.id]


async def test_a_dead_pod_whose_delete_is_accepted_and_never_happens_is_said_once_and_asked_less_often(
    clocked: RunPodBackend, fake_runpod: FakeRunPod, clock: ManualClock
):
    # Before: RunPod answered each DELETE of an EXITED pod and kept the pod; asked again at every observe, with a
    # warning each time and no end, its disk was billed, never said as an error (5 760 DELETEs a day at 15 s).
    [pod] = fake_runpod.live_pods()

    def deletes() -> int:
        return len(fake_runpod.requests_to(f"/pods/{pod.id}", "DELETE"))

    fake_runpod.exit_pod(pod.id)
    fake_runpod.fail_next(f"/pods/{pod.id}", 200, method="DELETE", times=10_000, body={})
    with capture_logs() as logs:
        for _ in range(int(TERMINATE_LAG_S // 15) + 1):  # until the bound
            await clocked.observe()
            clock.advance(15.0)
        asked_within_the_bound = deletes()
        for _ in range(int(TERMINATE_RETRY_S // 15)):  # one retry's span past it
            await clocked.observe()
            clock.advance(15.0)
    assert pod.id in fake_runpod.pods, "RunPod kept the pod"
    assert asked_within_the_bound == TERMINATE_LAG_S // 15 + 1
    assert deletes() - asked_within_the_bound == 1, "past the bound, asked once every TERMINATE_RETRY_S"
    said = [entry for entry in logs if entry["event"] == "runpod_pod_not_terminated"]
    assert [(entry["pod"], entry["log_level"]) for entry in said] == [(pod.id, "error")]
    assert "console" in said[0]["hint"]


async def test_a_live_pod_whose_stop_and_delete_are_accepted_and_never_happen_is_said_once_as_an_error(
    clocked: RunPodBackend, fake_runpod: FakeRunPod, clock: ManualClock
):
    # Before: RunPod took neither the stop nor the DELETE of a RUNNING pod: from STOP_LAG_S on, a DELETE and a
    # runpod_pod_stop_not_taken warning at every observe (62 in 17 min here), never an error, the GPU billed for ever.
    [pod] = fake_runpod.live_pods()
    fake_runpod.fail_next(f"/pods/{pod.id}/action", 200, times=10_000, body=fake_runpod._pod_json(pod))
    fake_runpod.fail_next(f"/pods/{pod.id}", 200, method="DELETE", times=10_000, body={})
    with capture_logs() as logs:
        await clocked.apply(0)
        for _ in range(int((STOP_LAG_S + TERMINATE_LAG_S + TERMINATE_RETRY_S) // 15) + 1):
            clock.advance(15.0)
            await clocked.observe()
    assert [p.id for p in fake_runpod.live_pods()] == [pod.id], "RunPod kept the pod"
    events = [(entry["event"], entry["log_level"]) for entry in logs if entry.get("pod") == pod.id]
    assert events.count(("runpod_pod_stop_not_taken", "warning")) == 1
    assert events.count(("runpod_pod_not_terminated", "error")) == 1
    deletes = len(fake_runpod.requests_to(f"/pods/{pod.id}", "DELETE"))
    assert deletes == TERMINATE_LAG_S // 15 + 2, "past the bound, asked once every TERMINATE_RETRY_S"
    # Before: runpod_pod_stopping at every observe for as long as the pod stayed live (70 lines in 17 min); now once,
    # when its stop is first asked.
    said = [entry for entry in logs if entry["event"] == "runpod_pod_stopping"]
    assert [(entry["pod"], entry["status"]) for entry in said] == [(pod.id, "RUNNING")]


async def test_a_pod_the_scaler_stopped_that_ends_exited_is_not_said_replaced(fake_runpod: FakeRunPod):
    # Before: RunPod answered the stop with the pod still RUNNING; the next observe found it EXITED, the end asked
    # for, and warned runpod_pod_replaced though nothing replaced it: a false warning at every such scale-down.
    client = RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url, max_attempts=1)
    backend = RunPodBackend(client, DEPLOYMENT, POD_BODY, health=PodHealthProbe(fake_runpod.health_url))
    try:
        await backend.apply(2)
        stopped, kept = fake_runpod.live_pods()
        stopped.created_at = datetime.now(UTC) + timedelta(hours=1)  # the newest: stopped first
        fake_runpod.fail_next(f"/pods/{stopped.id}/action", 200, body=fake_runpod._pod_json(stopped))
        with capture_logs() as logs:
            await backend.apply(1)
            fake_runpod.exit_pod(stopped.id)  # the stop carried out after RunPod answered it
            fake_runpod.exit_pod(kept.id)  # and a pod whose container ended on its own
            await backend.observe()
    finally:
        await backend.aclose()
    assert stopped.id not in fake_runpod.pods and kept.id not in fake_runpod.pods, "both terminated"
    warned = [(entry["event"], entry["pod"]) for entry in logs if entry["log_level"] == "warning"]
    assert warned == [("runpod_pod_replaced", kept.id)]


async def test_what_a_pod_says_of_itself_is_logged_cut_when_it_is_stopped(
    clocked: RunPodBackend, fake_runpod: FakeRunPod, clock: ManualClock
):
    # Before: runpod_pod_stopping logged the phase the pod's /health gave (up to 64 KiB) and runpod_pod_stop_not_taken
    # the status RunPod listed, whole: a 60,000-character line each. Now cut to QUOTED_TEXT_LIMIT, as the reason.
    [pod] = fake_runpod.live_pods()
    fake_runpod.set_health(pod.id, 200, {"status": "idle", "phase": "idle" + "p" * 60_000})
    await clocked.observe()
    listed = {**fake_runpod._pod_json(pod), "status": "RUNNING" + "S" * 60_000}
    fake_runpod.fail_next("/pods", 200, method="GET", times=1000, body={"pods": [listed]})
    # Its stop accepted and never carried out: stopped, the pod listed on is one RunPod no longer finds, not counted.
    fake_runpod.fail_next(f"/pods/{pod.id}/action", 200, times=1000, body=fake_runpod._pod_json(pod))
    started = clock()
    with capture_logs() as logs:
        await clocked.apply(0)
        while clock() - started <= STOP_LAG_S:
            clock.advance(15.0)
            await clocked.observe()
    [stopping] = [entry for entry in logs if entry["event"] == "runpod_pod_stopping"]
    not_taken = [entry for entry in logs if entry["event"] == "runpod_pod_stop_not_taken"]
    assert stopping["phase"].startswith("idlep") and len(stopping["phase"]) == QUOTED_TEXT_LIMIT
    assert not_taken, "the stop never taken is said"
    for said in (stopping, *not_taken):
        assert said["status"].startswith("RUNNINGS") and len(said["status"]) == QUOTED_TEXT_LIMIT
        assert said["pod"] == pod.id


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
        for _ in range(int((TERMINATE_LAG_S + TERMINATE_RETRY_S) // OBSERVE_EVERY_S) + 1):
            await clocked.observe()
            clock.advance(OBSERVE_EVERY_S)
    assert pod.id in fake_runpod.pods, "RunPod still lists the pod"
    deletes = len(fake_runpod.requests_to(f"/pods/{pod.id}", "DELETE"))
    assert deletes == TERMINATE_LAG_S // OBSERVE_EVERY_S + 2, "past the bound, asked once every TERMINATE_RETRY_S"
    said = [(entry["event"], entry["log_level"]) for entry in logs if entry.get("pod") == pod.id]
    assert said == [("runpod_pod_replaced", "warning"), ("runpod_pod_not_terminated", "error")]
    [not_terminated] = [entry for entry in logs if entry["event"] == "runpod_pod_not_terminated"]
    assert not_terminated["delete_answer"] == "404 not found" and "console" in not_terminated["hint"]


async def test_a_pod_listed_live_that_runpod_says_is_not_found_holds_no_replica_place(
    clocked: RunPodBackend, fake_runpod: FakeRunPod, clock: ManualClock
):
    # Before: a pod RunPod still listed RUNNING but answered 404 to its stop and its DELETE (a listing lagging behind
    # a pod gone) counted as a live replica and in cost_per_hour, and was sent a stop and a DELETE at every observe
    # (8 stops in 120 s at 15 s); a count raised back to 2 created nothing, 1 pod served. Now it is handled as a
    # dead pod: not counted, never stopped again, and the count raised is made.
    await clocked.apply(2)
    ghost, kept = sorted(fake_runpod.live_pods(), key=lambda pod: pod.id)
    ghost.created_at = datetime.now(UTC) + timedelta(hours=1)  # the newest: the one scaled down
    fake_runpod.fail_next(f"/pods/{ghost.id}/action", 404, method="POST", times=1000)
    fake_runpod.fail_next(f"/pods/{ghost.id}", 404, method="DELETE", times=1000)
    await clocked.apply(1)
    counted = []
    for _ in range(int(STOP_LAG_S // OBSERVE_EVERY_S)):
        clock.advance(OBSERVE_EVERY_S)
        counted.append([replica.id for replica in (await clocked.observe()).replicas])
    assert counted == [[kept.id]] * len(counted)
    [kept_listed] = [pod for pod in clocked.pods if pod.id == kept.id]
    assert clocked.cost_per_hour == pytest.approx(kept_listed.cost_per_hour)
    assert len([r for r in fake_runpod.requests_to(f"/pods/{ghost.id}/action") if r.json == {"action": "stop"}]) == 1
    await clocked.apply(2)
    assert ghost.id in fake_runpod.pods, "RunPod still lists it"
    assert len(fake_runpod.live_pods()) == 3, "the count raised to 2 is made beside the pod not found"
