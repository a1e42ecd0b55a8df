"""The log of a file saved every tick that cannot be saved (full disk, read-only volume): at an error line a tick it
was 5 760 lines a day at 15 s, burying everything else."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog

from common.log_throttle import LogThrottle, held_back_logger
from common.logs import error_text

log = structlog.get_logger()

SAVE_FAILED_LOG_EVERY_S = 600.0


class SaveFailures:
    """The first failure is logged (``failed_event``, error), then at most one every SAVE_FAILED_LOG_EVERY_S with
    how many more failed since (those of the last window that no later failure logs: ``failed_event`` +
    ``_held_back`` when it ends); the first save that works again is logged once (``saved_event``)."""

    def __init__(self, failed_event: str, saved_event: str, hint: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._failed_event, self._saved_event, self._hint = failed_event, saved_event, hint
        self._clock = clock
        self._throttle: LogThrottle | None = None  # while saves fail
        self._failures = 0

    def failed(self, path: Path, error: Exception) -> None:
        if self._throttle is None:
            held_back = held_back_logger(log, "error", self._failed_event + "_held_back")
            self._throttle = LogThrottle(SAVE_FAILED_LOG_EVERY_S, self._clock, report_held_back=held_back)
        self._failures += 1
        if (since := self._throttle.occurred()) is not None:
            log.error(self._failed_event, path=str(path), error=error_text(error), more_since_last=since - 1,
                      hint=self._hint)

    def flush(self) -> None:
        """Report the failures held back now (at exit: no later failure nor the window's end will)."""
        if self._throttle is not None:
            self._throttle.flush()

    def saved(self, path: Path) -> None:
        if self._throttle is not None:
            self._throttle.flush()  # before the line saying saves work again, not after it
            log.info(self._saved_event, path=str(path), failures=self._failures)
            self._throttle, self._failures = None, 0
