"""The jobs the store marks as started after the wall clock stepped back (so a reaper pass applying the step leaves
their start alone) are only ever running ones: a step too small for the reaper to apply never clears them."""

from __future__ import annotations

from pathlib import Path

from queue_manager import JobStatus, QueueMode
from queue_manager.store import JobStore

from .conftest import FakeClock


def test_marks_of_jobs_started_after_a_small_step_back_do_not_pile_up(tmp_path: Path, clock: FakeClock) -> None:
    """Before: one (id, attempt) kept per job started while the clock was behind its latest reading, for the
    process's life (200 after 200 jobs in a 3-s step back, below the reaper's 5-s tolerance)."""
    store = JobStore(tmp_path / "queue.db", clock=clock)
    try:
        store.submit("alice", {"1": {}})
        clock.advance(-3)
        for _ in range(200):
            store.submit("alice", {"1": {}})
            started = store.poll("w", QueueMode.FIFO).job
            assert started is not None
            assert store.complete(started.id, {}) is JobStatus.RUNNING
        assert len(store._started_after_a_step_back) <= 1, "at most the last job's: none of them runs"
    finally:
        store.close()
