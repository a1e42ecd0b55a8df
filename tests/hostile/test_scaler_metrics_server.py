"""The scaler's metrics server against clients that never finish their request head: the limits of the
worker's health server (common.probe_server), not aiohttp's hour."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import httpx
import pytest
from structlog.testing import capture_logs

import common.waiting_connections
import scaler.metrics as scaler_metrics
from common.limits import PROBE_HEADS
from scaler.metrics import MetricsServer, ScalerMetrics

from ..conftest import closed_by_server, drip_until_closed, half_sent_requests, stalling_clients


async def test_a_client_dripping_its_headers_is_cut_off_and_scrapes_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the connection stayed open as long as the client dripped (aiohttp closes after an hour without a
    complete head), holding its headers in the scaler's process; now it is closed at the head's deadline."""
    monkeypatch.setattr(scaler_metrics, "PROBE_HEADS", replace(PROBE_HEADS, timeout_s=0.5))
    server = MetricsServer(ScalerMetrics(), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await drip_until_closed(reader, writer)
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200 and b"comfy_scaler_" in response.content
    finally:
        await server.stop()


async def test_a_head_of_many_headers_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    server = MetricsServer(ScalerMetrics(), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        headers = {f"X-Filler-{n}": "x" for n in range(64)}
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics", headers=headers)
        assert response.status_code == 400
    finally:
        await server.stop()


async def test_past_the_cap_the_connections_waiting_longest_are_closed_and_the_scrape_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's health server and the queue manager cap the connections waiting for a request; the scaler's
    metrics server kept every one, up to the raised open-file limit. Here the cap is 5: 8 half-sent requests,
    then a scrape; the 4 oldest are closed."""
    monkeypatch.setattr(common.waiting_connections, "MAX_WAITING_CONNECTIONS", 5, raising=False)
    server = MetricsServer(ScalerMetrics(), host="127.0.0.1", port=0)
    port = await server.start()
    connections = []
    try:
        with capture_logs() as logs:
            connections = await half_sent_requests("127.0.0.1", port, 8)
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200 and b"comfy_scaler_" in response.content
        assert [await closed_by_server(reader) for reader, _ in connections] == [True] * 4 + [False] * 4
        assert [e["server"] for e in logs if e["event"] == "connections_over_limit"] == ["scaler_metrics"]
    finally:
        for _, writer in connections:
            with contextlib.suppress(Exception):
                writer.close()
        await server.stop()


async def test_stop_does_not_wait_on_clients_that_never_read_or_never_finish_a_body() -> None:
    """The scaler's exit awaits stop(). Before: aiohttp gave each unfinished connection 60 s to end its handler and
    60 s more once cancelled, and lingered 10 s on an unsent body: one client that pipelined scrapes and never read
    the answers kept the scaler's stop running for minutes."""
    server = MetricsServer(ScalerMetrics(), host="127.0.0.1", port=0)
    port = await server.start()
    async with stalling_clients(port, "/metrics"):
        await asyncio.wait_for(server.stop(), 30)  # before: over 2 minutes
