"""Background passes over the jobs: hand back running ones whose worker stopped heartbeating (our lease), fail
those running longer than the job timeout (as the peer's background task does), and delete finished ones (and
workers long gone) older than the retention, so the database stops growing."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from queue_manager.outputs_retention import prune_job_folders
from queue_manager.store import JobStore, PurgedJob, is_storage_fault

log = structlog.get_logger()

# The shortest wait between passes: 100 a second at most, however small the interval or the lease asked.
MIN_INTERVAL_S = 0.01
TIMEOUT_ERROR = "Job timeout exceeded"
# The wall clock moving this much more (or less) than the steady clock between two lease passes was stepped (NTP,
# a host resumed from a pause), not slewed: slewing drifts at most 0.5 ms/s, 7.5 ms over a 15 s pass. A pass
# this much later than its interval: the process was stopped (SIGSTOP, a suspended VM, swapping) or its loop blocked.
CLOCK_STEP_TOLERANCE_S = 5.0


class JobReaper:
    def __init__(
        self,
        store: JobStore,
        *,
        job_timeout_s: float,
        interval_s: float,
        clock: Callable[[], float],
        steady_clock: Callable[[], float] | None = None,
        lease_timeout_s: float = 0,
        max_attempts: int = 3,
        finished_job_retention_s: float = 0,
        outputs_dir: Path | None = None,
    ):
        self._store = store
        self._job_timeout_s = job_timeout_s
        self._lease_timeout_s = lease_timeout_s
        self._max_attempts = max_attempts
        self._retention_s = finished_job_retention_s
        self._outputs_dir = outputs_dir
        # Jobs deleted by the last retention pass (on the database's thread) whose folders prune_outputs deletes
        # next (in a worker thread): each is tried once.
        self._to_prune: deque[PurgedJob] = deque()
        # A lease is checked a few times within its timeout, so a silent worker's job waits at most ~1.25x it.
        # Never shorter than MIN_INTERVAL_S: --reaper-interval 1e-300, or LEASE_TIMEOUT_S=1e-9, spun a CPU at 100%.
        interval_s = min(interval_s, lease_timeout_s / 4) if lease_timeout_s > 0 else interval_s
        self._interval_s = max(interval_s, MIN_INTERVAL_S)
        self._clock = clock
        # None: the wall clock is its own steady clock (a test's hand-moved clock), so it is never seen to step.
        self._steady_clock = steady_clock or clock
        self._clocks_read = (clock(), self._steady_clock())
        # How late run() woke for the pass to come, by the event loop's clock, until that pass renews the leases.
        self._late_s = 0.0

    def expire_leases(self) -> list[str]:
        """One pass: hand back every running job whose worker has been silent for lease_timeout_s."""
        self._renew_leases_if_the_clock_stepped()
        if self._lease_timeout_s <= 0:
            return []
        self._renew_leases_if_the_queue_was_frozen()
        released = self._store.release_expired_leases(
            self._clock() - self._lease_timeout_s, max_attempts=self._max_attempts
        )
        for job in released:
            log.warning(
                "job_lease_expired",
                job_id=job.id,
                status=job.status.value,
                attempt=job.attempt,
                reason=job.history[-1]["reason"],
                lease_timeout_s=self._lease_timeout_s,
            )
        return [job.id for job in released]

    def _renew_leases_if_the_clock_stepped(self) -> None:
        """Leases are stored in wall-clock time (they outlive the process): a step of that clock is no worker's
        silence. Forward, it handed every running job back as a fault; back, a dead worker's job stayed running
        for the step. Either way every running lease starts afresh, as when the queue manager starts. Nor did any
        job run for it: forward, the job timeout failed every running job; back, it grew by the step."""
        wall, steady = self._clock(), self._steady_clock()
        step_s = (wall - self._clocks_read[0]) - (steady - self._clocks_read[1])
        if abs(step_s) > CLOCK_STEP_TOLERANCE_S:
            # when the database cannot take it, the next pass sees the step
            renewed = self._store.renew_all_leases(clock_step_s=step_s)
            log.warning("wall_clock_stepped", step_s=round(step_s, 1), running_jobs_leases_renewed=renewed)
        self._clocks_read = (wall, steady)

    def _renew_leases_if_the_queue_was_frozen(self) -> None:
        """The workers' heartbeats could not land while this process was stopped, and the overdue pass runs
        before the ones they send on its waking: every running lease starts afresh, as after a restart."""
        if self._late_s > CLOCK_STEP_TOLERANCE_S:
            renewed = self._store.renew_all_leases()  # when the database cannot take it, the next pass tries again
            log.warning("queue_manager_was_frozen", late_s=round(self._late_s, 1), running_jobs_leases_renewed=renewed)
        self._late_s = 0.0

    def run_pass(self) -> None:
        self.expire_leases()
        self.reap()
        self.purge_finished()

    def reap(self) -> list[str]:
        """One pass: fail every job that started more than job_timeout_s ago and is still running."""
        self._renew_leases_if_the_clock_stepped()
        stale = self._store.fail_running_started_before(self._clock() - self._job_timeout_s, TIMEOUT_ERROR)
        if stale:
            log.warning("jobs_timed_out", count=len(stale), job_ids=stale, job_timeout_s=self._job_timeout_s)
        return stale

    def purge_finished(self) -> int:
        """One pass: delete one batch of jobs that finished more than the retention ago, and of workers not seen
        for as long that hold no running job (0 = keep them all). Returns how many jobs. With outputs_dir, their
        folders there are deleted by the next prune_outputs()."""
        if self._retention_s <= 0:
            return 0
        cutoff = self._clock() - self._retention_s
        purged = 0
        try:
            for job in self._store.purging_finished_before(cutoff):
                purged += 1
                if self._outputs_dir is not None:
                    self._to_prune.append(job)  # even if a later deletion fails: this job is gone
        finally:
            if purged:
                log.info("jobs_purged", count=purged, retention_s=self._retention_s)
        workers = self._store.purge_workers_seen_before(cutoff)
        if workers:
            log.info("workers_purged", count=workers, retention_s=self._retention_s)
        return purged

    async def prune_outputs(self) -> int:
        """Delete, in a worker thread, the folders of the jobs purged since the last call. Returns how many."""
        jobs = []
        while self._to_prune:
            jobs.append(self._to_prune.popleft())
        if not jobs or self._outputs_dir is None:
            return 0
        return await asyncio.to_thread(prune_job_folders, self._outputs_dir, jobs)

    async def run(
        self, stop: asyncio.Event, run_in_db: Callable[[Callable[[], None]], Awaitable[None]]
    ) -> None:
        """Run a pass every interval_s until `stop` is set. A failed pass is logged and retried next interval."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = loop.time() + self._interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval_s)
            if stop.is_set():
                return
            self._late_s = max(self._late_s, loop.time() - due)
            await self.logged_pass(run_in_db)

    async def logged_pass(self, run_in_db: Callable[[Callable[[], None]], Awaitable[None]]) -> None:
        """One pass, then the folders of the jobs it purged; a failure is logged, never raised."""
        try:
            await run_in_db(self.run_pass)
        except sqlite3.Error as exc:
            if not is_storage_fault(exc):
                log.exception("reaper_pass_failed")
            else:  # the cause is named; a traceback each pass while the disk stays full tells nothing more
                log.error("reaper_pass_failed", error=str(exc), code=exc.sqlite_errorname)
        except Exception:
            log.exception("reaper_pass_failed")
        try:  # also after a failed pass: the jobs it deleted before failing are gone
            await self.prune_outputs()
        except Exception:
            log.exception("outputs_pruning_failed")
