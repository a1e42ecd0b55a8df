"""Refused requests in the log: one warning line per kind of refusal, throttled.

An operator at 2 a.m. tells a worker with the wrong token (401/403 on every poll) from a client sending bad jobs
(422) or a flood, without the tokens or the bodies: the line names the status, the route (never the raw path), the
peer and the cause the client was given. A client can repeat a refusal thousands of times a second, so each status
logs its first, then at most one a minute, telling how many more there were (those of the last minute of a flood
in one more line when that minute ends).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from common.log_throttle import LogThrottle, held_back_logger
from common.logs import scrubbed_excerpt

log = structlog.get_logger()

REFUSAL_LOG_EVERY_S = 60.0
CAUSE_LIMIT = 200
CAUSES_NAMED = 3  # of a 422's list of fields
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refusal_cause(response: web.StreamResponse) -> str:
    """What the client was told, from the answer's {"detail": ...}: its text, or a 422's fields and messages (never
    the values the client sent)."""
    body = getattr(response, "body", None)
    try:
        detail = json.loads(body)["detail"] if isinstance(body, bytes) else None
    except (ValueError, TypeError, KeyError):
        detail = None
    if isinstance(detail, list):
        named = [f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', '')}"
                 for error in detail[:CAUSES_NAMED] if isinstance(error, dict)]
        more = f" (+{len(detail) - CAUSES_NAMED} more)" if len(detail) > CAUSES_NAMED else ""
        detail = "; ".join(named) + more
    return scrubbed_excerpt(detail, CAUSE_LIMIT) if isinstance(detail, str) else ""


class RefusalLog:
    """The refusal lines of one server: ``middleware`` logs them; ``flush()``, at its stop, the counts held back."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._throttles: dict[int, LogThrottle] = {}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if 400 <= response.status < 500:
            if response.status not in self._throttles:
                self._throttles[response.status] = LogThrottle(
                    REFUSAL_LOG_EVERY_S, self._clock,
                    report_held_back=held_back_logger(log, "warning", "Request refused held back",
                                                      status=response.status),
                )
            if (refused := self._throttles[response.status].occurred()) is not None:
                route = request.match_info.route.name or "no such route"
                log.warning("Request refused", status=response.status, method=request.method, route=route,
                            peer=request.remote, cause=refusal_cause(response), more_since_last=refused - 1)
        return response

    def flush(self) -> None:
        for throttle in self._throttles.values():
            throttle.flush()
