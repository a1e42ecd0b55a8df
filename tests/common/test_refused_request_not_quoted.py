"""A request a server cannot parse is answered 400 with what was wrong, never with the request: aiohttp's answer
quoted it (a request line over 16 KiB its first 100 bytes, a bad header the whole line, an invalid URL all of it),
a token in the query or in a header among them. Each server real, on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from health.server import HealthServer
from queue_manager import QueueManagerServer
from worker.state import WorkerState

SECRET = b"s3cr3t-T0KEN"
ANSWER_DEADLINE_S = 5.0  # a guard against a hang, not a measure


def request(line: bytes, *headers: bytes) -> bytes:
    return b"%s\r\nHost: x\r\nConnection: close\r\n%s\r\n" % (line, b"".join(header + b"\r\n" for header in headers))


REFUSED = {
    "line too long": (request(b"GET /api/jobs?token=" + SECRET + b"a" * 20_000 + b" HTTP/1.1"), b"Got more than "),
    "header too long": (request(b"GET / HTTP/1.1", b"Authorization: Bearer " + SECRET + b"x" * 20_000),
                        b"Got more than "),
    "header value char": (request(b"GET / HTTP/1.1", b"Authorization: Bearer " + SECRET + b"\x01"),
                          b"Invalid header value char"),
    "target char": (request(b"GET /?token=" + SECRET + b"\x7f HTTP/1.1"), b"Invalid URL"),
    "method": (request(b"G\x01T /?token=" + SECRET + b" HTTP/1.1"), b"Invalid method encountered"),
    "url without host": (request(b"GET http:///?token=" + SECRET + b" HTTP/1.1"), b"Invalid URL"),
}  # fmt: skip


@pytest.fixture(params=["queue_manager", "health"])
async def port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    if request.param == "health":
        state = WorkerState(worker_id="w", provider="verda", version="1.0", max_idle_polls=10, serverless=True)
        health = HealthServer(state, host="127.0.0.1", port=0, heartbeat_timeout_s=30)
        yield await health.start()
        await health.stop()
    else:
        async with QueueManagerServer(token="operator-token") as queue:
            assert queue.url is not None
            yield int(queue.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_malformed_request_is_answered_400_with_the_reason_and_none_of_its_bytes(port: int, case: str) -> None:
    sent, reason = REFUSED[case]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent)
        await writer.drain()
        async with asyncio.timeout(ANSWER_DEADLINE_S):
            answer = await reader.read()  # to the end: the server closes the connection
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", answer[:300]
    assert reason in body, body
    assert SECRET not in answer, body
