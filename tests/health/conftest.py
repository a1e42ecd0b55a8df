from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import pytest

from health.server import HealthServer
from worker.state import WorkerState

# No test waits it out (a wedge is a heartbeat set seconds back): it bounds how long after the state's last beat
# a healthy answer may be read. 0.2 s was less than a loaded CI machine's stall, or a few requests in a row on it.
HEARTBEAT_TIMEOUT_S = 3.0


def make_state(**overrides: Any) -> WorkerState:
    fields: dict[str, Any] = {
        "worker_id": "worker-test-1",
        "provider": "verda",
        "version": "9.9.9",
        "max_idle_polls": 10,
        "serverless": True,
    }
    fields.update(overrides)
    return WorkerState(**fields)


@pytest.fixture
def state() -> WorkerState:
    return make_state()


StartServer = Callable[..., Coroutine[Any, Any, httpx.AsyncClient]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start a HealthServer on a free loopback port; returns an HTTP client bound to it."""
    servers: list[HealthServer] = []
    clients: list[httpx.AsyncClient] = []

    async def start(state: WorkerState, heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S) -> httpx.AsyncClient:
        server = HealthServer(state, host="127.0.0.1", port=0, heartbeat_timeout_s=heartbeat_timeout_s)
        port = await server.start()
        servers.append(server)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2.0)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()
    for server in servers:
        await server.stop()


@pytest.fixture
async def client(start_server: StartServer, state: WorkerState) -> httpx.AsyncClient:
    return await start_server(state)
