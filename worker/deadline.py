"""One deadline for everything after SIGTERM: the signal's time plus the platform's kill delay.

Every wait after the signal (drain, interrupt, hand back, report, stopping ComfyUI) runs inside `bounded()`
or sizes itself from `remaining()`, so none outlives the SIGKILL that follows; a wait that started before
the signal (a report already retrying) is shortened to the deadline when the signal arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator


class ShutdownDeadline:
    def __init__(self, kill_delay_s: float) -> None:
        self.kill_delay_s = kill_delay_s
        self._at: float | None = None  # event-loop time
        self._scopes: set[asyncio.Timeout] = set()

    @property
    def started(self) -> bool:
        return self._at is not None

    def start(self) -> None:
        """Called on the first stop signal; later calls keep the first deadline."""
        if self._at is not None:
            return
        self._at = asyncio.get_running_loop().time() + self.kill_delay_s
        for scope in self._scopes:
            self._cap(scope)

    def remaining(self) -> float:
        """Seconds left before the platform kills the process; infinite before a stop signal."""
        if self._at is None:
            return math.inf
        return max(0.0, self._at - asyncio.get_running_loop().time())

    @contextlib.asynccontextmanager
    async def bounded(self) -> AsyncIterator[None]:
        """Raise TimeoutError out of the block at the deadline, including one set while the block runs."""
        async with asyncio.timeout_at(self._at) as scope:
            self._scopes.add(scope)
            try:
                yield
            finally:
                self._scopes.discard(scope)

    def _cap(self, scope: asyncio.Timeout) -> None:
        when = scope.when()
        if self._at is not None and not scope.expired() and (when is None or when > self._at):
            scope.reschedule(self._at)
