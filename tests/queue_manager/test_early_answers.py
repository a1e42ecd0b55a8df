"""A request answered before its body is read (401 bad token, 413 too large): the client, still sending its body,
reads that answer, not a reset. A worker whose token was rotated must see the 401 naming the problem."""

from __future__ import annotations

import asyncio
import contextlib

from queue_manager import QueueManagerServer

TOKEN = "s3cret-token-value"
_MiB = 1024 * 1024
# Both sizes are far more than the kernel's socket buffers on both ends hold (a few MB each): the client is still
# sending when the answer comes.
LEGAL_SUBMISSION_BYTES = 15 * _MiB
OVERSIZED_SUBMISSION_BYTES = 40 * _MiB


async def _send_whole_body_then_read(url: str, body_bytes: int, authorization: str | None) -> bytes:
    """What most HTTP clients do: send the request, body and all, and only then read the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = ["POST /api/jobs HTTP/1.1", "Host: test", "Content-Type: application/json", f"Content-Length: {body_bytes}"]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    block = b"x" * (256 * 1024)
    try:
        async with asyncio.timeout(60):  # a server neither reading nor answering fails here, not hangs
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            with contextlib.suppress(ConnectionError):  # reset while sending: the read below says what was lost
                for _ in range(body_bytes // len(block)):
                    writer.write(block)
                    await writer.drain()
            try:
                return await reader.readuntil(b"\r\n")
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                return f"no answer: {type(exc).__name__}".encode()
    finally:
        writer.close()


async def test_a_rotated_token_sending_a_large_submission_reads_its_401() -> None:
    async with QueueManagerServer(token=TOKEN) as queue:
        status = await _send_whole_body_then_read(queue.url, LEGAL_SUBMISSION_BYTES, "Bearer an-old-token")
    assert status == b"HTTP/1.1 401 Unauthorized\r\n"


async def test_a_submission_over_the_limit_reads_its_413() -> None:
    async with QueueManagerServer(token=TOKEN) as queue:
        status = await _send_whole_body_then_read(queue.url, OVERSIZED_SUBMISSION_BYTES, f"Bearer {TOKEN}")
    assert status == b"HTTP/1.1 413 Request Entity Too Large\r\n"
