"""Limits every server shares: the open-file limit each raises at start, and what its HTTP parser reads of a
request head before it answers 400."""

from __future__ import annotations

import resource
from dataclasses import dataclass

import structlog

log = structlog.get_logger()

# Past the kernel's default ceiling (fs.nr_open) the raise fails; a million connections is plenty anyway.
MAX_OPEN_FILES = 1 << 20


def allow_many_connections() -> None:
    """Raise the soft open-file limit to the hard one. Each connection holds a file descriptor, and containers
    often start at 1024: a thousand idle clients then left a server unable to accept any connection, /health
    included, for as long as they stayed (aiohttp closes an idle one after an hour)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            log.warning("open_files_limit_not_raised", soft=soft, hard=hard, error=str(exc))
            return
        log.info("open_files_limit_raised", soft=soft, to=wanted)


@dataclass(frozen=True)
class RequestHeads:
    """What an aiohttp server reads of one request head. Past a limit the answer is 400 (aiohttp's plain text:
    ``Too many headers received``, ``Got more than N bytes when reading …``, ``Request head longer than N bytes``,
    logged as the warning ``Malformed HTTP request refused (400)``) and the connection is closed, as soon as the
    limit is passed, finished head or not. A head not complete within ``timeout_s`` of the connection opening, or of
    its last answer, is closed unanswered.

    aiohttp bounds each header and how many there are, never their sum: its C parser counts a header's value alone
    against ``max_field_size`` and its name with the name before it, and keeps every header twice (bytes and
    text), so 32 headers let one connection hold ~400 KB. ``max_head_bytes`` caps the head as a whole, request line
    and headers, each kept-alive request's afresh (common.head_size); up to 1000 connections may each hold one
    (common.waiting_connections). bench/head_memory.py measures it."""

    timeout_s: float
    max_line_bytes: int  # the request target: path and query
    max_headers: int
    max_field_bytes: int  # a header's value (its name too)
    max_head_bytes: int  # the request line and every header, to the blank line
    reads_bodies: bool = True  # False: no route reads one, and a body sent anyway is not read on (runner_kwargs)

    def runner_kwargs(self) -> dict[str, float | int]:
        """For ``web.AppRunner``, which passes them on to each connection's parser."""
        kwargs: dict[str, float | int] = {
            "keepalive_timeout": self.timeout_s,  # aiohttp's one timer on a head: an hour by default
            "max_line_size": self.max_line_bytes,
            "max_headers": self.max_headers,
            "max_field_size": self.max_field_bytes,
        }
        if not self.reads_bodies:
            # A body nobody reads: aiohttp buffers up to 128 KiB of it, then after the answer reads on and discards
            # it for 10 s (its lingering close). 200 clients sending endless bodies, each reconnecting at once, held
            # the health server at 99-130 MB, its probe at 150-350 ms p50 (360-860 ms worst); closing once answered
            # alone churned connections to no gain; with 16 KiB buffered, 55-64 MB, 70-120 ms (200-305 ms worst).
            # bench/body_flood.py
            kwargs |= {"read_bufsize": UNREAD_BODY_BUFFER_BYTES, "lingering_time": 0}
        return kwargs


# What a server that reads no body buffers of one (aiohttp pauses reading past twice this) before its answer.
UNREAD_BODY_BUFFER_BYTES = 8 * 1024


# The worker's health server (:8000) and the scaler's metrics server. A probe (Verda's, a kubelet's, curl) sends
# 3-5 short headers, a Prometheus scrape 5 (the longest its Accept, ~230 bytes, or a bearer token if configured,
# ~1 KB); a proxy in front adds ten or so. 1000 connections each holding the largest head took a server from
# 43 MB to 844 MB at aiohttp's 8190 bytes a header, 475 MB at 4096, 90 MB with the whole head at 16 KiB (Node's
# cap on a head): a scrape through a proxy with an SSO's 4 KB token sends ~7 KB, and a full line and a full header
# still fit. 12 s: not a common probe period (5, 10, 15, 30 s), so a client reusing a connection that often never races
# our close; a keep-alive scraper reconnects.
PROBE_HEADS = RequestHeads(
    timeout_s=12.0,
    max_line_bytes=8190,
    max_headers=32,
    max_field_bytes=4096,
    max_head_bytes=16 * 1024,
    reads_bodies=False,  # every route is a GET
)

# The queue manager. The worker and the scaler send 5-8 headers, the longest their bearer token; a reverse proxy
# in front adds its own (X-Forwarded-*, Via, a CDN's ten or so, an SSO's token of a few KB): 32 leaves room for
# them all, and 8190 bytes a header is what nginx, Apache and gunicorn pass on. The line at 16 KiB (the head
# uvicorn's h11 parser reads for comfy-multi): a 10 kB worker_id reaches the 422 that names it, not the parser's
# 400. The whole head at 32 KiB, nginx's large_client_header_buffers (4 of 8 KiB): the longest line, the longest
# token the settings allow and a proxy's ~6 KB take 30 KB. aiohttp's 128 headers let 1000 connections take it from
# 60 MB to 2630 MB; 32 to 865 MB; 32 KiB in all to 146 MB. 75 s: longer than a reverse proxy's idle upstream
# connection (nginx: 60 s), so the proxy, not we, closes an idle one.
QUEUE_HEADS = RequestHeads(
    timeout_s=75.0, max_line_bytes=16 * 1024, max_headers=32, max_field_bytes=8190, max_head_bytes=32 * 1024
)
