"""A request a server cannot parse is one warning line, and a flood of them a few: the first, then at most one a
minute per process, telling how many were refused since. Each was one line: 10 000 bad requests, 10 000 lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from common.limits import PROBE_HEADS
from common.logs import MALFORMED_WARN_EVERY_S, _MalformedRequestAsWarning, configure_logging
from health.server import HealthServer
from queue_manager import QueueManagerServer
from worker.state import WorkerState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused_from(address: str, error: Exception) -> logging.LogRecord:
    """What aiohttp's protocol logs for a request it answered 400 (or 431): an error with the parser's exception."""
    return logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s", (address,),
        (type(error), error, None),
    )  # fmt: skip


def test_a_flood_of_malformed_requests_is_one_line_a_minute_with_the_count_of_the_others_a_500_every_time() -> None:
    clock = Clock()
    quiet = _MalformedRequestAsWarning(clock=clock)
    logged, logged_at = [], []
    for n in range(10_000):
        clock.now += 0.001  # 10 s in all
        record = refused_from(f"203.0.113.{n % 250}", BadHttpMessage("Invalid header value char"))
        if quiet.filter(record):
            logged.append(record.getMessage())
            logged_at.append(clock.now)
    assert logged == ["Malformed HTTP request refused (400): Error handling request from 203.0.113.0: "
                      "Invalid header value char"]  # fmt: skip
    clock.now = logged_at[0] + MALFORMED_WARN_EVERY_S
    record = refused_from("198.51.100.7", LineTooLong("b'GET /aaa'", "8190"))
    assert quiet.filter(record)
    assert record.getMessage() == (
        "Malformed HTTP request refused (400): Error handling request from 198.51.100.7: Got more than 8190 bytes "
        "when reading (9999 more refused since the last one)"
    )
    assert record.levelname == "WARNING" and record.exc_info is None
    # A handler failing (a 500) is our fault: never held back with the clients' malformed requests.
    failures = [refused_from("203.0.113.1", RuntimeError("handler broke")) for _ in range(3)]
    assert all(quiet.filter(failure) for failure in failures)
    assert [(failure.levelname, failure.exc_info is not None) for failure in failures] == [("ERROR", True)] * 3


@pytest.mark.parametrize(("held_back", "said"), [(0, ""), (1, " (1 more refused since the last one)")])
def test_the_line_after_the_minute_counts_the_refusals_held_back_in_it_and_says_nothing_of_none(
    held_back: int, said: str
) -> None:
    clock = Clock()
    quiet = _MalformedRequestAsWarning(clock=clock)
    assert quiet.filter(refused_from("203.0.113.9", BadHttpMessage("Invalid method")))
    for _ in range(held_back):
        clock.now += 1
        assert not quiet.filter(refused_from("203.0.113.9", BadHttpMessage("Invalid method")))
    clock.now = 1000.0 + MALFORMED_WARN_EVERY_S
    record = refused_from("198.51.100.7", BadHttpMessage("Invalid method"))
    assert quiet.filter(record)
    assert record.getMessage() == (
        f"Malformed HTTP request refused (400): Error handling request from 198.51.100.7: Invalid method{said}"
    )


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging("json", "info", stream=buffer)
    yield buffer
    structlog.reset_defaults()


async def test_a_head_too_large_is_one_warning_naming_the_limit_without_its_bytes(log_buffer: io.StringIO) -> None:
    state = WorkerState(worker_id="w", provider="verda", version="1.0", max_idle_polls=10, serverless=True)
    health = HealthServer(state, host="127.0.0.1", port=0, heartbeat_timeout_s=30)
    port = await health.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"s" * 1000) for n in range(20))  # each header inside its limit
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
    finally:
        await health.stop()
    assert answer.startswith(b"HTTP/1.0 431 Request Header Fields Too Large\r\n"), answer[:100]  # as every 400
    refused = [json.loads(line) for line in log_buffer.getvalue().splitlines() if "Malformed HTTP" in line]
    assert [(line["level"], line["event"]) for line in refused] == [
        ("warning", "Malformed HTTP request refused (431): Error handling request from 127.0.0.1: "
                    f"Request head longer than {PROBE_HEADS.max_head_bytes} bytes")
    ]  # fmt: skip
    assert "sss" not in log_buffer.getvalue()


async def test_an_undecodable_body_a_route_never_read_is_one_warning_and_the_answer_closes_the_connection(
    log_buffer: io.StringIO,
) -> None:
    """A GET (or a heartbeat) carrying a gzip body that is not gzip: the route answers without reading it, then
    aiohttp drains it, fails, and logged "Unhandled exception" with a traceback, an error at every such request
    (found by tests/hostile/test_fuzz_queue_http.py). The answer also kept the connection alive, then the server
    closed it: the client's next request on it was reset. Now one warning, and the answer says Connection: close."""
    async with QueueManagerServer() as queue:
        host, port = queue.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = b"not gzip at all"
        writer.write(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in head, head
    lines = [json.loads(line) for line in log_buffer.getvalue().splitlines()]
    assert [line["level"] for line in lines if line["level"] in ("error", "critical")] == []
    refused = [line["event"] for line in lines if "Malformed HTTP" in line["event"]]
    assert refused == [
        "Malformed HTTP request refused (400): Unhandled exception: Can not decode content-encoding: gzip"
    ]


async def test_the_count_of_the_last_minutes_malformed_requests_is_logged_when_the_flood_stops(
    log_buffer: io.StringIO,
) -> None:
    """Only a refusal after the minute logged the count of those before it: a flood that stopped within the minute
    left its first line alone, the others counted nowhere (1 + 2 refused here: 1 line, "2" never said)."""
    clock = Clock()
    quiet = _MalformedRequestAsWarning(clock=clock)
    server_logger = logging.getLogger("aiohttp.server")
    for at in (0, MALFORMED_WARN_EVERY_S - 0.3, MALFORMED_WARN_EVERY_S - 0.2):  # the minute ends 0.2 s after
        clock.now = 1000 + at
        record = refused_from("203.0.113.9", BadHttpMessage("Invalid method"))
        if quiet.filter(record):
            server_logger.handle(record)
    async with asyncio.timeout(10):
        while "more since the last one" not in log_buffer.getvalue():
            await asyncio.sleep(0.05)
    refused = [json.loads(line)["event"] for line in log_buffer.getvalue().splitlines() if "Malformed" in line]
    assert refused == [
        "Malformed HTTP request refused (400): Error handling request from 203.0.113.9: Invalid method",
        "Malformed HTTP requests refused: 2 more since the last one logged",
    ]


def test_the_count_of_malformed_requests_not_yet_logged_is_logged_at_exit() -> None:
    code = (
        "import logging\nfrom aiohttp.http_exceptions import BadHttpMessage\n"
        "from common.logs import configure_logging\n"
        "configure_logging('json', 'info')\n"
        "error = BadHttpMessage('Invalid method')\n"
        "for _ in range(3):\n"
        "    logging.getLogger('aiohttp.server').error('Error handling request', exc_info=(type(error), error, None))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert [json.loads(line)["event"] for line in run.stderr.splitlines()] == [
        "Malformed HTTP request refused (400): Error handling request: Invalid method",
        "Malformed HTTP requests refused: 2 more since the last one logged",
    ]
