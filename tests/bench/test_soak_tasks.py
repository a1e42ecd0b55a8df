"""bench.soak.Soak.run: a failure in any of its concurrent tasks (churn, keeper, sampler) fails the soak."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
from pathlib import Path

import pytest

from bench.soak import Soak

RUNNING_WORKER = "import pathlib, time; pathlib.Path('ready').write_text(''); time.sleep(600)"


@pytest.mark.timeout(120)
async def test_a_task_that_fails_fails_the_soak_naming_its_exception(tmp_path: Path) -> None:
    """The --worker-source checkout removed mid-soak, then the worker killed: the keeper cannot start it again
    (FileNotFoundError). The soak fails with that exception at once, every process ended, rather than going on
    without its keeper and printing figures as if the run were whole."""
    source = tmp_path / "source"
    (source / "worker").mkdir(parents=True)
    (source / "worker" / "__init__.py").write_text("")
    (source / "worker" / "__main__.py").write_text(RUNNING_WORKER)
    args = argparse.Namespace(workers=1, lease_timeout=5.0, retention_s=86400.0, seed=1, node_seconds=0.0,
                              worker_source=source, fixed_worker_ids=False, minutes=1.0, jobs=100_000,
                              sample_s=0.5, drain_s=5.0, verbose=False)  # fmt: skip
    soak = Soak(args)
    running = asyncio.create_task(soak.run())
    try:
        async with asyncio.timeout(60):
            while not (source / "ready").exists():  # the worker past its imports: it no longer needs its source
                await asyncio.sleep(0.05)
        shutil.rmtree(source)
        soak.workers[0].process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        with pytest.raises(ExceptionGroup) as failure:
            await asyncio.wait_for(running, 60)
    finally:
        running.cancel()
        for process in [soak.queue.process, *(worker.process for worker in soak.workers)]:
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        shutil.rmtree(soak.root, ignore_errors=True)
    assert failure.value.subgroup(FileNotFoundError) is not None, failure.value
    assert soak.queue.process is not None
    assert soak.queue.process.returncode == 0  # stopped by the soak's close (SIGTERM)
