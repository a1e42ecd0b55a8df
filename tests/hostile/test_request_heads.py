"""What each of our aiohttp servers reads of one request head (common.limits): past a limit the answer is 400 (431
for the head as a whole) and the connection is closed, never a 500; the project's own clients, probes and scrapes,
through a proxy too, stay far inside. Each server real, on loopback.

aiohttp's defaults (128 headers of up to 8190 bytes) let 1000 connections, each holding a head it never finished,
take the queue manager from 60 MB to 2053 MB, the health server to 533 MB; at 32 headers, still 833 and 464 MB,
as aiohttp has no limit on a head as a whole (bench/head_memory.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from common.limits import PROBE_HEADS, QUEUE_HEADS, RequestHeads
from health.server import HealthServer
from queue_manager import QueueManagerServer
from scaler.metrics import MetricsServer, ScalerMetrics
from scaler.queue_status import QueueStatusReader
from worker.queue_client import QueueClient
from worker.state import WorkerState

TOKEN = "t0ken-" + "x" * 58  # as long as a generated secret: `openssl rand -hex 32`
ANSWER_DEADLINE_S = 5.0  # a guard against a hang, not a measure
PIECE_GAP_S = 0.01  # between the pieces of a request written apart: each is read on its own


@dataclass(frozen=True)
class Served:
    name: str
    url: str
    path: str  # a route it answers 200 without a token
    heads: RequestHeads


@pytest.fixture(params=["health", "scaler_metrics", "queue_manager"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    if request.param == "health":
        state = WorkerState(worker_id="heads-1", provider="verda", version="1.0", max_idle_polls=10, serverless=True)
        health = HealthServer(state, host="127.0.0.1", port=0, heartbeat_timeout_s=30)
        port = await health.start()
        yield Served("health", f"http://127.0.0.1:{port}", "/health", PROBE_HEADS)
        await health.stop()
    elif request.param == "scaler_metrics":
        metrics = MetricsServer(ScalerMetrics(), host="127.0.0.1", port=0)
        port = await metrics.start()
        yield Served("scaler_metrics", f"http://127.0.0.1:{port}", "/metrics", PROBE_HEADS)
        await metrics.stop()
    else:
        async with QueueManagerServer(token=TOKEN) as queue:
            assert queue.url is not None
            yield Served("queue_manager", queue.url, "/health", QUEUE_HEADS)


def field(number: int, value_bytes: int) -> bytes:
    """A header line with a value ``value_bytes`` long: what aiohttp's max_field_size counts."""
    return b"X-Pad-%04d: " % number + b"v" * value_bytes + b"\r\n"


async def answer_to(served: Served, header_lines: list[bytes], target: bytes | None = None) -> bytes:
    """Send one request (its Host header first, then ``header_lines``) and read the answer."""
    request_line = b"GET %s HTTP/1.1\r\n" % (target or served.path.encode())
    return await answer(served, request_line + b"Host: x\r\nConnection: close\r\n" + b"".join(header_lines) + b"\r\n")


async def answer(served: Served, sent: bytes) -> bytes:
    """Send ``sent`` and read what comes back until the server closes the connection."""
    host, port = served.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(sent)
        await writer.drain()
        async with asyncio.timeout(ANSWER_DEADLINE_S):
            return await reader.read()  # to the end: the server closed the connection
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_one_header_more_than_allowed_is_400_and_the_connection_closed(served: Served) -> None:
    """The queue manager read 128 headers of 8 KB each: 1000 connections held 2 GB (bench/head_memory.py)."""
    lines = [b"X-Filler-%d: x\r\n" % n for n in range(served.heads.max_headers - 1)]  # with Host and Connection
    answer = await answer_to(served, lines)
    assert status_of(answer) == 400, answer[:200]
    assert b"Too many headers" in answer


async def test_a_header_longer_than_allowed_is_400_and_the_connection_closed(served: Served) -> None:
    """The probe servers read headers of 8190 bytes, where a probe's longest is a bearer token of 1-2 KB."""
    answer = await answer_to(served, [field(1, served.heads.max_field_bytes + 1)])
    assert status_of(answer) == 400, answer[:200]
    assert b"Got more than %d bytes" % served.heads.max_field_bytes in answer


async def test_a_request_target_longer_than_allowed_is_400(served: Served) -> None:
    target = served.path.encode() + b"?pad=" + b"a" * served.heads.max_line_bytes
    answer = await answer_to(served, [], target=target)
    assert status_of(answer) == 400, answer[:200]


def head(served: Served, size: int, *, target: bytes | None = None, connection: bytes = b"close") -> bytes:
    """A request head of exactly ``size`` bytes, request line to blank line: the longest headers first."""
    start = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: %s\r\n" % (target or served.path.encode(), connection)
    lines, left = [], size - len(start) - 2
    while left:
        value_bytes = min(served.heads.max_field_bytes, left - len(field(0, 0)))
        if 0 < left - len(field(0, value_bytes)) < len(field(0, 1)):
            value_bytes -= len(field(0, 1))  # leave the last line room for a value
        lines.append(field(len(lines), value_bytes))
        left -= len(lines[-1])
    assert len(lines) + 2 <= served.heads.max_headers
    return start + b"".join(lines) + b"\r\n"


def cut_in_its_blank_line(request: bytes) -> tuple[bytes, bytes]:
    head_end = request.index(b"\r\n\r\n") + 3
    return request[:head_end], request[head_end:]


async def answers_to(
    served: Served, sent: list[bytes], *, one_write: bool = False, cut_blank_line: bool = False
) -> list[int]:
    """The statuses of the answers to ``sent`` on one connection, each request sent once the one before is answered
    (or all at once, pipelined), read to the end: the last request asks to close. ``cut_blank_line`` writes each
    request in two pieces, its head's blank line cut between CR and LF, so that the server reads the LF ending the
    head at the start of a read, with what follows it."""
    host, port = served.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    statuses = []
    try:
        async with asyncio.timeout(ANSWER_DEADLINE_S):
            for request in [b"".join(sent)] if one_write else sent:
                for piece in cut_in_its_blank_line(request) if cut_blank_line else [request]:
                    writer.write(piece)
                    await writer.drain()
                    if cut_blank_line:
                        await asyncio.sleep(PIECE_GAP_S)
                for _ in sent if one_write else [request]:
                    status_line = await reader.readline()
                    if not status_line:
                        return statuses  # closed
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    await reader.readexactly(length)
                    statuses.append(int(status_line.split(b" ")[1]))
            assert await reader.read() == b""  # then closed
    finally:
        writer.close()
    return statuses


async def test_the_largest_head_allowed_is_served_and_a_byte_more_is_431(served: Served) -> None:
    """The limits are the ones documented, to the byte: a head just inside every one of them is answered. A head
    as a whole had no limit: 32 headers of the longest let 1000 connections hold 833 MB (bench/head_memory.py)."""
    target = served.path.encode() + b"?pad="
    target += b"a" * (served.heads.max_line_bytes - len(target))
    assert await answers_to(served, [head(served, served.heads.max_head_bytes, target=target)]) == [200]
    refused = await answer(served, head(served, served.heads.max_head_bytes + 1))
    assert status_of(refused) == 431, refused[:200]
    assert refused.endswith(b"\r\n\r\nRequest head longer than %d bytes" % served.heads.max_head_bytes)


# What a proxy in front adds to a request (nginx, Cloudflare with Access, tracing), with an SSO's 4 KB JWT.
PROXY_HEADERS = {
    "X-Forwarded-For": "203.0.113.7, 10.0.0.2", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "queue.example",
    "X-Forwarded-Port": "443", "X-Real-IP": "203.0.113.7", "Via": "1.1 nginx", "Forwarded": "for=203.0.113.7",
    "CF-Connecting-IP": "203.0.113.7", "CF-Ray": "8a1b2c3d4e5f6a7b-AMS", "CF-IPCountry": "NL",
    "CF-Visitor": '{"scheme":"https"}', "CDN-Loop": "cloudflare", "Cf-Access-Jwt-Assertion": "e" * 4000,
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "X-Request-ID": "f" * 36,
}  # fmt: skip
# A Prometheus scrape's own headers, with the bearer token it may be configured with (a Kubernetes service
# account's JWT is about 1 KB).
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;"
    "version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "Accept-Encoding": "gzip", "User-Agent": "Prometheus/3.1.0", "X-Prometheus-Scrape-Timeout-Seconds": "10",
    "Authorization": "Bearer " + "j" * 2000,
}  # fmt: skip


async def test_a_scrape_and_a_probe_through_a_proxy_are_served(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=ANSWER_DEADLINE_S) as client:
        scrape = await client.get(served.path, headers={**PROMETHEUS_HEADERS, **PROXY_HEADERS})
        probe = await client.get(served.path, headers={"User-Agent": "kube-probe/1.31", **PROXY_HEADERS})
    assert (scrape.status_code, probe.status_code) == (200, 200)


async def test_the_worker_and_the_scaler_are_served_by_the_queue_manager() -> None:
    async with QueueManagerServer(token=TOKEN) as queue:
        assert queue.url is not None
        queue.store.submit("alice", {"1": {"class_type": "EmptyImage", "inputs": {"seed": 1}}})
        async with QueueStatusReader(queue.url, token=TOKEN) as reader:
            assert (await reader.read()).pending_jobs == 1
        worker = QueueClient(queue.url, "gpu-1", token=TOKEN)
        try:
            job = await worker.next_job()
        finally:
            await worker.aclose()
        assert job is not None and job["user_id"] == "alice"
        async with httpx.AsyncClient(base_url=queue.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            proxied = await client.get("/api/queue/status", headers=PROXY_HEADERS)
        assert proxied.status_code == 200


@pytest.mark.parametrize("past", ["headers", "field", "whole head"])
async def test_a_head_never_finished_is_refused_as_soon_as_it_passes_a_limit(served: Served, past: str) -> None:
    """What bounds the memory of clients that never finish their head: none can hold more than the limits."""
    status = 400
    if past == "headers":  # the one too many is counted once the next one begins
        sent = [b"X-Filler-%d: x\r\n" % n for n in range(served.heads.max_headers)] + [b"X-Next"]
    elif past == "field":
        sent = [field(1, served.heads.max_field_bytes + 1)[:-2]]  # its line not even ended
    else:  # headers each inside every other limit; the head was read until its timeout
        status = 431
        sent = [head(served, served.heads.max_head_bytes + 3, connection=b"keep-alive").split(b"\r\n", 2)[2][:-2]]
    host, port = served.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n" % served.path.encode() + b"".join(sent))
        await writer.drain()
        async with asyncio.timeout(ANSWER_DEADLINE_S):
            answer = await reader.read()
    finally:
        writer.close()
    assert status_of(answer) == status, answer[:200]


@pytest.mark.parametrize("one_write", [False, True], ids=["kept alive", "pipelined"])
async def test_each_request_on_a_connection_has_its_head_counted_afresh(served: Served, one_write: bool) -> None:
    """Three heads of the largest size and one with an empty body on one connection are each served; the fifth, a
    byte over, is 431 (and the four before it answered first when all came in one write)."""
    largest = head(served, served.heads.max_head_bytes, connection=b"keep-alive")
    empty_body = b"GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % served.path.encode()
    sent = [largest] * 3 + [empty_body, head(served, served.heads.max_head_bytes + 1)]
    assert await answers_to(served, sent, one_write=one_write) == [200, 200, 200, 200, 431]


async def test_a_declined_upgrade_does_not_count_what_follows_it_twice(served: Served) -> None:
    """aiohttp holds what follows a request asking to upgrade (to a websocket), then parses it again once the
    answer is not 101: a head that came with it, whole or begun, was counted twice unless the count restarts."""
    upgrade = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" % served.path.encode()
    largest = head(served, served.heads.max_head_bytes, connection=b"keep-alive")
    over = head(served, served.heads.max_head_bytes + 1)
    assert await answers_to(served, [upgrade, largest, over], one_write=True) == [200, 200, 431]
    half = len(largest) // 2  # the head of the next request begun in the upgrade's write, ended in the next
    assert await answers_to(served, [upgrade + largest[:half], largest[half:], over]) == [200, 200, 431]


@pytest.mark.parametrize(
    "white_space", [b"\r\n\r\n" * (256 * 1024), b" " * (1024 * 1024)], ids=["blank lines", "one line"]
)
async def test_no_byte_of_a_body_counts_as_head(white_space: bytes) -> None:
    """A submission's body (up to ~16 MiB), by its length or in chunks with their extensions and trailers, may hold
    anything, a blank line too, or none: the heads before and after it are counted, never it, however the lines of
    the heads are cut across the reads."""
    async with QueueManagerServer(token=TOKEN) as queue:
        assert queue.url is not None
        served = Served("queue_manager", queue.url, "/health", QUEUE_HEADS)
        job = b'{"user_id": "alice", "workflow": {"1": {"class_type": "EmptyImage", "inputs": {"seed": 1}}}}'
        body = job[:-1] + white_space + b"}"  # 1 MiB of JSON's white space
        post = (
            b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
            % (TOKEN.encode())
        )
        pad = head(served, served.heads.max_head_bytes - len(post) - 30, connection=b"keep-alive").split(b"\r\n", 3)[3]
        by_length = post + b"Content-Length: %d\r\n" % len(body) + pad + body
        chunks = b"".join(  # each of 0xfff0 bytes: a size read in any base but 16 is another
            b"%x;part=%d\r\n%s\r\n" % (len(body[at : at + 0xFFF0]), at, body[at : at + 0xFFF0])
            for at in range(0, len(body), 0xFFF0)
        )
        chunked = post + b"Transfer-Encoding: chunked\r\n" + pad + chunks + b"0\r\nX-Checksum: none\r\n\r\n"
        largest = head(served, served.heads.max_head_bytes, connection=b"keep-alive")
        sent = [by_length, chunked, largest, head(served, served.heads.max_head_bytes + 1)]
        ways = [{"one_write": False}, {"one_write": True}, {"cut_blank_line": True}]
        for way in ways:
            assert await answers_to(served, sent, **way) == [201, 201, 200, 431], way
        assert sum(queue.store.counts().values()) == 2 * len(ways)
