"""The kill switch against a tick of a running scaler that read the deployment before the stop and writes after it."""

from __future__ import annotations

import asyncio

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
    """The same race with `stop --all`, the running scaler stopped before its next tick could pin 0 again."""
    queue = StubQueue()
    queue.pending = 3
    fleet = await build_fleet(load_settings(), with_alerts=False)
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

