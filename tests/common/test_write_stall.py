"""A client that asks for an answer and reads none of it loses its connection once WRITE_STALL_S passes with nothing
sent; one that reads, however slowly, gets all of its answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from aiohttp import web
from structlog.testing import capture_logs

from common.limits import PROBE_HEADS
from common.waiting_connections import WaitingConnections

from ..conftest import wait_for

STALL_S = 0.5
ANSWER = b"x" * (256 * 1024)  # far more than the client's receive buffer takes
# Kept alive: a connection asked to close is handed to the kernel once its answer is written, no longer the server's.
REQUEST = b"GET /answer HTTP/1.1\r\nHost: test\r\n\r\n"


async def _answer(_request: web.Request) -> web.Response:
    return web.Response(body=ANSWER)


async def _client(port: int) -> socket.socket:
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
    await asyncio.get_running_loop().sock_sendall(client, REQUEST)
    return client


async def _read_slowly(client: socket.socket) -> bytes:
    """A few KB every STALL_S / 5, to the end of the answer (or of the connection)."""
    received = b""
    while not received.endswith(ANSWER) and (chunk := await asyncio.get_running_loop().sock_recv(client, 8192)):
        received += chunk
        await asyncio.sleep(STALL_S / 5)
    return received


async def test_a_client_reading_none_of_its_answer_is_closed_one_reading_slowly_is_kept() -> None:
    """Before: the connection that read nothing stayed open for good, its answer held (no write timeout); now it is
    closed and logged once WRITE_STALL_S passes with nothing sent, while the slow reader gets its whole answer."""
    waiting = WaitingConnections("test", PROBE_HEADS, write_stall_s=STALL_S)
    app = web.Application(middlewares=[waiting.middleware])
    app.router.add_get("/answer", _answer)
    runner = await waiting.start_runner(app)
    clients: list[socket.socket] = []
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        with capture_logs() as logs:
            clients.append(never_reads := await _client(port))
            clients.append(reads_slowly := await _client(port))
            async with asyncio.timeout(30):
                received = await _read_slowly(reads_slowly)
            await wait_for(lambda: any(line["event"] == "connections_not_reading_closed" for line in logs), 10)
        assert received.endswith(b"\r\n\r\n" + ANSWER)
        assert len(await _what_is_left(never_reads)) < len(ANSWER)  # what the kernel held, then the reset
        stalled = [line for line in logs if line["event"] == "connections_not_reading_closed"]
        assert [(line["server"], line["closed"]) for line in stalled] == [("test", 1)]
    finally:
        for client in clients:
            client.close()
        await runner.cleanup()


async def test_a_connection_closed_past_the_cap_drops_what_the_kernel_holds_of_its_answer() -> None:
    """Before: past the cap the oldest connection was aborted, yet the kernel went on offering its client the answer
    it had queued (up to 4 MB a connection, for minutes): the client got all 256 KiB once it read. Now it is reset."""
    waiting = WaitingConnections("test", PROBE_HEADS)
    app = web.Application(middlewares=[waiting.middleware])
    app.router.add_get("/answer", _answer)
    runner = await waiting.start_runner(app)
    waiting.limit = 1
    clients: list[socket.socket] = []
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        clients.append(never_read := await _client(port))
        await wait_for(lambda: _has_bytes_waiting(never_read), 10)  # answered: it waits for its next request
        with capture_logs() as logs:
            clients.append(await _client(port))  # past the cap: the one waiting longest is closed
            await wait_for(lambda: any(line["event"] == "connections_over_limit" for line in logs), 10)
        assert len(await _what_is_left(never_read)) < len(ANSWER)
    finally:
        for client in clients:
            client.close()
        await runner.cleanup()


async def _what_is_left(client: socket.socket) -> bytes:
    """What ``client`` still receives until the server closes or resets the connection (10 s at most)."""
    received = b""
    async with asyncio.timeout(10):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await asyncio.get_running_loop().sock_recv(client, 65536):
                received += chunk
    return received


def _has_bytes_waiting(client: socket.socket) -> bool:
    try:
        return bool(client.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
