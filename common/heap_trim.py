"""Giving the C heap's free pages back to the system after a burst.

glibc keeps the memory a process has freed in its heap for the next allocation, and returns it only from the heap's
top: a few live allocations above the freed ones hold it all. After 1000 connections sent their request heads and
closed, the queue manager kept 54 MB of freed heap for good; `malloc_trim(0)` returns it in ~10 ms
(bench/head_memory.py). Where there is no glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger()

# Once a minute: a trim finds what a burst freed within a minute of its end, and costs milliseconds when it runs.
TRIM_EVERY_S = 60.0
# A trim that returns less is routine (what ordinary requests freed since the last); more is worth a line.
LOG_FROM_BYTES = 8 * 1024 * 1024


@functools.cache
def _glibc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (AttributeError, OSError, TypeError):  # no glibc: musl, macOS; no CDLL(None): Windows
        return None


def malloc_trim() -> bool:
    """Return the heap's free pages to the system (glibc's ``malloc_trim(0)``). False where there is no glibc."""
    trim = _glibc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def rss_bytes() -> int | None:
    """This process's resident memory, or None where /proc does not tell it."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """Trims the heap every ``every_s`` until stopped, off the event loop; logs the trims that return much."""

    def __init__(
        self,
        server_name: str,
        every_s: float = TRIM_EVERY_S,
        trim: Callable[[], object] = malloc_trim,
        rss: Callable[[], int | None] = rss_bytes,
    ) -> None:
        self._server_name = server_name
        self._every_s = every_s
        self._trim = trim
        self._rss = rss

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._every_s)
            if not stop.is_set():
                await self.trim_once()

    async def trim_once(self) -> None:
        before, after = await asyncio.to_thread(self._trim_measured)
        if before is not None and after is not None and before - after >= LOG_FROM_BYTES:
            log.info(
                "heap_trimmed",
                server=self._server_name,
                rss_before_mb=round(before / 2**20),
                rss_after_mb=round(after / 2**20),
                returned_mb=round((before - after) / 2**20),
            )

    def _trim_measured(self) -> tuple[int | None, int | None]:
        before = self._rss()
        self._trim()
        return before, self._rss()
