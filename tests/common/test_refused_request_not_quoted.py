"""A request a server cannot parse is answered 400 with what was wrong, never with the request: aiohttp's answer
quoted it (a request line over 16 KiB its first 100 bytes, a bad header the whole line, an invalid URL all of it),
a token in the query or in a header among them. Its log line neither: it read `…when reading: bytearray(` and an
invalid URL's whole URL. Each server real (the scaler's metrics server too), on loopback."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from common.logs import configure_logging
from health.server import HealthServer
from queue_manager import QueueManagerServer
from scaler.metrics import MetricsServer, ScalerMetrics
from worker.state import WorkerState

SECRET = b"SECRETVALUE"  # in a query value and a header the scrubber does not know
ANSWER_DEADLINE_S = 5.0  # a guard against a hang, not a measure


def request(line: bytes, *headers: bytes) -> bytes:
    headers = (b"X-Note: " + SECRET, *headers)
    return b"%s\r\nHost: x\r\nConnection: close\r\n%s\r\n" % (line, b"".join(header + b"\r\n" for header in headers))


REFUSED = {
    "line too long": (request(b"GET /api/jobs?x=" + SECRET + b"a" * 20_000 + b" HTTP/1.1"), b"Got more than "),
    "header too long": (request(b"GET / HTTP/1.1", b"Authorization: Bearer " + SECRET + b"x" * 20_000),
                        b"Got more than "),
    "header value char": (request(b"GET / HTTP/1.1", b"Authorization: Bearer " + SECRET + b"\x01"),
                          b"Invalid header value char"),
    "target char": (request(b"GET /?x=" + SECRET + b"\x7f HTTP/1.1"), b"Invalid URL"),
    "method": (request(b"G\x01T /?x=" + SECRET + b" HTTP/1.1"), b"Invalid method encountered"),
    "url without host": (request(b"GET http:///?x=" + SECRET + b" HTTP/1.1"), b"Invalid URL"),
    # The reason holds a colon: it was cut there, `Data after \`Connection`.
    "data after close": (request(b"GET / HTTP/1.1") + b"GET /?x=" + SECRET + b" HTTP/1.1\r\n\r\n",
                         b"Data after `Connection: close`"),
}  # fmt: skip


@pytest.fixture(params=["queue_manager", "health", "scaler_metrics"])
async def port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    if request.param == "scaler_metrics":
        metrics = MetricsServer(ScalerMetrics(), host="127.0.0.1", port=0)
        yield await metrics.start()
        await metrics.stop()
    elif request.param == "health":
        state = WorkerState(worker_id="w", provider="verda", version="1.0", max_idle_polls=10, serverless=True)
        health = HealthServer(state, host="127.0.0.1", port=0, heartbeat_timeout_s=30)
        yield await health.start()
        await health.stop()
    else:
        async with QueueManagerServer(token="operator-token") as queue:
            assert queue.url is not None
            yield int(queue.url.rsplit(":", 1)[1])


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging("json", "info", stream=buffer)
    yield buffer
    structlog.reset_defaults()


async def answer_to(port: int, sent: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent)
        await writer.drain()
        async with asyncio.timeout(ANSWER_DEADLINE_S):
            return await reader.read()  # to the end: the server closes the connection
    finally:
        writer.close()


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_malformed_request_is_answered_400_with_the_reason_and_none_of_its_bytes(port: int, case: str) -> None:
    sent, reason = REFUSED[case]
    answer = await answer_to(port, sent)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", answer[:300]
    assert reason in body, body
    assert SECRET not in answer, body


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_malformed_request_is_logged_with_the_reason_of_its_answer_and_none_of_its_bytes(
    log_buffer: io.StringIO, port: int, case: str
) -> None:
    sent, reason = REFUSED[case]
    await answer_to(port, sent)
    log = log_buffer.getvalue()
    assert SECRET.decode() not in log and "bytearray" not in log and "http:///" not in log, log
    logged = [line for line in log.splitlines() if "Malformed HTTP request refused" in line]
    # A bad method first on a connection (TLS or not HTTP at all, sent to a plain port) aiohttp logs at debug only.
    assert len(logged) == (0 if case == "method" else 1), log
    assert all(f": {reason.decode()}" in line for line in logged), logged
