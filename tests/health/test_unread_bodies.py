"""A body sent to the health server, whose routes read none: it is answered, and what the client goes on sending
is not read (aiohttp's lingering close read on and discarded it for 10 s, on the loop the jobs run on)."""

from __future__ import annotations

import asyncio
import contextlib

from worker.state import WorkerState

from .conftest import StartServer

ENDLESS_HEAD = b"GET /health HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000000000\r\n\r\n"
# Far more than the kernel's socket buffers on both ends hold (a few MB each): only a server reading on takes it.
FAR_MORE_THAN_BUFFERED = 64 * 1024 * 1024


async def _connect(start_server: StartServer, state: WorkerState) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    client = await start_server(state)
    return await asyncio.open_connection("127.0.0.1", client.base_url.port)


async def test_an_endless_body_is_not_read_on_once_answered(start_server: StartServer, state: WorkerState) -> None:
    _, writer = await _connect(start_server, state)
    writer.write(ENDLESS_HEAD)
    block, sent = b"x" * 65536, 0
    try:
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(60):  # a server neither reading nor closing fails here, not hangs
                while sent < FAR_MORE_THAN_BUFFERED:
                    writer.write(block)
                    await writer.drain()
                    sent += len(block)
    finally:
        writer.close()
    assert sent < FAR_MORE_THAN_BUFFERED


async def test_a_request_with_an_unfinished_body_is_answered_then_closed(
    start_server: StartServer, state: WorkerState
) -> None:
    reader, writer = await _connect(start_server, state)
    writer.write(ENDLESS_HEAD + b"x" * 1000)
    try:
        async with asyncio.timeout(30):
            answer = await reader.read()  # to the end: the server closes
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'"status": "ok"' in answer or b'"status":"ok"' in answer


async def test_a_finished_body_keeps_the_connection(start_server: StartServer, state: WorkerState) -> None:
    reader, writer = await _connect(start_server, state)
    request = b"GET /health HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello"
    try:
        async with asyncio.timeout(30):
            for _ in range(2):
                writer.write(request)
                assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200 ")
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                await reader.readexactly(int(head.split(b"content-length: ")[1].split(b"\r")[0]))
    finally:
        writer.close()
