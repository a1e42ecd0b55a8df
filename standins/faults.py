"""What the fake provider APIs share: serving on loopback, the requests they received and the faults a test
injects."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

from common.urls import host_port

PROXY_ERROR_PAGE = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


@dataclass
class RecordedRequest:
    method: str
    path: str
    json: Any  # the parsed body; the raw text when it is not JSON; None when there is none


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(number: str) -> float:
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(f"{number} is out of a number's range")
    return value


async def record(request: web.Request, path: str) -> RecordedRequest:
    """A body that is not UTF-8 or nests deeper than Python's json can read is not JSON either, not a 500; nor is
    NaN, Infinity or 1e999 (which Python's json reads as numbers, and the real APIs refuse)."""
    if not request.can_read_body:
        return RecordedRequest(request.method, path, None)
    raw = await request.read()
    try:
        body = json.loads(raw.decode(), parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError):
        body = raw.decode(errors="replace")
    return RecordedRequest(request.method, path, body)


def requests_to(requests: list[RecordedRequest], path: str, method: str | None = None) -> list[RecordedRequest]:
    return [r for r in requests if r.path == path and (method is None or r.method == method)]


@dataclass
class Fault:
    status: int
    remaining: int
    method: str | None
    non_json: bool
    retry_after: str | None
    after_effect: bool = False  # carry the request out, then replace its answer (a lost reply)
    body: Any = None  # answer this JSON instead of the API's error body (a 200 of the wrong shape, say)


class FaultPlan:
    """Faults queued per path; each answers the next matching requests until its count runs out."""

    def __init__(self) -> None:
        self._by_path: dict[str, list[Fault]] = {}

    def add(self, path: str, fault: Fault) -> None:
        self._by_path.setdefault(path, []).append(fault)

    def take(self, path: str, method: str) -> Fault | None:
        for fault in self._by_path.get(path, []):
            if fault.remaining > 0 and fault.method in (None, method):
                fault.remaining -= 1
                return fault
        return None


class FakeApi:
    """Base of the fake provider APIs: start/stop on loopback, the request log and `fail_next`.

    Paths given to `fail_next` and `requests_to` are relative to the subclass's `api_prefix` (e.g. "/v1").
    """

    api_prefix = ""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._faults = FaultPlan()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Each fake builds its routes and calls `_serve`; returns `url`."""
        raise NotImplementedError

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        """Serve `app`, set `url` and return the port bound."""
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.url = f"http://{host_port(host, bound_port)}{self.api_prefix}"
        return bound_port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def fail_next(
        self,
        path: str,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        non_json: bool = False,
        retry_after: str | None = None,
        after_effect: bool = False,
        body: Any = None,
    ) -> None:
        """The next `times` calls to `path` (relative to the API prefix, e.g. "/pods") answer `status`.

        With `after_effect` the request is carried out first and only its answer is replaced (a lost reply),
        as Verda has been seen answering 500 to a POST /container-deployments that did create the deployment.
        With `body` the answer is that JSON: a 200 of the wrong shape, a list for an object.
        """
        fault = Fault(status, times, method.upper() if method else None, non_json, retry_after, after_effect, body)
        self._faults.add(path, fault)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        return requests_to(self.requests, path, method)


def fault_headers(fault: Fault) -> dict[str, str] | None:
    return {"Retry-After": fault.retry_after} if fault.retry_after is not None else None


def proxy_error_page(status: int, headers: dict[str, str] | None = None) -> web.Response:
    """What a gateway in front of the API answers: an HTML page, not the API's JSON."""
    return web.Response(status=status, text=PROXY_ERROR_PAGE, content_type="text/html", headers=headers)


def reshaped(response: web.StreamResponse, rewrite: Callable[[Any], Any]) -> web.StreamResponse:
    """A JSON answer with its JSON replaced by `rewrite(JSON)`, status kept: a 200 of the wrong shape, as a broken
    server or a proxy or plug-in in front of it may send. Any other answer is left as it is."""
    if not isinstance(response, web.Response) or response.content_type != "application/json" or not response.body:
        return response
    return web.json_response(rewrite(json.loads(response.body)), status=response.status)
