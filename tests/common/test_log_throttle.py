"""A LogThrottle's count of what it held back: reported once a window, by the one helper its callers share."""

from __future__ import annotations

import asyncio

import pytest
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


async def test_a_flood_in_one_window_sets_one_timer_to_report_what_it_held_back(monkeypatch) -> None:
    """However many occurrences a window holds back, one timer on the event loop reports them at its end (and a
    throttle with nothing to report them to sets none): a flood must not add a timer per occurrence."""
    loop, delays = asyncio.get_running_loop(), []
    call_later = loop.call_later
    monkeypatch.setattr(loop, "call_later", lambda delay, *rest: delays.append(delay) or call_later(delay, *rest))
    now, reports = [100.0], []
    throttle = LogThrottle(60, lambda: now[0], report_held_back=reports.append)
    unreported = LogThrottle(60, lambda: now[0])
    assert throttle.occurred() == unreported.occurred() == 1
    for _ in range(1000):
        now[0] += 0.01
        assert throttle.occurred() is unreported.occurred() is None
    assert delays == [pytest.approx(60 - 0.01)]
    throttle.flush()
    assert reports == [1000]


def test_after_a_flush_nothing_is_held_back() -> None:
    now, reports = [0.0], []
    throttle = LogThrottle(60, lambda: now[0], report_held_back=reports.append)
    assert (throttle.occurred(), throttle.occurred()) == (1, None)
    throttle.flush()
    throttle.flush()
    assert reports == [1]
    now[0] = 60.0
    assert throttle.occurred() == 1, "the occurrences a flush reported are not counted again"
