"""WorkerState: the heartbeat kept fresh through a step bounded by its own deadline, and through work in a thread
(which no deadline cancels) only for its budget (``for_at_most_s``) and while the work says it moves (``progressed_at``
within ``stall_s``): a thread hung past either shows as wedged. Its job counts and the ComfyUI gauge."""

from __future__ import annotations

import asyncio
import time

from worker.state import WorkerState

from ..health.conftest import make_state

STALE = -1e9  # a heartbeat this old is wedged to any HEARTBEAT_TIMEOUT_S


async def beat_within(state: WorkerState, seconds: float) -> bool:
    """Whether the heartbeat, made stale now, is fresh again ``seconds`` later."""
    state.heartbeat_at = STALE
    await asyncio.sleep(seconds)
    return state.heartbeat_at != STALE


async def test_a_step_beats_while_it_runs_and_once_as_it_ends() -> None:
    state = make_state()
    async with state.beating(0.01):
        assert await beat_within(state, 0.2)
        state.heartbeat_at = STALE
    assert state.heartbeat_at != STALE


async def test_work_in_a_thread_beats_for_its_budget_only() -> None:
    state = make_state()
    async with state.beating(0.01, for_at_most_s=0.5):
        assert await beat_within(state, 0.2), "within its budget"
        await asyncio.sleep(0.4)
        assert not await beat_within(state, 0.2), "past its budget"


async def test_work_in_a_thread_beats_only_while_it_moves() -> None:
    state = make_state()
    moved_at = time.monotonic()
    async with state.beating(0.01, progressed_at=lambda: moved_at, stall_s=5.0):
        assert await beat_within(state, 0.2), "it moved just now"
        moved_at = time.monotonic() - 10
        assert not await beat_within(state, 0.2), "it last moved 10 s ago"
        moved_at = time.monotonic()
        assert await beat_within(state, 0.2), "it moves again"


def test_every_outcome_counts_as_a_job_finished() -> None:
    """SERVERLESS_JOB_LIMIT counts jobs finished whatever became of them, a job the manager took back included."""
    state = make_state()
    for outcome in ("completed", "failed", "handed_back", "abandoned", "abandoned"):
        state.job_finished(outcome)
    assert (state.jobs_completed, state.jobs_failed, state.jobs_handed_back, state.jobs_abandoned) == (1, 1, 1, 2)
    assert state.jobs_finished == 5


def test_the_comfyui_up_gauge_follows_comfyui() -> None:
    """comfy_worker_comfyui_up is what the ComfyUI-down alert reads (docs/monitoring.md): 0 when it is lost."""
    state = make_state()

    def gauge() -> float | None:
        return state.metrics.registry.get_sample_value("comfy_worker_comfyui_up")

    assert gauge() == 0
    state.set_comfyui(True, "0.8.0")
    assert gauge() == 1
    state.set_comfyui(False)
    assert (gauge(), state.comfyui_up, state.comfyui_version) == (0, False, "0.8.0")
