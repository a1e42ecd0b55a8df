"""VerdaBackend against the fake Verda API on loopback, and the loop end to end with the queue manager."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.config import load_settings
from scaler.fleet import FleetBackend, Member
from scaler.ledger import VERDA_BILLING
from scaler.loop import UNSEEN_GAP_S, ScalerLoop, load_policy_state
from scaler.policy import ScalingConfig
from scaler.providers import VerdaBackend
from scaler.providers.verda.client import VerdaAPIError
from scaler.queue_status import QueueStatusReader
from scaler.wiring import make_provider, tokens_ahead
from standins.verda import FakeVerda

from .conftest import DEPLOYMENT, Wrapped

WORKFLOW = {"1": {"class_type": "Noop", "inputs": {}}}


@pytest.fixture
async def verda(make_verda_client) -> AsyncIterator[VerdaBackend]:
    """A VerdaBackend on the fake Verda, closed after the test."""
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT)
    yield backend
    await backend.aclose()


def submit(qm, count: int) -> list:
    return [qm.store.submit("alice", WORKFLOW) for _ in range(count)]


async def test_apply_pins_min_and_max_and_writes_only_on_change(
    verda, verda_scaling, scaling_patches, fake_verda: FakeVerda
):
    assert await verda.apply(3) is True
    assert verda_scaling() == (3, 3)
    assert await verda.apply(3) is False
    assert len(scaling_patches()) == 1, "no PATCH when the count is already pinned"
    assert scaling_patches()[0].json == {"min_replica_count": 3, "max_replica_count": 3}, "only the count"
    assert fake_verda.deployments[DEPLOYMENT].body["scaling"]["scale_down_policy"] == {"delay_seconds": 300}
    assert await verda.apply(0) is True
    assert verda_scaling() == (0, 0)


async def test_observe_reports_replicas_with_epoch_started_at(verda, fake_verda: FakeVerda):
    before = time.time()
    await verda.apply(2)
    view = await verda.observe()
    assert view.status == "healthy"
    assert len(view.replicas) == 2
    assert {r.id for r in view.replicas} == {r.id for r in fake_verda.deployments[DEPLOYMENT].replicas}
    assert all(before - 1 <= r.started_at <= time.time() + 1 for r in view.replicas)
    fake_verda.set_status(DEPLOYMENT, "quota_reached")
    assert (await verda.observe()).status == "quota_reached"


async def test_pause_and_resume(verda, fake_verda: FakeVerda):
    await verda.apply(1)
    await verda.pause()
    view = await verda.observe()
    assert (view.status, view.replicas) == ("paused", ())
    await verda.resume()
    view = await verda.observe()
    assert (view.status, view.replicas, view.bounds) == ("healthy", (), (0, 0)), "the next tick sets the count"
    await verda.apply(2)
    await verda.resume()
    assert len((await verda.observe()).replicas) == 2, "a resume of a running deployment stops nothing"


async def test_price_comes_from_the_deployments_compute(verda):
    assert await verda.price_per_hour() == 2.30


async def test_burst_scales_up_then_the_idle_window_brings_it_to_zero(
    qm, fake_verda: FakeVerda, verda, verda_scaling, scaling_patches, wait
):
    """Queue manager + fake Verda + the real loop on the real clock, with windows of a fraction of a second."""
    config = ScalingConfig(
        target_wait_s=None,
        max_replicas=4, billing_aware=False, stabilization_window_s=0.3, scale_down_cooldown_s=0.05,
        idle_to_zero_s=0.6,
    )
    replicas = fake_verda.deployments[DEPLOYMENT].replicas
    stop = asyncio.Event()
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(config, verda, reader, interval_s=0.05)
        work_last_read_at = 0.0
        reads = 0
        read_the_queue = reader.read

        async def read_noting_work():
            nonlocal work_last_read_at, reads
            status = await read_the_queue()
            reads += 1
            if status.pending_jobs or status.running_jobs:
                work_last_read_at = loop.clock()
            return status

        reader.read = read_noting_work
        task = asyncio.create_task(loop.run(stop))
        try:
            await wait(lambda: loop.on_backend == 0, timeout=5)
            assert verda_scaling() == (0, 0), "the scaler takes the count over from Verda's autoscaler"

            jobs = submit(qm, 3)
            await wait(lambda: len(replicas) == 3, timeout=5)
            assert verda_scaling() == (3, 3)

            for _ in jobs:  # workers on the three replicas take the jobs and finish them
                claimed = qm.store.pop_next("replica-worker", qm.mode)
                assert claimed is not None
                qm.store.complete(claimed.id, {"outputs": []})
            assert all(qm.store.get(job.id).status == "completed" for job in jobs)
            await wait(lambda: len(replicas) == 0, timeout=10)
            # The window counts from the tick that last read work, which a loaded machine may have run well
            # before the drain: the tick's clock is read after its reads return, so this bound is exact.
            assert loop.clock() - work_last_read_at >= config.idle_to_zero_s
            assert verda_scaling() == (0, 0)
            patches_at_zero, reads_at_zero = len(scaling_patches()), reads
            await wait(lambda: reads >= reads_at_zero + 5)
            assert len(scaling_patches()) == patches_at_zero, "an idle scaler writes nothing: 5 ticks, no write"
        finally:
            stop.set()
            await task


async def test_scaler_holds_through_a_queue_outage(qm, verda, verda_scaling, fake_verda, wait):
    config = ScalingConfig(billing_aware=False, stabilization_window_s=0, scale_down_cooldown_s=0, idle_to_zero_s=0.2)
    async with QueueStatusReader(qm.url, attempts=1) as reader:
        loop = ScalerLoop(replace(config, max_replicas=3), verda, reader)
        qm.store.submit("alice", WORKFLOW)
        await loop.tick()
        assert verda_scaling() == (1, 1)
        qm.store.cancel(qm.store.list()[0].id)
        qm.faults.inject("queue-status", status=503, times=3)
        for _ in range(3):
            await asyncio.sleep(0.25)
            assert (await loop.tick()).desired == 1
        assert verda_scaling() == (1, 1), "a queue manager outage never scales the workers away"
        assert loop.state.consecutive_failures == 3


async def test_a_long_queue_outage_releases_the_replicas_after_the_bounded_hold(
    qm, verda, verda_scaling, fake_verda: FakeVerda, wall
):
    """The workers pull from the queue manager: down, it leaves the replicas nothing to do. Before: held for ever
    (3 replicas through a 6-hour outage: $41.40 billed). Now: held SCALER_QUEUE_OUTAGE_HOLD_S, then the floor."""
    config = ScalingConfig(min_replicas=1, price_per_replica_hour=2.3)
    async with QueueStatusReader(qm.url, attempts=1) as reader:
        loop = ScalerLoop(config, verda, reader, clock=wall, queue_outage_hold_s=1800)
        jobs = submit(qm, 3)
        await loop.tick()
        assert verda_scaling() == (3, 3)
        qm.faults.inject("queue-status", status=503, times=1000)
        for _ in range(120):  # the first failed tick and 29 min 45 s after it: held
            wall.advance(15)
            assert (await loop.tick()).reason == "hold_observation_failed"
        assert verda_scaling() == (3, 3)
        wall.advance(15)
        with capture_logs() as logs:
            decision = await loop.tick()
        assert (decision.desired, decision.reason) == (1, "release_queue_unreachable")
        assert verda_scaling() == (1, 1) and len(fake_verda.deployments[DEPLOYMENT].replicas) == 1
        [event] = [entry for entry in logs if entry["event"] == "Scaling decision"]
        assert (event["log_level"], event["apply"]) == ("error", "wrote")
        assert event["details"]["queue_unreadable_for_s"] == 1800, "counted from the first tick that failed"
        wall.advance(15)
        held = await loop.tick()
        assert (held.desired, held.reason, held.changed) == (1, "hold_observation_failed", False), "the floor held"

        qm.faults.clear()
        wall.advance(15)
        assert (await loop.tick()).desired == 3, "the queue answers again: its jobs are served"
        assert verda_scaling() == (3, 3)
        for job in jobs:
            qm.store.cancel(job.id)
        qm.faults.inject("queue-status", status=503, times=1000)
        wall.advance(15)
        await loop.tick()
        assert verda_scaling() == (3, 3), "a new outage starts a new hold"


async def restarted_after_an_outage(qm, verda, reader, wall, state_file, *, failed_ticks: int, gap_s: float):
    """The scaler started ``gap_s`` after another stopped, from its state file; the other had served 3 jobs, then
    seen the queue fail at its next ``failed_ticks`` ticks, 15 s apart."""
    def scaler(**state) -> ScalerLoop:
        return ScalerLoop(ScalingConfig(min_replicas=1), verda, reader, clock=wall, state_file=state_file,
                          queue_outage_hold_s=1800, **state)

    first = scaler()
    submit(qm, 3)
    await first.tick()
    qm.faults.inject("queue-status", status=503, times=1000)
    for _ in range(failed_ticks):
        wall.advance(15)
        await first.tick()
    wall.advance(gap_s)
    return scaler(state=load_policy_state(state_file))


async def test_a_scaler_started_hours_after_a_queue_outage_was_seen_holds_before_releasing(
    qm, verda, verda_scaling, wall, tmp_path
):
    """The last scaler saw the queue fail for 5 minutes, then stopped; the next starts 5 hours later and the queue
    still fails at its first read (a blip). Before: released at once, 5 h 5 min counted as outage though nobody read
    the queue then. Now: the 5 minutes seen count, the gap does not: held until 30 minutes of outage are seen."""
    async with QueueStatusReader(qm.url, attempts=1) as reader:
        # The first failed tick and 5 minutes after it, then 5 hours without a scaler.
        restarted = await restarted_after_an_outage(qm, verda, reader, wall, tmp_path / "state.json",
                                                    failed_ticks=21, gap_s=5 * 3600)
        with capture_logs() as logs:
            assert (await restarted.tick()).reason == "hold_observation_failed"
        [left_out] = [entry for entry in logs if entry["event"] == "queue_outage_gap_left_out"]
        assert (left_out["gap_s"], left_out["seen_s"]) == (5 * 3600, 300)
        assert verda_scaling() == (3, 3)
        for _ in range(99):  # 5 + 24 min 45 s seen
            wall.advance(15)
            assert (await restarted.tick()).reason == "hold_observation_failed"
        wall.advance(15)
        decision = await restarted.tick()
        assert (decision.desired, decision.reason) == (1, "release_queue_unreachable")
        assert decision.details["queue_unreadable_for_s"] == 1800
        assert verda_scaling() == (1, 1)


@pytest.mark.parametrize("gap_s", [1800, UNSEEN_GAP_S])
async def test_a_restart_within_the_hold_counts_the_outage_from_its_first_failed_read(
    qm, verda, verda_scaling, wall, tmp_path, gap_s
):
    """A restart, or `once` from cron, between two failed reads within the hour: the gap counts, the hold is not
    started again."""
    async with QueueStatusReader(qm.url, attempts=1) as reader:
        restarted = await restarted_after_an_outage(qm, verda, reader, wall, tmp_path / "state.json",
                                                    failed_ticks=1, gap_s=gap_s)
        decision = await restarted.tick()
        assert (decision.desired, decision.reason) == (1, "release_queue_unreachable")
        assert verda_scaling() == (1, 1)


async def test_a_restart_a_second_past_the_unseen_gap_leaves_the_gap_out(qm, verda, verda_scaling, wall, tmp_path):
    async with QueueStatusReader(qm.url, attempts=1) as reader:
        restarted = await restarted_after_an_outage(qm, verda, reader, wall, tmp_path / "state.json",
                                                    failed_ticks=1, gap_s=UNSEEN_GAP_S + 1)
        assert (await restarted.tick()).reason == "hold_observation_failed"
        assert verda_scaling() == (3, 3)


async def test_the_count_is_what_verda_pins_not_what_it_lists_nor_what_the_scaler_last_wrote(
    qm, verda, verda_scaling, fake_verda: FakeVerda
):
    """Verda pins min = max = n and lists the replicas as they start. At the first tick, and after a count pinned in
    the console, the policy's current count is the pinned one: not the replicas listed so far, nor its last write."""
    config = ScalingConfig(billing_aware=False, stabilization_window_s=0, scale_down_cooldown_s=0, max_replicas=5)

    def pin(count: int) -> None:
        fake_verda.deployments[DEPLOYMENT].body["scaling"].update(min_replica_count=count, max_replica_count=count)

    pin(3)  # before this scaler started; none listed yet
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(config, verda, reader)
        submit(qm, 2)
        assert fake_verda.deployments[DEPLOYMENT].replicas == []
        decision = await loop.tick()
        assert (decision.current, decision.desired) == (3, 2) and verda_scaling() == (2, 2)

        pin(4)  # in the console
        decision = await loop.tick()
        assert (decision.current, decision.desired) == (4, 2) and verda_scaling() == (2, 2)

        # unpinned in the console (a deploy's min 0, max 5): the replicas listed are the count
        fake_verda.deployments[DEPLOYMENT].body["scaling"].update(min_replica_count=0, max_replica_count=5)
        listed = len(fake_verda.deployments[DEPLOYMENT].replicas)
        with capture_logs() as logs:
            decision = await loop.tick()
        assert listed > 0 and decision.current == listed
        [drift] = [entry for entry in logs if entry["event"] == "scaling_drift"]
        assert (drift["observed_min"], drift["observed_max"]) == (0, 5)


async def test_the_scaler_converges_on_what_verda_really_holds(
    qm, fake_verda: FakeVerda, verda, verda_scaling, scaling_patches
):
    """Like a controller: every tick compares the decision with Verda's scaling, not with its own last write.
    `comfy-scaler stop` then `resume`, or an edit in the console, is drift: logged, and written again."""
    config = ScalingConfig(billing_aware=False, stabilization_window_s=0, scale_down_cooldown_s=0, max_replicas=4)
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(config, verda, reader)
        submit(qm, 2)
        await loop.tick()
        assert verda_scaling() == (2, 2)

        await verda.apply(0)  # comfy-scaler stop: pin 0, pause
        await verda.pause()
        with capture_logs() as logs:
            await loop.tick()
        assert verda_scaling() == (0, 0) and logs[-1]["apply"] == "skipped_paused"

        await verda.resume()  # comfy-scaler resume
        with capture_logs() as logs:
            await loop.tick()
        assert verda_scaling() == (2, 2), "resumed with jobs pending: the scaler writes its count again"
        drift = [entry for entry in logs if entry["event"] == "scaling_drift"]
        assert drift and (drift[0]["observed_min"], drift[0]["observed_max"], drift[0]["desired"]) == (0, 0, 2)
        assert logs[-1]["apply"] == "wrote"

        fake_verda.deployments[DEPLOYMENT].body["scaling"].update(min_replica_count=0, max_replica_count=5)
        await loop.tick()  # someone unpinned the count in the console
        assert verda_scaling() == (2, 2)
        assert loop.metrics.drift._value.get() == 2

        writes = len(scaling_patches())
        await loop.tick()
        assert len(scaling_patches()) == writes, "nothing to write when Verda already holds the count"


@pytest.mark.parametrize("restarted", [False, True], ids=["running", "restarted"])
async def test_after_stop_and_resume_an_idle_scaler_counts_from_what_verda_holds(
    qm, verda, verda_scaling, fake_verda: FakeVerda, tmp_path, restarted
):
    """`comfy-scaler stop` then `resume` with an empty queue, the scaler running through it or restarted after it
    from a state file that remembers 3. Before: the scaler pinned the 3 replicas of before the stop again and held
    them to their billing boundary (3 new 10-minute intervals billed for nothing; restarted, with the reason
    hold_until_billing_boundary); `resume` is meant to leave the count to the queue."""
    state_file = tmp_path / "state.json"
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(ScalingConfig(), verda, reader, state_file=state_file)
        jobs = submit(qm, 3)
        await loop.tick()
        assert verda_scaling() == (3, 3) and load_policy_state(state_file).applied == 3
        for job in jobs:
            qm.store.cancel(job.id)
        await verda.apply(0)  # comfy-scaler stop
        await verda.pause()
        if not restarted:
            await loop.tick()
        await verda.resume()  # comfy-scaler resume
        if restarted:
            loop = ScalerLoop(ScalingConfig(), verda, reader, state=load_policy_state(state_file),
                              state_file=state_file)
        with capture_logs() as logs:
            decision = await loop.tick()
        assert (decision.current, decision.desired) == (0, 0)
        assert verda_scaling() == (0, 0) and fake_verda.deployments[DEPLOYMENT].replicas == []
        if not restarted:
            assert [entry["event"] for entry in logs].count("scaling_drift") == 1, "the change is still reported"


async def test_a_replica_listed_as_started_nine_years_ago_is_billed_for_the_last_day_and_the_tick_ends(
    verda, fake_verda: FakeVerda, queue
):
    """Walking every 10-minute interval since year 1 was ~10^8 steps: the tick never ended (nor did memory). Such a
    start is now taken as missing (test_replica_list_plausibility); the oldest believed, 10 years, is ~5x10^5."""
    loop = ScalerLoop(ScalingConfig(price_per_replica_hour=6.0, max_spend_per_day=1000.0), verda, queue)
    queue.running = 1
    await loop.tick()
    fake_verda.deployments[DEPLOYMENT].replicas[0].started_at = datetime.now(UTC) - timedelta(days=9 * 365)
    decision = await loop.tick()
    assert decision.desired == 1
    assert loop.state.ledger.spent_since(time.time() - 86_400) == pytest.approx(145.0, abs=1.0)


@pytest.fixture
def five_hours_behind_utc():
    """The test process's local time zone is UTC-5 (POSIX rule: no tz database needed)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "EST5"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


async def test_a_started_at_without_an_offset_is_utc_whatever_the_hosts_zone(
    verda, fake_verda: FakeVerda, five_hours_behind_utc
):
    """Read as local time it moved each replica's start, and so its billing boundaries, by the host's offset."""
    assert time.timezone == 5 * 3600
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/replicas", 200, body={"list": [
        {"id": "naive", "status": "running", "started_at": "2026-12-01T09:00:00"},
        {"id": "zulu", "status": "running", "started_at": "2026-12-01T09:00:00Z"},
        {"id": "offset", "status": "running", "started_at": "2026-12-01T10:00:00+01:00"},
    ]})
    view = await verda.observe()
    nine_utc = datetime(2026, 12, 1, 9, tzinfo=UTC).timestamp()
    assert {r.id: r.started_at for r in view.replicas} == {"naive": nine_utc, "zulu": nine_utc, "offset": nine_utc}


async def test_the_token_is_asked_for_at_start_so_the_first_read_needs_no_token_request(
    cli_env, fake_verda: FakeVerda
):
    """In a fleet a read gets a quarter of the tick (3.75 s). The token was asked for by the first read, before
    its three reads: at 2 s an answer that read was cut off, and the first tick of every run failed. The token
    is now asked for before the first tick, and the first read sends its three requests and no other."""
    fake_verda.latency_s = 0.2
    backend = make_provider(load_settings(), "verda")
    try:
        await tokens_ahead(backend, 30)
        sent_before = len(fake_verda.requests)
        assert (await backend.observe()).status == "healthy"
        sent = sorted(r.path.rsplit("/", 1)[-1] for r in fake_verda.requests[sent_before:])
        assert sent == ["replicas", "scaling", "status"], "no token request"
    finally:
        await backend.aclose()


async def test_the_token_is_asked_for_at_start_by_what_the_backend_does_not_its_class(
    make_verda_client, fake_verda: FakeVerda
):
    """Before, only an object of the class VerdaBackend, alone or in a FleetBackend, had its token asked for at
    start: a wrapped fleet holding a wrapped Verda backend asked for none (0 token requests), and its first read,
    a quarter of the tick, was two answers long. Now any backend that asks for tokens (AsksForTokensAhead) does."""
    verda = VerdaBackend(make_verda_client(), DEPLOYMENT)
    spec = ProviderSpec("verda", max_replicas=3, price_per_hour=2.99)
    fleet = FleetBackend([Member(spec, Wrapped(verda), VERDA_BILLING)], AllocatorConfig(providers=(spec,)))
    sent_before = len(fake_verda.requests)  # the deployment's creation
    try:
        async with asyncio.timeout(30):
            await tokens_ahead(Wrapped(fleet), 30)
        assert [r.path for r in fake_verda.requests[sent_before:]] == ["/oauth2/token"]
    finally:
        await fleet.aclose()


async def test_a_token_refused_at_start_is_the_first_reads_error(cli_env, fake_verda: FakeVerda, monkeypatch):
    """Asked for ahead, a token request that fails is no error at start, but it is the read's: the health
    judgement sees the 401 naming the credentials, as when the read asked for the token itself."""
    monkeypatch.setenv("VERDA_CLIENT_SECRET", "not-the-secret")
    backend = make_provider(load_settings(), "verda")
    try:
        with capture_logs() as logs:
            await tokens_ahead(backend, 30)
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["verda_token_request_failed"]
        with pytest.raises(VerdaAPIError, match="401 unauthorized_request on POST /v1/oauth2/token"):
            await backend.observe()
    finally:
        await backend.aclose()
