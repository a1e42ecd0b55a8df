"""One log line at most every so often for an event a client can repeat thousands of times a second."""

from __future__ import annotations

import time
from collections.abc import Callable


class LogThrottle:
    """The first occurrence is logged, then at most one every ``interval_s``, each telling how many occurred since
    the last one logged: the operator still sees that it happens and how often, and a flood cannot fill the log."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._logged_at = float("-inf")
        self._since = 0

    def occurred(self) -> int | None:
        """Count one occurrence. When it is to be logged: the occurrences since the last one logged, this one
        included; otherwise None."""
        self._since += 1
        now = self._clock()
        if now - self._logged_at < self.interval_s:
            return None
        self._logged_at, since, self._since = now, self._since, 0
        return since
