"""What each of our aiohttp servers reads of one request head (common.limits): past a limit the answer is 400 and
the connection is closed, never a 500; the project's own clients, probes and scrapes, through a proxy too, stay
far inside. Each server real, on loopback.

aiohttp's defaults (128 headers of up to 8190 bytes) let 1000 connections, each holding a head it never finished,
take the queue manager from 60 MB to 2053 MB, the health server to 533 MB (bench/head_memory.py)."""

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
    host, port = served.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        request_line = b"GET %s HTTP/1.1\r\n" % (target or served.path.encode())
        writer.write(request_line + b"Host: x\r\nConnection: close\r\n" + b"".join(header_lines) + b"\r\n")
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


async def test_the_largest_head_allowed_is_served(served: Served) -> None:
    """The limits are the ones documented, to the byte: a head just inside every one of them is answered."""
    target = served.path.encode() + b"?pad="
    target += b"a" * (served.heads.max_line_bytes - len(target))
    lines = [field(n, served.heads.max_field_bytes) for n in range(served.heads.max_headers - 2)]
    answer = await answer_to(served, lines, target=target)
    assert status_of(answer) == 200, answer[:200]


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


@pytest.mark.parametrize("past", ["headers", "field"])
async def test_a_head_never_finished_is_refused_as_soon_as_it_passes_a_limit(served: Served, past: str) -> None:
    """What bounds the memory of clients that never finish their head: none can hold more than the limits."""
    if past == "headers":  # the one too many is counted once the next one begins
        sent = [b"X-Filler-%d: x\r\n" % n for n in range(served.heads.max_headers)] + [b"X-Next"]
    else:
        sent = [field(1, served.heads.max_field_bytes + 1)[:-2]]  # its line not even ended
    host, port = served.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n" % served.path.encode() + b"".join(sent))
        await writer.drain()
        async with asyncio.timeout(ANSWER_DEADLINE_S):
            answer = await reader.read()
    finally:
        writer.close()
    assert status_of(answer) == 400, answer[:200]
