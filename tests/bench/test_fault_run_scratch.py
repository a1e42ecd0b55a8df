"""bench.fault_run.FaultRun's scratch folder (database, logs, port files, outputs): removed however the run ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from pathlib import Path

import pytest

from bench.fault_run import FaultRun, RunConfig, processes_using


@pytest.fixture(autouse=True)
def _scratch_under(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scratch folder left behind (the defect) goes with the test's own folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _ended(run: FaultRun) -> None:
    for pid in processes_using(run.root):  # a failed test leaves nothing running
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
async def test_a_run_that_fails_removes_its_scratch_and_keeps_a_copy(tmp_path: Path) -> None:
    """A queue manager that refuses its settings: the run fails, its log copied to --keep, the scratch gone."""
    run = FaultRun(RunConfig(jobs=1, replicas=1, keep=tmp_path / "kept"))
    run.queue.env["FINISHED_JOB_RETENTION_S"] = "not-a-number"
    try:
        with pytest.raises(RuntimeError, match="the queue manager exited 2: "):
            await asyncio.wait_for(run.run(), 30)
    finally:
        _ended(run)
    assert not run.root.exists()
    assert "FINISHED_JOB_RETENTION_S" in (tmp_path / "kept" / "queue.log").read_text()


@pytest.mark.timeout(90)
async def test_a_run_interrupted_removes_its_scratch() -> None:
    """Ctrl-C (the run's task cancelled) while replicas run: every process ended, the scratch gone."""
    run = FaultRun(RunConfig(jobs=100_000, replicas=1))
    running = asyncio.create_task(run.run())
    try:
        async with asyncio.timeout(60):
            while not list((run.root / "logs").glob("*.port")):  # a replica up, its port file written
                await asyncio.sleep(0.1)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, 30)
    finally:
        running.cancel()
        _ended(run)
    assert not run.root.exists()
