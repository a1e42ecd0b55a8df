"""common.stop_signals, used by the worker, the supervisor, the queue manager and the scaler: a flood of stop signals
faster than the loop reads them stops the process once asked, with nothing on stderr."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ..conftest import run_to_exit

FLOOD = (
    "import asyncio, os, signal\n"
    "from common.stop_signals import take_stop_signals\n"
    "stops = []\n"
    "async def flood():\n"
    "    take_stop_signals(lambda: stops.append(1), (signal.SIGTERM, signal.SIGINT))\n"
    "    for sig in [signal.SIGTERM, signal.SIGINT] * 1000:\n"  # sent by the loop's thread, which reads none meanwhile
    "        os.kill(os.getpid(), sig)\n"
    "    await asyncio.sleep(0.1)\n"
    "    print('stop requested:', bool(stops))\n"
    "asyncio.run(flood())\n"
)


@pytest.mark.timeout(60)
async def test_a_flood_of_stop_signals_is_taken_without_a_traceback_per_signal(tmp_path: Path) -> None:
    """Before (asyncio's add_signal_handler alone): each signal meeting the full wakeup socket printed 'Exception
    ignored when trying to write to the signal wakeup fd' with a traceback."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(Path(__file__).parents[2])}
    code, output, errors = await run_to_exit([sys.executable, "-c", FLOOD], env=env, cwd=tmp_path, timeout_s=50)

    assert (code, output, errors) == (0, "stop requested: True\n", "")
