"""The one terminal report of a job: completed, failed, or handed back; built once, sent once.

A hand back is for jobs our own infrastructure lost (ComfyUI died, the replica is stopping, a fatal GPU
error): the embedded queue manager puts the job back in line (`release-job`); comfy-multi's cannot, so the
job is resubmitted as a copy with the same priority and the original is failed, naming the copy. Its cause
says whether it may count against the job: a replica that stops never uses up the job's attempts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from common.handbacks import HandBackCause, gives_up
from worker.deadline import ShutdownDeadline
from worker.input_images import MAX_METADATA_BYTES
from worker.jobs import Job
from worker.queue_client import (
    JobGone,
    NotMine,
    QueueClient,
    ReportRejected,
    RouteUnknown,
    SubmissionUnconfirmed,
    TransientHTTPError,
    stored_error,
    stored_reason,
)
from worker.seen_keys import SeenKeys
from worker.state import WorkerState

log = structlog.get_logger()

MAX_REASON_CHARS_IN_METADATA = 500  # a copy carries its predecessors' reasons; keep the metadata small


@dataclass(frozen=True)
class Report:
    job_id: str
    attempt: int | None = None  # the fence (contract item 1); None with comfy-multi
    result: dict[str, Any] | None = None  # set: complete-job
    error: str | None = None  # set: fail-job
    handback: str | None = None  # set: hand the job back with this reason
    cause: HandBackCause = HandBackCause.FAULT  # of a hand back: only a stop with ComfyUI healthy is a shutdown
    job: Job | None = None  # what a resubmitted copy is made of (hand back only)
    workflow_fault: bool = False  # a failure the job's own workflow caused (invalid, refused, a node's error)

    @property
    def completed(self) -> bool:
        return self.result is not None

    @property
    def kind(self) -> str:
        return "completed" if self.completed else "handed_back" if self.handback is not None else "failed"

    @property
    def stored_text(self) -> str | None:
        """The hand-back reason or failure message as the queue manager stores it, which log lines quote."""
        if self.handback is not None:
            return stored_reason(self.handback)
        return stored_error(self.error) if self.error is not None else None


class Reporter:
    """Sends each job's report at most once, and logs why when it cannot reach the queue manager."""

    def __init__(
        self,
        queue: QueueClient,
        state: WorkerState,
        deadline: ShutdownDeadline,
        *,
        max_job_attempts: int = 3,
        memory: int = 10_000,
    ) -> None:
        self.queue = queue
        self.state = state
        self.deadline = deadline
        self.max_job_attempts = max_job_attempts
        self._sent = SeenKeys(memory)
        self.last_rejection: str | None = None  # why the manager last refused a report's shape

    async def send(self, report: Report) -> str:
        """What became of the job: completed, failed or handed_back when the manager accepted the report;
        "refused" when the job is no longer this worker's (404, 409); "rejected" when the manager refused the
        report itself (other 4xx: too large, malformed; it did not land, so another report may follow);
        "undelivered" when it could not be reached in time."""
        key = f"{report.job_id}#{report.attempt}"
        if not self._sent.add(key):
            log.error("Refusing to report a job twice", job_id=report.job_id)
            return "undelivered"

        started = time.monotonic()
        kind = report.kind
        try:
            async with self.deadline.bounded():
                if report.completed:
                    await self.queue.complete_job(report.job_id, report.result or {}, attempt=report.attempt)
                elif report.handback is not None:
                    kind = await self._hand_back(report)
                else:
                    await self.queue.fail_job(report.job_id, report.error or "unknown error", attempt=report.attempt)
        except JobGone as exc:
            log.warning("Job no longer exists on the queue manager; report dropped", error=str(exc))
            return "refused"
        except NotMine as exc:
            log.warning("Job is no longer this worker's (handed back or ended elsewhere); report dropped",
                        error=str(exc))
            return "refused"
        except ReportRejected as exc:
            self.state.metrics.report_errors.inc()
            log.error("Queue manager refused the report", error=str(exc))
            self._sent.forget(key)
            self.last_rejection = str(exc)
            return "rejected"
        except (TransientHTTPError, httpx.TransportError, TimeoutError) as exc:
            self.state.metrics.report_errors.inc()
            why = "the shutdown deadline" if isinstance(exc, TimeoutError) else "the retry budget"
            log.error(
                f"Report could not be delivered within {why}; the queue manager hands the job back when its lease "
                "runs out (comfy-multi's fails it at its job timeout)",
                outcome=kind, error=f"{type(exc).__name__}: {exc}",
                job_error=report.stored_text,
            )
            return "undelivered"
        except Exception as exc:  # an answer no one foresaw must not end the worker: the job is left to the lease
            self.state.metrics.report_errors.inc()
            log.exception("Report failed on an unexpected answer; the queue manager hands the job back when its "
                          "lease runs out (comfy-multi's fails it at its job timeout)",
                          outcome=kind, error=f"{type(exc).__name__}: {exc}", job_error=report.stored_text)
            return "undelivered"
        finally:
            self.state.metrics.observe_phase("report", time.monotonic() - started)

        if kind == "completed":
            log.info(f"Job {report.job_id} completed", outputs=len((report.result or {}).get("outputs", [])))
        elif kind == "failed" and report.handback is None:  # a hand back turned failure is logged by _hand_back
            log.warning(f"Job {report.job_id} failed", error=report.error and stored_error(report.error))
        return kind

    async def _hand_back(self, report: Report) -> str:
        reason = report.handback or "unknown reason"
        try:
            answer = await self.queue.release_job(report.job_id, reason, attempt=report.attempt, cause=report.cause)
        except RouteUnknown:
            return await self._resubmit(report, reason)
        if answer.get("status") == "failed":
            log.warning(f"Job {report.job_id} failed",
                        error=stored_error(f"gave up after {report.attempt} attempts: {reason}"))
            return "failed"
        log.info(f"Job {report.job_id} handed back", reason=stored_reason(reason), cause=report.cause.value,
                 next_attempt=answer.get("attempt"))
        return "handed_back"

    async def _resubmit(self, report: Report, reason: str) -> str:
        """comfy-multi: a copy with the same priority, the original failed naming it. At most max_job_attempts
        faults and MAX_SHUTDOWN_HANDBACKS shutdowns; the copy carries both counts (its runs and its faults)."""
        job = report.job
        assert job is not None, "a hand back carries its job"
        reasons = [*_previous_reasons(job), reason[:MAX_REASON_CHARS_IN_METADATA]]
        attempt = job.attempt_number
        faults = _previous_faults(job)
        shutdowns = attempt - 1 - faults
        if report.cause is HandBackCause.SHUTDOWN:
            shutdowns += 1
        else:
            faults += 1
        if gives_up(faults, shutdowns, self.max_job_attempts):
            error = f"Gave up after {attempt} attempts: " + "; ".join(reasons)
            await self.queue.fail_job(job.id, error)
            log.warning(f"Job {job.id} failed", error=stored_error(error))
            return "failed"
        try:
            priority = await self.queue.job_priority(job.id)
        except (ReportRejected, httpx.HTTPError, ValueError) as exc:
            log.warning("Could not read the job's priority; the copy gets the default", error=str(exc))
            priority = None
        copy_of = {"requeued_from": job.id, "attempt": attempt + 1, "faults": faults, "requeue_reasons": reasons}
        metadata = _within_cap({**job.metadata, **copy_of})
        if metadata is None:
            error = (f"{reason}; resubmitting it failed: the metadata of its copy would be over the queue manager's "
                     f"cap ({MAX_METADATA_BYTES} characters of JSON): please submit it again")
            await self.queue.fail_job(job.id, error)
            log.warning(f"Job {job.id} failed", error=stored_error(error))
            return "failed"
        try:
            new_id = await self.queue.submit_job(job.user_id, job.workflow, metadata, priority=priority)
        except SubmissionUnconfirmed as exc:
            log.error("Could not learn the id of the job's copy", error=str(exc))
            error = f"Handed back: {reason}; {exc}"
            await self.queue.fail_job(job.id, error)
            if not exc.created:
                log.warning(f"Job {job.id} failed", error=stored_error(error))
                return "failed"
            log.info(f"Job {job.id} handed back", reason=stored_reason(reason), cause=report.cause.value,
                     next_attempt=attempt + 1)
            return "handed_back"
        except (ReportRejected, TransientHTTPError, httpx.HTTPError, ValueError) as exc:
            log.error("Could not resubmit the job", error=f"{type(exc).__name__}: {exc}")
            error = f"{reason}; resubmitting it failed ({exc}): please submit it again"
            await self.queue.fail_job(job.id, error)
            log.warning(f"Job {job.id} failed", error=stored_error(error))
            return "failed"
        await self.queue.fail_job(job.id, f"Handed back: {reason}; resubmitted as {new_id}")
        log.info(f"Job {job.id} handed back", reason=stored_reason(reason), cause=report.cause.value, new_job_id=new_id,
                 next_attempt=attempt + 1)
        return "handed_back"


def _within_cap(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """A copy's metadata within the queue manager's cap (the length of its JSON, as the manager measures it), the
    oldest ``requeue_reasons`` left out as needed; None when even without them it is over."""
    reasons = metadata["requeue_reasons"]
    room = MAX_METADATA_BYTES - len(json.dumps({**metadata, "requeue_reasons": []}))
    if room < 0:
        return None
    kept = 0
    for reason in reversed(reasons):
        room -= len(json.dumps(reason)) + (2 if kept else 0)  # ", " between two
        if room < 0:
            break
        kept += 1
    return {**metadata, "requeue_reasons": reasons[len(reasons) - kept:]}


def _previous_reasons(job: Job) -> list[str]:
    reasons = job.metadata.get("requeue_reasons") if "requeued_from" in job.metadata else None
    return [str(r) for r in reasons] if isinstance(reasons, list) else []


def _previous_faults(job: Job) -> int:
    """Faults among the job's earlier runs, as its copy carries them; a copy made by a worker from before
    causes were told carries none, and every earlier run counts as a fault, as it did then."""
    earlier_runs = job.attempt_number - 1
    carried = job.metadata.get("faults") if "requeued_from" in job.metadata else None
    if isinstance(carried, int) and not isinstance(carried, bool) and carried >= 0:
        return min(carried, earlier_runs)
    return earlier_runs
