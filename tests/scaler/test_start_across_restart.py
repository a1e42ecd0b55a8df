"""A Verda replica listed without started_at across a restart of the single-backend scaler: charged once.

The new process takes it as started when it first lists it (or at the start Verda gives later), not at the start the
last process took: before, the spend ledger saw a new replica and charged a second first interval (0.77 $ for five
minutes of one replica at 2.30 $/h, not 0.38 $), which counts against SCALER_MAX_SPEND_PER_*."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from scaler.loop import ScalerLoop, billing_of, load_policy_state
from scaler.policy import ScalingConfig
from scaler.providers.verda.backend import VerdaBackend
from standins.verda import FakeVerda

from ..conftest import ManualClock
from .conftest import DEPLOYMENT

TICK_S = 15.0
CONFIG = ScalingConfig(price_per_replica_hour=2.30)
REPLICAS = f"/container-deployments/{DEPLOYMENT}/replicas"


async def ticks(make_verda_client, wall: ManualClock, queue, state_file, count: int) -> ScalerLoop:
    """One scaler process: loads the state the last one saved, ticks ``count`` times, exits."""
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall)
    loop = ScalerLoop(CONFIG, backend, queue, clock=wall, state=load_policy_state(state_file, billing_of(CONFIG)),
                      state_file=state_file)
    try:
        for _ in range(count):
            await loop.tick()
            wall.advance(TICK_S)
    finally:
        await backend.aclose()
    return loop


@pytest.mark.parametrize("given_later", [False, True], ids=["never-given", "given-after-the-restart"])
async def test_a_replica_without_its_start_is_not_charged_again_after_a_restart(
    fake_verda: FakeVerda, make_verda_client, wall: ManualClock, queue, tmp_path, given_later
):
    queue.running = 1
    unstamped = {"list": [{"id": "replica-a", "status": "provisioning"}]}
    fake_verda.fail_next(REPLICAS, 200, method="GET", times=6 if given_later else 20, body=unstamped)
    started = datetime.fromtimestamp(wall() + 100, UTC).isoformat()
    fake_verda.fail_next(REPLICAS, 200, method="GET", times=20,
                         body={"list": [{"id": "replica-a", "status": "running", "started_at": started}]})
    state_file = tmp_path / "scaler.json"
    await ticks(make_verda_client, wall, queue, state_file, 4)
    wall.advance(30)  # the restart
    loop = await ticks(make_verda_client, wall, queue, state_file, 12)
    assert loop.state.ledger.spent_since(0) == pytest.approx(2.30 * 600 / 3600)
