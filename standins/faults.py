"""What the fake provider APIs share: the requests they received and the faults a test injects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class RecordedRequest:
    method: str
    path: str
    json: Any  # the parsed body; the raw text when it is not JSON; None when there is none


async def record(request: web.Request, path: str) -> RecordedRequest:
    try:
        body = await request.json() if request.can_read_body else None
    except ValueError:
        body = await request.text()
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


class FaultPlan:
    """Faults queued per path; each answers the next matching requests until its count runs out."""

    def __init__(self) -> None:
        self._by_path: dict[str, list[Fault]] = {}

    def add(
        self,
        path: str,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        non_json: bool = False,
        retry_after: str | None = None,
        after_effect: bool = False,
    ) -> None:
        fault = Fault(status, times, method.upper() if method else None, non_json, retry_after, after_effect)
        self._by_path.setdefault(path, []).append(fault)

    def take(self, path: str, method: str) -> Fault | None:
        for fault in self._by_path.get(path, []):
            if fault.remaining > 0 and fault.method in (None, method):
                fault.remaining -= 1
                return fault
        return None
