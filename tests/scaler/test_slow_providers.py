"""A fleet over slow but working provider APIs (the fake Verda and the fake RunPod on loopback): each provider call
is cut off after ``member_timeout_s``, and a provider that answers within it, or whose cut-off write landed, is
neither an error nor fallen back from (bench/slow_providers.py measures it at 0.5-3 s an answer); a call that
fails is one failed tick, however many times the tick places."""

from __future__ import annotations

from standins.runpod import FakeRunPod
from standins.verda import FakeVerda

from ..conftest import wait_for
from .conftest import CALL_CUT_OFF_S, DEPLOYMENT


async def test_verda_answering_in_a_third_of_the_member_time_is_read_and_keeps_its_replicas(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod, verda_scaling
):
    # Verda's three reads were asked one after another: 3 answers' time, past the member's cut-off at 0.4 of it each.
    fleet = make_fleet(fake_runpod, verda_price=2.30, runpod_price=2.99, member_timeout_s=CALL_CUT_OFF_S)
    try:
        await fleet.observe()  # the token first (the CLI asks for it before the first tick: tokens_ahead)
        fake_verda.latency_s = fake_runpod.latency_s = 0.4 * CALL_CUT_OFF_S
        await fleet.apply(3)
        for _ in range(3):  # SCALER_FALLBACK_ERROR_TICKS is 2 here
            await fleet.observe()
            assert fleet._seen["verda"].view.error is None
        assert fleet.state.health["verda"].degraded is None
        assert fleet.state.targets == {"verda": 3, "runpod": 0}
        assert verda_scaling() == (3, 3)
        assert fake_runpod.pods == {}, "no replica placed again on RunPod while Verda's run"
    finally:
        await fleet.aclose()


async def test_runpod_writes_cut_off_that_land_are_no_errors(make_fleet, fake_runpod: FakeRunPod, verda_scaling):
    fleet = make_fleet(fake_runpod, verda_price=2.99, runpod_price=0.44, member_timeout_s=CALL_CUT_OFF_S)
    try:
        await fleet.observe()
        for count in (1, 2, 3):  # jobs arriving: a count higher at each tick
            fake_runpod.hold_writes()
            await fleet.apply(count)  # the creates held past the member's time: cut off, then carried out
            fake_runpod.release_writes()
            await wait_for(lambda count=count: len(fake_runpod.live_pods()) == count)
            await fleet.observe()
            assert fleet._seen["runpod"].view.error is None, "the pods asked for are listed: RunPod works"
        assert fleet.state.health["runpod"].degraded is None
        assert fleet.state.targets == {"verda": 0, "runpod": 3}
        assert verda_scaling() == (0, 0)
        assert len(fake_runpod.pods) + len(fake_runpod.terminated) == 3, "no pod made twice"
    finally:
        await fleet.aclose()


async def test_a_write_cut_off_that_did_not_land_still_counts(make_fleet, fake_runpod: FakeRunPod):
    fleet = make_fleet(fake_runpod, verda_price=2.99, runpod_price=0.44, member_timeout_s=CALL_CUT_OFF_S)
    try:
        await fleet.observe()
        fake_runpod.hold_writes()
        await fleet.apply(2)
        await fleet.observe()  # the creates still held: nothing listed
        assert fleet._seen["runpod"].view.error == f"write failed: TimeoutError: no answer within {CALL_CUT_OFF_S:g} s"
    finally:
        fake_runpod.release_writes()
        await fleet.aclose()


async def test_a_failed_read_at_a_tick_whose_count_changes_is_one_failed_tick(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod
):
    # The loop's write places again from the tick's reads: the read's error was counted again there.
    fleet = make_fleet(fake_runpod, verda_price=2.30, runpod_price=2.99)
    try:
        await fleet.observe()
        await fleet.apply(1)
        fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/status", 500, times=10)
        await fleet.observe()
        await fleet.apply(2)  # jobs arriving: the loop writes a new count at this tick
        assert fleet.state.health["verda"].consecutive_errors == 1
        assert fleet.state.health["verda"].degraded is None, "SCALER_FALLBACK_ERROR_TICKS is 2 here"
        assert fleet.state.targets == {"verda": 2, "runpod": 0}
        await fleet.observe()  # the second failed tick
        assert fleet.state.health["verda"].degraded is not None
    finally:
        await fleet.aclose()
