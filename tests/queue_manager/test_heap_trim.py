"""The queue manager gives back the heap a burst freed: a trim each housekeeping tick (common.heap_trim)."""

from __future__ import annotations

import asyncio
import platform
import threading

import pytest
from structlog.testing import capture_logs

from common import heap_trim
from common.heap_trim import HeapTrimmer
from queue_manager import QueueManagerServer

MB = 2**20


class CountingTrim:
    """Stands in for ``malloc_trim``: counts its calls, and wakes the test at the first."""

    def __init__(self) -> None:
        self.calls = 0
        self.threads: set[str] = set()
        self.called = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def __call__(self) -> bool:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        self._loop.call_soon_threadsafe(self.called.set)
        return True


async def test_the_running_server_trims_its_heap_off_the_event_loop_until_it_stops() -> None:
    trim = CountingTrim()
    server = QueueManagerServer(heap_trim_interval_s=0.01, trim_heap=trim)
    await server.start()
    try:
        await asyncio.wait_for(trim.called.wait(), timeout=30)
    finally:
        await server.stop()
    calls_when_stopped = trim.calls
    await asyncio.sleep(0.05)

    assert calls_when_stopped >= 1
    assert trim.calls == calls_when_stopped
    assert threading.main_thread().name not in trim.threads


async def test_a_trim_that_returns_much_is_logged_with_the_memory_before_and_after() -> None:
    readings = iter([900 * MB, 120 * MB])
    trimmer = HeapTrimmer("queue_manager", trim=lambda: True, rss=lambda: next(readings))

    with capture_logs() as logs:
        await trimmer.trim_once()

    assert logs == [{
        "event": "heap_trimmed", "log_level": "info", "server": "queue_manager",
        "rss_before_mb": 900, "rss_after_mb": 120, "returned_mb": 780,
    }]  # fmt: skip


@pytest.mark.parametrize("readings", [[120 * MB, 119 * MB], [None, None]], ids=["little returned", "rss unknown"])
async def test_a_routine_trim_writes_no_line(readings: list[int | None]) -> None:
    trim = CountingTrim()
    values = iter(readings)
    trimmer = HeapTrimmer("queue_manager", trim=trim, rss=lambda: next(values))

    with capture_logs() as logs:
        await trimmer.trim_once()

    assert trim.calls == 1
    assert logs == []


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibcs_malloc_trim_is_called_for_real() -> None:
    assert heap_trim.malloc_trim() is True
    assert (heap_trim.rss_bytes() or 0) > 0
