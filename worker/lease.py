"""Contract item 3: while the worker holds a job, it tells the embedded queue manager so every LEASE_HEARTBEAT_S.

A 409 means the manager already handed the job to someone else (this worker was silent for its LEASE_TIMEOUT_S):
the caller abandons the job. comfy-multi has no such route (404 "Not Found"): heartbeats stop for good, and a
job without an attempt (comfy-multi's) is never heartbeated at all.

Once the job's report is being sent, a heartbeat that arrived after it landed would be refused, and the manager
would log `report_fenced_out`, a stale worker's sign: the heartbeat in flight is cancelled and the next ones are
held back, unless half the lease goes unrenewed (REPORT_RETRY_BUDGET_S, 120 s, outlasts a 60-s lease).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from worker.queue_client import JobGone, NotMine, QueueClient, RouteUnknown

log = structlog.get_logger()

BEATS_PER_LEASE = 4  # a lease the manager says is shorter than LEASE_HEARTBEAT_S is renewed this often within it
MIN_INTERVAL_S = 0.05  # however short a lease it says


class JobLease:
    def __init__(self, queue: QueueClient, interval_s: float) -> None:
        self.queue = queue
        self.interval_s = interval_s
        self.supported = True
        self._reported: tuple[str, int] | None = None  # the job and attempt whose report is being sent
        self._beat: asyncio.Task[None] | None = None

    async def keep(
        self, job_id: str, attempt: int | None, on_lost: Callable[[str], None], lease_timeout_s: float | None = None
    ) -> None:
        """Heartbeat until cancelled; call on_lost(why) once when the job is no longer this worker's.
        lease_timeout_s: the lease the manager said it holds the job for; beaten BEATS_PER_LEASE times within."""
        if attempt is None or not self.supported:
            return
        interval_s = self.interval_s
        if lease_timeout_s is not None:
            interval_s = min(interval_s, max(lease_timeout_s / BEATS_PER_LEASE, MIN_INTERVAL_S))
        held_at_most_s = (interval_s * BEATS_PER_LEASE if lease_timeout_s is None else lease_timeout_s) / 2
        renewed_at = time.monotonic()  # handed out: the manager's lease counts from then
        while True:
            await asyncio.sleep(interval_s)
            if self._reported == (job_id, attempt) and time.monotonic() - renewed_at < held_at_most_s:
                continue
            # Within one interval: a heartbeat left to HTTP_TIMEOUT_S (30 s) on a stalled connection put
            # 15 + 30 + 15 s of silence between renewals, the whole 60 s lease.
            beat = self._beat = asyncio.create_task(self.queue.heartbeat(job_id, attempt, deadline_s=interval_s))
            try:
                await asyncio.wait({beat})
            finally:
                beat.cancel()  # when keep itself is cancelled
                self._beat = None
            if beat.cancelled():  # by hold_for_report
                continue
            exc = beat.exception()
            if exc is None:
                renewed_at = time.monotonic()
            elif isinstance(exc, RouteUnknown):
                self.supported = False
                log.info("The queue manager has no heartbeat route; not sending job heartbeats")
                return
            elif isinstance(exc, (NotMine, JobGone)):
                on_lost(str(exc))
                return
            else:  # any answer: a task ended by one ended the heartbeats silently, job running on
                log.warning("Job heartbeat failed; trying again at the next beat", error=f"{type(exc).__name__}: {exc}")

    def hold_for_report(self, job_id: str, attempt: int | None) -> None:
        """The job's report is about to be sent: cancel the heartbeat in flight (before the report's first byte:
        the cancellation runs first) and send the next only once half the lease has gone unrenewed. The caller
        cancels keep once the report is answered."""
        self._reported = None if attempt is None else (job_id, attempt)
        if self._beat is not None:
            self._beat.cancel()
