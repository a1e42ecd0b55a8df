"""Reading a peer's HTTP answer with a ceiling, so a broken or hostile peer cannot fill this process's memory.

httpx reads a whole body into memory before the caller sees it; ``request_bounded`` reads it in chunks and gives
up as soon as more than the limit has arrived (or a larger Content-Length is announced). It asks for no
compression, and counts the bytes after unpacking, so a small compressed bomb is stopped too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import structlog

log = structlog.get_logger()

MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a generous ceiling: a day of replicas or 200 listed jobs is well below it
# What an API answering counts and short lists may send (the scaler's peers: Verda, RunPod, the queue manager; their
# answers are KB). Parsed, JSON takes 20-70 times its size: a 63 MiB replica list of {} took 4.2 GB of RSS.
API_ANSWER_BYTES = 4 * 1024 * 1024
_NOT_FORWARDED = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class AnswerTooLarge(Exception):
    """A peer answered more than the reader's limit: a failed read (not retried: it would answer the same)."""


async def request_bounded(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    peer: str,
    limit_bytes: int = MAX_ANSWER_BYTES,
    deadline_s: float | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """``http.request(method, url, **kwargs)`` with the body read at most to ``limit_bytes``; AnswerTooLarge past it
    (logged as ``peer_answer_too_large`` naming ``peer`` and the limit). With ``deadline_s``, the whole exchange
    takes at most that long, else httpx.ReadTimeout: httpx's own timeout bounds each read, so a peer sending a
    byte now and then held the caller for days."""
    request = http.build_request(method, url, **kwargs)
    # A compressed answer could unpack to far more than the bytes that arrived: ask for none (what a server
    # sends compressed anyway is counted as it unpacks).
    request.headers["Accept-Encoding"] = "identity"
    try:
        async with asyncio.timeout(deadline_s):
            response = await http.send(request, stream=True)
            try:
                body = await read_at_most(response, limit_bytes)
            finally:
                await response.aclose()
    except AnswerTooLarge as exc:
        raise _too_large(peer, request, limit_bytes, str(exc)) from None
    except TimeoutError:
        where = f"{request.method} {request.url.path}"
        raise httpx.ReadTimeout(f"{peer} took more than {deadline_s:g} s to answer {where}", request=request) from None
    headers = [(name, value) for name, value in response.headers.multi_items() if name.lower() not in _NOT_FORWARDED]
    return httpx.Response(response.status_code, headers=headers, content=bytes(body), request=request)


async def read_at_most(response: httpx.Response, limit_bytes: int) -> bytearray:
    """The body of a streamed ``response``; AnswerTooLarge (saying what was seen) as soon as it announces or
    delivers more than ``limit_bytes``, before more is read."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise AnswerTooLarge(f"announced {declared} bytes")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit_bytes:
            raise AnswerTooLarge(f"more than {limit_bytes} bytes arrived")
    return body


def _too_large(peer: str, request: httpx.Request, limit_bytes: int, seen: str) -> AnswerTooLarge:
    where = f"{request.method} {request.url.path}"
    log.error("peer_answer_too_large", peer=peer, request=where, limit_bytes=limit_bytes, seen=seen,
              hint="the read counts as failed; a peer answering this much is broken (or not the one configured)")
    return AnswerTooLarge(f"{peer} answered {where} with more than {limit_bytes} bytes ({seen}): read given up")
