"""Test hook: make the next calls to an endpoint misbehave the way a restarting peer or its proxy does."""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

ENDPOINTS = frozenset(
    {
        "next-job",
        "complete-job",
        "fail-job",
        "heartbeat",
        "release-job",
        "queue-status",
        "health",
        "submit-job",
        "get-job",
        "list-jobs",
        "cancel-job",
    }
)


@dataclass(frozen=True)
class Fault:
    """One planned misbehaviour.

    status: answer this HTTP status instead of the real answer; body is its JSON (dict/list) or, when a str,
        a non-JSON text/html page like a proxy's. Default body: {"detail": "<reason phrase>"}.
    drop: close the connection without any answer.
    delay_s: wait this long first (then answer normally unless status or drop is set).
    after: let the request take effect first, then answer the fault: the report landed but its answer is lost.
    """

    status: int | None = None
    body: dict[str, Any] | list[Any] | str | None = None
    drop: bool = False
    delay_s: float = 0.0
    after: bool = False


class FaultInjector:
    """`inject("complete-job", status=503, times=2)` makes the next two complete-job calls answer 503."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._planned: dict[str, deque[Fault]] = defaultdict(deque)

    def inject(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        body: dict[str, Any] | list[Any] | str | None = None,
        drop: bool = False,
        delay_s: float = 0.0,
        after: bool = False,
        times: int = 1,
    ) -> Fault:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {sorted(ENDPOINTS)}")
        if status is None and not drop and delay_s <= 0:
            raise ValueError("a fault needs a status, drop=True or a positive delay_s")
        if status is not None and drop:
            raise ValueError("choose either status or drop")
        if times < 1:
            raise ValueError("times must be at least 1")
        fault = Fault(status=status, body=body, drop=drop, delay_s=delay_s, after=after)
        with self._lock:
            self._planned[endpoint].extend([fault] * times)
        return fault

    def take(self, endpoint: str) -> Fault | None:
        """Consume the next planned fault for this endpoint, if any."""
        with self._lock:
            planned = self._planned.get(endpoint)
            return planned.popleft() if planned else None

    def pending(self, endpoint: str) -> int:
        with self._lock:
            return len(self._planned.get(endpoint, ()))

    def clear(self) -> None:
        with self._lock:
            self._planned.clear()
