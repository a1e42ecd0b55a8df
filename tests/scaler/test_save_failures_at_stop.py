"""State saves that failed within the last ten minutes, held back from the log, are counted when the scaler stops."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.health_record import BackendHealth
from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig

CONFIG = ScalingConfig(target_wait_s=None, billing_aware=False, stabilization_window_s=60, scale_down_cooldown_s=0,
                       idle_to_zero_s=120, price_per_replica_hour=3.0)
HELD_BACK = "policy_state_save_failed_held_back"


async def _stopped(loop: ScalerLoop) -> None:
    stop = asyncio.Event()
    stop.set()
    async with asyncio.timeout(10):
        await loop.run(stop)


async def test_failed_saves_held_back_are_counted_at_a_clean_stop(backend, queue, clock, tmp_path) -> None:
    """Before: 3 failed saves, then a stop, logged the first failure only; the other 2 were counted nowhere."""
    (tmp_path / "a-file").write_text("")
    loop = ScalerLoop(CONFIG, backend, queue, clock=clock, state_file=tmp_path / "a-file" / "scaler.json")
    queue.pending = 1
    with capture_logs() as logs:
        for _ in range(3):
            await loop.tick()
        await _stopped(loop)
    events = [entry["event"] for entry in logs if entry["event"].startswith(("policy_state", "scaler_stopped"))]
    assert events == ["policy_state_save_failed", HELD_BACK, "scaler_stopped"]
    assert [entry["more_since_last"] for entry in logs if entry["event"] == HELD_BACK] == [2]


async def test_the_stop_records_failed_save_is_counted_too(backend, queue, clock, tmp_path) -> None:
    """The save of the stop (the `local` backend's workers stopped) fails as well: before, counted nowhere."""
    (tmp_path / "a-file").write_text("")
    health = BackendHealth("local", AllocatorConfig((ProviderSpec("local", 5, 3.0),), retry_after_s=300.0))
    loop = ScalerLoop(CONFIG, backend, queue, clock=clock, state_file=tmp_path / "a-file" / "scaler.json",
                      backend_health=health)
    queue.pending = 1
    with capture_logs() as logs:
        await loop.tick()
        await _stopped(loop)
        loop.record_stopped()
    failed = [entry for entry in logs if entry["event"].startswith("policy_state_save_failed")]
    assert [(entry["event"], entry["more_since_last"]) for entry in failed] == [
        ("policy_state_save_failed", 0), (HELD_BACK, 1)]
