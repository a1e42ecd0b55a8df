"""The kill switch against a tick of a running scaler that read the deployment before the stop and writes after it."""

from __future__ import annotations

import asyncio

import pytest

from scaler.cli import main
from scaler.config import load_settings
from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig
from scaler.providers import Backend, BackendView, VerdaBackend
from scaler.wiring import build_fleet, fleet_policy_config
from standins.verda import FakeVerda

from .conftest import DEPLOYMENT, StubQueue

CONFIG = ScalingConfig(billing_aware=False, target_wait_s=None)


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


class WriteHeldBack:
    """A backend whose writes wait until the test lets them through: the write of a tick still in flight."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.writing = asyncio.Event()
        self.let_through = asyncio.Event()

    async def observe(self) -> BackendView:
        return await self.backend.observe()

    async def apply(self, desired: int) -> bool:
        self.writing.set()
        await self.let_through.wait()
        return await self.backend.apply(desired)


async def tick_writing_after(stop: tuple[str, ...], loop: ScalerLoop, backend: WriteHeldBack) -> int:
    """One tick that reads before `comfy-scaler <stop>` and writes after it; the count it wrote."""
    tick = asyncio.create_task(loop.tick())
    await backend.writing.wait()
    assert await cli(*stop) == 0
    backend.let_through.set()
    return (await tick).desired


async def test_a_tick_that_writes_after_stop_starts_no_replica_at_resume(
    cli_env, make_verda_client, fake_verda: FakeVerda, verda_scaling
):
    """Its write of 3 landed on the paused deployment; `resume` then started 3 replicas for an empty queue
    (3 Verda intervals billed, 1.15 at 2.30/h)."""
    queue = StubQueue()
    queue.pending = 3
    verda = VerdaBackend(make_verda_client(), DEPLOYMENT)
    backend = WriteHeldBack(verda)
    try:
        assert await tick_writing_after(("stop",), ScalerLoop(CONFIG, backend, queue), backend) == 3
    finally:
        await verda.aclose()
    deployment = fake_verda.deployments[DEPLOYMENT]
    assert deployment.status == "paused" and deployment.replicas == []
    assert verda_scaling() == (3, 3), "the write of the tick under way landed after the stop"
    assert await cli("resume") == 0
    assert deployment.status == "healthy"
    assert deployment.replicas == [], "resume started the count a tick wrote after the stop"
    assert verda_scaling() == (0, 0), "the scaler sets the count at its next tick"


async def test_a_fleet_tick_that_writes_after_stop_all_starts_no_replica_at_resume(
    fleet_env, fake_verda: FakeVerda, verda_scaling
):
    """The same race with `stop --all` and a running scaler that does not see its kill switch file (run without
    SCALER_LEDGER_FILE, or with another), stopped after that tick as docs/providers.md then asks."""
    queue = StubQueue()
    queue.pending = 3
    fleet = await build_fleet(load_settings(), with_alerts=False)
    fleet.stop_file = None
    backend = WriteHeldBack(fleet)
    try:
        loop = ScalerLoop(fleet_policy_config(load_settings()), backend, queue)
        assert await tick_writing_after(("stop", "--all"), loop, backend) == 3
    finally:
        await fleet.aclose()
    deployment = fake_verda.deployments[DEPLOYMENT]
    assert deployment.status == "paused" and deployment.replicas == []
    assert verda_scaling() == (3, 3), "the write of the tick under way landed after the stop"
    assert await cli("resume") == 0
    assert deployment.status == "healthy" and deployment.replicas == []
    assert verda_scaling() == (0, 0)


async def test_resume_does_not_undo_what_a_running_fleet_placed_once_the_kill_switch_was_gone(
    fleet_env, fake_verda: FakeVerda, verda_scaling, tmp_path
):
    """`resume` pins a paused Verda to 0 before un-pausing it. A running fleet resumes and places its count as soon
    as the kill switch file is gone: removed first, a fleet tick between the pin's read and its write was undone."""
    assert await cli("stop", "--all") == 0
    stop_file, deployment = tmp_path / "ledger.json.stopped", fake_verda.deployments[DEPLOYMENT]
    placed: list[tuple[int, int]] = []
    take = fake_verda._faults.take

    def running_fleet_ticks(path: str, method: str):  # its tick lands as the pin reads the scaling, if it may
        if (path, method) == (f"/container-deployments/{DEPLOYMENT}/scaling", "GET") and not stop_file.exists():
            deployment.status = "healthy"  # what the fleet's own resume and placement write
            deployment.body["scaling"].update(min_replica_count=2, max_replica_count=2)
            placed.append((2, 2))
        return take(path, method)

    fake_verda._faults.take = running_fleet_ticks
    assert await cli("resume") == 0
    assert not stop_file.exists()
    assert placed == [] or verda_scaling() == placed[-1], "the running fleet's count was pinned to 0 over"


@pytest.mark.parametrize("config", [ScalingConfig(), CONFIG], ids=["billing-aware", "in-flight-rule"])
@pytest.mark.parametrize("race", [True, False], ids=["write-after-stop", "no-race"])
async def test_a_running_scaler_starts_nothing_after_resume_for_an_empty_queue(
    cli_env, make_verda_client, fake_verda: FakeVerda, verda_scaling, config, race
):
    """The scaler that had 3 replicas up (or decided 3 as `stop` ran) remembered 3 as its count through the pause:
    at its first tick after `resume` it held them (`hold_until_billing_boundary`, intervals the stop had cut
    short; `hold_stabilizing`) and wrote 3/3, starting 3 new replicas for an empty queue (3 intervals, 1.15)."""
    queue = StubQueue()
    queue.pending = 3
    verda = VerdaBackend(make_verda_client(), DEPLOYMENT)
    backend = WriteHeldBack(verda)
    loop = ScalerLoop(config, backend, queue)
    try:
        if race:
            await tick_writing_after(("stop",), loop, backend)
        else:
            backend.let_through.set()
            await loop.tick()
            assert len(fake_verda.deployments[DEPLOYMENT].replicas) == 3
            assert await cli("stop") == 0
        backend.let_through.set()
        queue.pending = 0  # the queue was emptied while stopped
        assert (await loop.tick()).reason == "hold_paused"
        assert await cli("resume") == 0
        decision = await loop.tick()
        assert (decision.desired, fake_verda.deployments[DEPLOYMENT].replicas) == (0, []), decision.reason
        assert verda_scaling() == (0, 0)
        queue.pending = 2
        assert (await loop.tick()).desired == 2, "and scales from the queue as before"
    finally:
        await verda.aclose()
