"""Clients that pipeline scrapes and never read the answers, then more clients than the connection cap: the server
keeps no more connections than the cap (it kept every one of those whose answers waited, ~125 KB each, for good)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest

import common.waiting_connections
from worker.state import WorkerState

from .conftest import StartServer

CAP = 5
SCRAPES = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n" * 2000


def unsent_bytes_on(port: int) -> dict[int, int]:
    """For each connection open on this machine's side ``port`` (the server's end), by its client's port, the
    bytes its kernel holds unsent."""
    unsent = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            _, local, remote, state, queues = line.split()[:5]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":  # 01: established
                unsent[int(remote.rsplit(":", 1)[1], 16)] = int(queues.split(":")[0], 16)
    return unsent


async def _connect(port: int, clients: list[socket.socket]) -> socket.socket:
    client = socket.socket()
    clients.append(client)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
    return client


async def test_connections_over_the_cap_not_reading_their_answers_are_closed(
    start_server: StartServer, state: WorkerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: past the cap the oldest was "closed" (and logged so) but kept until its answers were sent, which its
    client never took: twice the cap connections stayed open (now the cap)."""
    monkeypatch.setattr(common.waiting_connections, "MAX_WAITING_CONNECTIONS", CAP)
    port = (await start_server(state)).base_url.port
    clients: list[socket.socket] = []
    try:
        never_read = [await _connect(port, clients) for _ in range(CAP)]
        previous: dict[int, int] = {}
        async with asyncio.timeout(30):  # until the kernel holds all it takes of each's answers, the server the rest
            while True:
                for client in never_read:
                    with contextlib.suppress(BlockingIOError):
                        client.send(SCRAPES)
                await asyncio.sleep(0.2)
                unsent = unsent_bytes_on(port)
                if len(unsent) == CAP and all(unsent.values()) and unsent == previous:
                    break
                previous = unsent
        for _ in range(CAP):
            await _connect(port, clients)  # each closes the connection that has waited longest
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):  # bounded: before, the count never came down
                while len(unsent_bytes_on(port)) > CAP:
                    await asyncio.sleep(0.1)
        assert len(unsent_bytes_on(port)) == CAP
    finally:
        for client in clients:
            client.close()
