"""A cap on the connections an aiohttp server keeps while their client still sends its request.

Each open connection holds a file descriptor and a few KB (up to its whole head while one arrives), and nothing
bounded how many a client may open: every server raises its open-file limit on purpose (common/limits.py), and
20 000 half-sent requests left the queue manager at its limit, /health timing out (bench/idle_connections.py).
Past the cap the connection that has waited longest for its request (idle, or still sending its head or body) is
closed, answers not yet taken by its client dropped: a fresh request, a probe's /health, arrives whole in a few
milliseconds and is served. A request the server is working on, its body all in, is never closed.

Below the cap, a client that asks for answers and never reads them kept its connection, and the answers it left
unsent, for ever: aiohttp has no write timeout, and its keep-alive close waits to send them first
(bench/stalled_readers.py). A connection with bytes unsent whose client has taken none of them for WRITE_STALL_S
(nginx's send_timeout) is reset, its answers dropped; one whose client reads, however slowly, is kept.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from common.head_size import limit_head_size
from common.limits import RequestHeads
from common.log_throttle import LogThrottle
from common.send_progress import drop, send_progress

log = structlog.get_logger()

# Far above what probes, scrapers, workers and a proxy's pool keep open (tens); far below the open-file limit.
MAX_WAITING_CONNECTIONS = 1000
# One warning line at most this often while connections are being closed, with how many.
WARN_EVERY_S = 60.0
# What a handler still running at stop gets to end: one writing to a client that does not read, or lingering on a
# body never sent. aiohttp's default (60 s, then 60 s more once cancelled) kept a process's exit waiting minutes.
SHUTDOWN_TIMEOUT_S = 1.0
# How long a connection may have bytes unsent with its client taking none of them (common.send_progress).
WRITE_STALL_S = 60.0


class WaitingConnections:
    """Connections of one server, oldest wait first; past ``limit`` the oldest still waiting is closed.

    Wire it in two places: ``middleware`` first in the application's list (it sees a request begin and end), and
    ``start_runner(app)`` to set the server up (it sees connections open and close, and bounds each one's request
    heads to ``heads``)."""

    def __init__(self, server_name: str, heads: RequestHeads, write_stall_s: float = WRITE_STALL_S) -> None:
        self.limit = MAX_WAITING_CONNECTIONS
        self._write_stall_s = write_stall_s
        self._server_name = server_name
        self._heads = heads
        # handler → (transport, its request while one runs); insertion order = since when it waits.
        self._open: dict[Any, tuple[asyncio.Transport, web.BaseRequest | None]] = {}
        self._warnings = LogThrottle(WARN_EVERY_S, report_held_back=self._warn_closed)
        # handler → (its send_progress mark, since when that mark), for those with bytes unsent at the last sweep.
        self._unsent: dict[Any, tuple[int, float]] = {}
        self._stalls = LogThrottle(WARN_EVERY_S, report_held_back=self._warn_stalled)
        self._sweeping: asyncio.Task[None] | None = None

    async def start_runner(
        self, app: web.Application, shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S
    ) -> web.AppRunner:
        """``app``'s runner, set up: its connections watched, their heads read within ``heads``, its stop bounded by
        ``shutdown_timeout_s``. No access log: probes, scrapes and workers' polls arrive every few seconds and would
        drown every other line."""
        app.on_startup.append(self._start_sweeping)
        app.on_cleanup.append(self._stop)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=shutdown_timeout_s, **self._heads.runner_kwargs()
        )
        await runner.setup()
        self._watch(runner.server)
        return runner

    def _watch(self, server: web.Server) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)  # as raised at start (common/limits.py)
        # Half the open-file limit at most: the other half stays for the requests being served and the files.
        room = soft // 2 if soft != resource.RLIM_INFINITY else MAX_WAITING_CONNECTIONS
        self.limit = max(1, min(MAX_WAITING_CONNECTIONS, room))
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            limit_head_size(handler, self._heads.max_head_bytes)
            self._open[handler] = (transport, None)
            if len(self._open) > self.limit:
                self._close_the_oldest_waiting()

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            lost(handler, exc)
            self._open.pop(handler, None)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        protocol = request.protocol
        transport = self._open.get(protocol, (None, None))[0]
        if transport is not None:
            self._open[protocol] = (transport, request)  # keeps its place: it waits on until its body is in
        try:
            return await handler(request)
        finally:
            if self._open.pop(protocol, None) is not None and transport is not None:
                self._open[protocol] = (transport, None)  # answered: it waits for its next request from now

    def _close_the_oldest_waiting(self) -> None:
        for handler, (transport, request) in self._open.items():
            if request is None or not request.content.is_eof():
                del self._open[handler]
                drop(transport)  # close() or abort() left its answers to be sent to a client that may never take them
                self._warn()
                return

    def _warn(self) -> None:
        closed = self._warnings.occurred()
        if closed is not None:
            self._warn_closed(closed)

    async def _start_sweeping(self, _app: web.Application) -> None:
        self._sweeping = asyncio.create_task(self._sweep_every(self._write_stall_s / 4))

    async def _sweep_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self._close_the_stalled(asyncio.get_running_loop().time())

    def _close_the_stalled(self, now: float) -> None:
        """Close each connection that had bytes unsent at every sweep for WRITE_STALL_S, its client taking none."""
        unsent, stalled = {}, []
        for handler, (transport, _) in self._open.items():  # at most `limit` of them
            size, mark = send_progress(transport)
            if not size:
                continue
            last_mark, since = self._unsent.get(handler, (mark, now))
            since = since if last_mark == mark else now
            if now - since >= self._write_stall_s:
                stalled.append(handler)
            else:
                unsent[handler] = (mark, since)
        self._unsent = unsent
        for handler in stalled:
            drop(self._open.pop(handler)[0])
            closed = self._stalls.occurred()
            if closed is not None:
                self._warn_stalled(closed)

    async def _stop(self, _app: web.Application) -> None:  # at stop: no more sweeps; the closes not yet logged are
        if self._sweeping is not None:
            self._sweeping.cancel()
        self._warnings.flush()
        self._stalls.flush()

    def _warn_closed(self, closed: int) -> None:
        log.warning(
            "connections_over_limit",
            server=self._server_name,
            limit=self.limit,
            closed=closed,
            hint="more clients than this hold connections open without a request: the longest waiting are closed",
        )

    def _warn_stalled(self, closed: int) -> None:
        log.warning(
            "connections_not_reading_closed",
            server=self._server_name,
            stall_s=self._write_stall_s,
            closed=closed,
            hint="clients asked for answers and read none of them for stall_s seconds: their connections are closed",
        )
