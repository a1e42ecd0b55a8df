"""Contract item 3: while the worker holds a job, it tells the embedded queue manager so every LEASE_HEARTBEAT_S.

A 409 means the manager already handed the job to someone else (this worker was silent for its LEASE_TIMEOUT_S):
the caller abandons the job. comfy-multi has no such route (404 "Not Found"): heartbeats stop for good, and a
job without an attempt (comfy-multi's) is never heartbeated at all.
"""

from __future__ import annotations

import asyncio
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
        while True:
            await asyncio.sleep(interval_s)
            try:
                # Within one interval: a heartbeat left to HTTP_TIMEOUT_S (30 s) on a stalled connection put
                # 15 + 30 + 15 s of silence between renewals, the whole 60 s lease.
                await self.queue.heartbeat(job_id, attempt, deadline_s=interval_s)
            except RouteUnknown:
                self.supported = False
                log.info("The queue manager has no heartbeat route; not sending job heartbeats")
                return
            except (NotMine, JobGone) as exc:
                on_lost(str(exc))
                return
            except Exception as exc:  # any answer: a task ended by one ended the heartbeats silently, job running on
                log.warning("Job heartbeat failed; trying again at the next beat", error=f"{type(exc).__name__}: {exc}")
