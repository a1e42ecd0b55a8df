"""A cap on the bytes of a request head as a whole (nginx's ``large_client_header_buffers``): aiohttp bounds each
header and how many there are, never their sum.

A connection's bytes are followed from a request's first line to the blank line ending its head, then over its
body by the body's own framing (``Content-Length``, or chunked to its last chunk and trailers), so the head of the
next kept-alive or pipelined request is counted afresh and no body byte ever is. A chunked body's trailers are
header fields too: they count with their request's head. Past the cap the parser is fed that head up to the cap
and nothing after it: the requests before it are answered, then, unless the parser found one of its own limits
passed first (400), aiohttp answers 431 (Request Header Fields Too Large) with the reason and closes the
connection, logged as any malformed request (common/logs.py).

Any request refused, by the cap or the parser, is answered with what was wrong and none of its bytes: aiohttp's
answer quoted them (a request line over the limit its first 100 bytes, a bad header its whole line, an invalid URL
all of it), a token in a query or a header among them.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Any

from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError, InvalidURLError
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import _ErrInfo  # what aiohttp's protocol answers with an error status, then closes

# What is kept of a line to read it: a Content-Length, a Transfer-Encoding or a chunk's size is far shorter. Only
# ever stricter when cut: a shorter length or no `chunked` counts the body as head.
_LINE_KEPT = 256


class HeadTooLarge(HttpProcessingError):
    def __init__(self, limit: int, within: int) -> None:
        super().__init__(code=431, message=f"Request head longer than {limit} bytes")
        self.within = within  # how much of the data counted last is inside the limit


class _Reading(Enum):
    HEAD = auto()
    BODY = auto()  # of a Content-Length
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()  # and the CRLF after it
    TRAILERS = auto()


class HeadMeter:
    """The bytes of each request head on one connection, as they arrive; ``count`` raises past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._next_request()

    def _next_request(self) -> None:
        self._reading = _Reading.HEAD
        self._head_bytes = 0
        self._line = b""  # the line being read, its first _LINE_KEPT bytes
        self._request_line_seen = False
        self._content_length = 0
        self._chunked = False
        self._left = 0  # bytes of a body or a chunk still to come

    def count(self, data: bytes) -> None:
        at = 0
        while at < len(data):
            if self._left:
                step = min(self._left, len(data) - at)
                self._left -= step
                at += step
                if not self._left:
                    self._end_of_data()
                continue
            newline = data.find(b"\n", at)
            end = len(data) if newline < 0 else newline + 1
            if self._reading in (_Reading.HEAD, _Reading.TRAILERS):
                self._head_bytes += end - at
                if self._head_bytes > self.limit:
                    raise HeadTooLarge(self.limit, within=end - (self._head_bytes - self.limit))
            if len(self._line) < _LINE_KEPT:
                self._line += data[at : min(end, at + _LINE_KEPT - len(self._line))]
            at = end
            if newline >= 0:
                line, self._line = self._line.strip(), b""
                self._end_of_line(line)

    def _end_of_data(self) -> None:
        if self._reading is _Reading.BODY:
            self._next_request()
        else:
            self._reading = _Reading.CHUNK_SIZE

    def _end_of_line(self, line: bytes) -> None:
        if self._reading is _Reading.HEAD:
            if line and not self._request_line_seen:
                self._request_line_seen = True
            elif line:
                self._header(line)
            elif self._request_line_seen:  # the blank line ending the head (empty ones before it are skipped)
                self._body()
        elif self._reading is _Reading.CHUNK_SIZE:
            size = _number(line.split(b";")[0], 16)
            self._reading = _Reading.CHUNK_DATA if size else _Reading.TRAILERS
            self._left = size + 2 if size else 0
        elif self._reading is _Reading.TRAILERS and not line:
            self._next_request()

    def _header(self, line: bytes) -> None:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            self._content_length = _number(value, 10)
        elif name == b"transfer-encoding":
            self._chunked = value.split(b",")[-1].strip().lower() == b"chunked"

    def _body(self) -> None:
        if self._chunked:
            self._reading = _Reading.CHUNK_SIZE
        elif self._content_length:
            self._reading, self._left = _Reading.BODY, self._content_length
        else:
            self._next_request()


def _number(text: bytes, base: int) -> int:
    """A length as framing reads it; what the parser refuses (400) counts as 0, the stricter reading."""
    try:
        return max(0, int(text.strip(), base))
    except ValueError:
        return 0


class HeadLimitedParser:
    """aiohttp's request parser, each head's bytes counted before it reads them."""

    def __init__(self, parser: Any, limit: int) -> None:
        self._parser = parser
        self._meter = HeadMeter(limit)
        self._refused = False

    def feed_data(self, data: bytes) -> Any:
        try:
            return self._feed(data)
        except HttpProcessingError as refused:  # answered 400 and the connection closed, as aiohttp does
            return [(_ErrInfo(status=400, exc=refused, message=refusal_reason(refused)), EMPTY_PAYLOAD)], False, b""

    def _feed(self, data: bytes) -> Any:
        if self._refused:  # the connection closes once the 431 is sent
            return (), False, b""
        try:
            self._meter.count(data)
        except HeadTooLarge as too_large:
            # The requests before, and the head to the limit: the parser may find its own limit passed first (400).
            messages, upgraded, tail = self._parser.feed_data(data[: too_large.within])
            if upgraded:  # what follows is the websocket's, or fed again (and counted afresh) once declined
                return messages, True, tail + data[too_large.within :]
            self._refused = True
            refusal = _ErrInfo(status=too_large.code, exc=too_large, message=too_large.message)
            return [*messages, (refusal, EMPTY_PAYLOAD)], False, b""
        return self._parser.feed_data(data)

    def set_upgraded(self, upgraded: bool) -> None:
        if not upgraded:  # a declined Upgrade: what followed that request is fed again, from a request's start
            self._meter = HeadMeter(self._meter.limit)
        self._parser.set_upgraded(upgraded)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def refusal_reason(refused: HttpProcessingError) -> str:
    """What the parser found wrong, without the request: its message quotes the bytes after a colon (`Got more
    than 16384 bytes when reading: bytearray(b'/api/jobs?token=…`, `Invalid header value char:` then the line on
    the lines below), and an invalid URL's may be the URL alone."""
    if isinstance(refused, InvalidURLError):
        return "Invalid URL in the request line"
    if isinstance(refused, ContentEncodingError):  # names the encoding, one of the few aiohttp decodes
        return refused.message.partition("\n")[0]
    first = refused.message.partition("\n")[0].strip()
    if first.endswith(":"):  # llhttp's reason, which may hold a colon (`Data after \`Connection: close\``)
        return first.removesuffix(":")
    return first.partition(":")[0].strip() or "Malformed request"


def limit_head_size(handler: Any, limit: int) -> None:
    """Bound the heads ``handler`` (aiohttp's protocol of one connection, just made) reads to ``limit`` bytes."""
    handler._parser = HeadLimitedParser(handler._parser, limit)
