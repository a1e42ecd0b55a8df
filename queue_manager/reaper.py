"""Fails jobs left `running` too long, as the peer's background task does: a worker that died never reports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from queue_manager.store import JobStore

log = structlog.get_logger()

TIMEOUT_ERROR = "Job timeout exceeded"


class JobReaper:
    def __init__(self, store: JobStore, *, job_timeout_s: float, interval_s: float, clock: Callable[[], float]):
        self._store = store
        self._job_timeout_s = job_timeout_s
        self._interval_s = interval_s
        self._clock = clock

    def reap(self) -> list[str]:
        """One pass: fail every job that started more than job_timeout_s ago and is still running."""
        stale = self._store.fail_running_started_before(self._clock() - self._job_timeout_s, TIMEOUT_ERROR)
        if stale:
            log.warning("jobs_timed_out", count=len(stale), job_ids=stale, job_timeout_s=self._job_timeout_s)
        return stale

    async def run(
        self, stop: asyncio.Event, run_in_db: Callable[[Callable[[], list[str]]], Awaitable[list[str]]]
    ) -> None:
        """Reap every interval_s until `stop` is set. A failed pass is logged and retried next interval."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval_s)
            if stop.is_set():
                return
            try:
                await run_in_db(self.reap)
            except Exception:
                log.exception("reaper_pass_failed")
