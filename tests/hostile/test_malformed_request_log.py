"""A request a server cannot parse is one warning line, and a flood of them a few: the first, then at most one a
minute per process, telling how many were refused since. Each was one line: 10 000 bad requests, 10 000 lines."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from common.logs import MALFORMED_WARN_EVERY_S, _MalformedRequestAsWarning


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
