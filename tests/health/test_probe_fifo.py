"""HEALTH_PORT_FILE that is a FIFO: the probe (and the scaler's local backend, which reads the same file with
health.probe) does not wait on it for a writer that never comes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from health.probe import TIMEOUT_S, health_url

from .test_healthcheck import run_healthcheck_with
from .test_probe_deadline import trickling_port  # noqa: F401  (a fixture)


async def test_a_fifo_as_port_file_leaves_the_probe_its_deadline(trickling_port: int, tmp_path: Path) -> None:  # noqa: F811
    """Before: opening the FIFO took the whole TIMEOUT_S, the deadline's TimeoutError was taken for an unreadable
    file, and the probe went on to HEALTH_PORT with no deadline left: against a server answering a byte at a time
    it never ended (now its "unhealthy" line at TIMEOUT_S)."""
    os.mkfifo(tmp_path / "port")
    variables = {"HEALTH_PORT_FILE": str(tmp_path / "port"), "HEALTH_HOST": "127.0.0.1",
                 "HEALTH_PORT": str(trickling_port)}
    try:
        code, said = await asyncio.wait_for(run_healthcheck_with(variables, tmp_path), 8 * TIMEOUT_S)
    except TimeoutError:
        pytest.fail(f"the probe was still running after {8 * TIMEOUT_S:g} s")
    assert (code, said.strip()) == (1, f"unhealthy: TimeoutError: no answer within {TIMEOUT_S:g} s")


async def test_a_fifo_as_port_file_is_no_port(tmp_path: Path) -> None:
    """Before: reading it waited for a writer for good, in the scaler's event loop too (now: no port, at once)."""
    fifo = tmp_path / "port"
    os.mkfifo(fifo)
    reading = asyncio.create_task(asyncio.to_thread(health_url, {"HEALTH_PORT_FILE": str(fifo), "HEALTH_PORT": "0"}))
    done, _ = await asyncio.wait([reading], timeout=10)
    if not done:  # a writer lets the thread go, so the failure does not hang the test run
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        with contextlib.suppress(ValueError):
            await reading
        pytest.fail("reading the FIFO still waited after 10 s")
    with pytest.raises(ValueError, match="no port to probe"):
        await reading
