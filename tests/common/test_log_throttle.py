"""The held-back count of a LogThrottle, logged by the one helper its callers share."""

from __future__ import annotations

import structlog
from structlog.testing import LogCapture

from common.log_throttle import LogThrottle, held_back_logger

log = structlog.get_logger()


def test_the_held_back_occurrences_are_logged_with_the_event_level_and_fields() -> None:
    throttle = LogThrottle(60, lambda: 0.0, report_held_back=held_back_logger(log, "error", "x_held_back", status=401))
    saved, capture = structlog.get_config(), LogCapture()
    structlog.configure(processors=[capture])  # after the throttle was made, as configure_logging at a start
    try:
        assert throttle.occurred() == 1
        assert throttle.occurred() is None
        assert throttle.occurred() is None
        throttle.flush()
    finally:
        structlog.configure(**saved)
    assert capture.entries == [{"event": "x_held_back", "log_level": "error", "more_since_last": 2, "status": 401}]
