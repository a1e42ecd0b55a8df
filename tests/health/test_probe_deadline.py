"""The image's HEALTHCHECK against a peer on the health port that answers a byte at a time: its answer is its own
"unhealthy" line within TIMEOUT_S, not Docker's kill at --timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from health.probe import TIMEOUT_S

from .test_healthcheck import healthcheck_command, run_healthcheck_with


@pytest.fixture
async def trickling_port() -> AsyncIterator[int]:
    """A server that sends a status line and then one header byte a second, without end."""

    async def trickle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while True:
                await writer.drain()
                await asyncio.sleep(1)
                writer.write(b"a")

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_a_peer_answering_a_byte_at_a_time_gets_the_probes_own_timeout(
    trickling_port: int, tmp_path: Path
) -> None:
    assert healthcheck_command() == ["python", "-m", "health.probe"]
    variables = {"HEALTH_HOST": "127.0.0.1", "HEALTH_PORT": str(trickling_port)}
    try:  # bounded: before, the probe never returned while the peer went on
        code, said = await asyncio.wait_for(run_healthcheck_with(variables, tmp_path), 8 * TIMEOUT_S)
    except TimeoutError:
        pytest.fail(f"the probe was still waiting after {8 * TIMEOUT_S:g} s")
    assert (code, said.strip()) == (1, f"unhealthy: TimeoutError: no answer within {TIMEOUT_S:g} s")
