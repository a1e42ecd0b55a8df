"""One log line at most every so often for an event a client can repeat thousands of times a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class LogThrottle:
    """The first occurrence is logged, then at most one every ``interval_s``, each telling how many occurred since
    the last one logged: the operator still sees that it happens and how often, and a flood cannot fill the log.

    Given ``report_held_back``, the occurrences of a window that no later one logs (the flood stopped) are
    reported through it when the window ends (on the running event loop), or at ``flush()``: without it, they were
    never counted anywhere."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic,
                 report_held_back: Callable[[int], None] | None = None) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._report_held_back = report_held_back
        self._logged_at = float("-inf")
        self._since = 0
        self._window_end: asyncio.TimerHandle | None = None

    def occurred(self) -> int | None:
        """Count one occurrence. When it is to be logged: the occurrences since the last one logged, this one
        included; otherwise None."""
        self._since += 1
        now = self._clock()
        if now - self._logged_at < self.interval_s:
            self._flush_at_window_end(self._logged_at + self.interval_s - now)
            return None
        self._logged_at, since, self._since = now, self._since, 0
        return since

    def flush(self) -> None:
        """Report the occurrences held back since the last one logged, if any (at the window's end, at exit)."""
        if self._window_end is not None:
            self._window_end.cancel()
            self._window_end = None
        if self._since and self._report_held_back is not None:
            since, self._since = self._since, 0
            self._report_held_back(since)

    def _flush_at_window_end(self, delay_s: float) -> None:
        if self._report_held_back is None or self._window_end is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop here: flush() alone reports them
            return
        self._window_end = loop.call_later(delay_s, self.flush)


def held_back_logger(log: Any, level: str, event: str, **fields: Any) -> Callable[[int], None]:
    """A ``report_held_back`` logging ``event`` at ``level`` with ``more_since_last`` (and ``fields``)."""
    # log's method is looked up at each report: one bound now would keep the logging configuration of now
    return lambda since: getattr(log, level)(event, more_since_last=since, **fields)
