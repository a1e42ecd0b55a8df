"""The connections a server closed past its cap are all counted in the log, a burst's last ones too at its stop."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from structlog.testing import capture_logs

import common.waiting_connections
from common.limits import PROBE_HEADS
from common.waiting_connections import WaitingConnections

from ..conftest import half_sent_requests


async def test_the_connections_closed_after_the_last_warning_are_counted_at_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first close logged "closed=1"; the others within the minute waited for its end, and a stop before it lost
    them: 3 closed, then a stop, logged 1 of 3 (now 3 of 3)."""
    monkeypatch.setattr(common.waiting_connections, "MAX_WAITING_CONNECTIONS", 5, raising=False)
    waiting = WaitingConnections("test", PROBE_HEADS)
    app = web.Application(middlewares=[waiting.middleware])
    runner = await waiting.start_runner(app)
    connections = []
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        with capture_logs() as logs:
            connections = await half_sent_requests("127.0.0.1", runner.addresses[0][1], 8)
            async with asyncio.timeout(10):
                assert [await reader.read(1) for reader, _ in connections[:3]] == [b""] * 3  # the 3 oldest closed
            await runner.cleanup()
    finally:
        for _, writer in connections:
            writer.close()
        await runner.cleanup()
    closed = [line["closed"] for line in logs if line["event"] == "connections_over_limit"]
    assert closed == [1, 2]
