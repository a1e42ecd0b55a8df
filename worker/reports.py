"""The one terminal report of a job: built once, sent once, survives cancellation."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from worker.queue_client import JobGone, QueueClient, ReportRejected, TransientHTTPError
from worker.state import WorkerState

log = structlog.get_logger()


@dataclass(frozen=True)
class Report:
    job_id: str
    result: dict[str, Any] | None = None  # set: complete-job
    error: str | None = None  # set: fail-job

    @property
    def completed(self) -> bool:
        return self.result is not None


class Reporter:
    """Sends each job's report at most once, and logs why when it cannot reach the queue manager."""

    def __init__(self, queue: QueueClient, state: WorkerState, memory: int = 10_000) -> None:
        self.queue = queue
        self.state = state
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._memory = memory

    async def send(self, report: Report, *, budget_s: float | None = None) -> bool:
        """True when the queue manager accepted the report."""
        if report.job_id in self._sent:
            log.error("Refusing to report a job twice", job_id=report.job_id)
            return False
        self._sent[report.job_id] = None
        if len(self._sent) > self._memory:
            self._sent.popitem(last=False)

        started = time.monotonic()
        try:
            if report.completed:
                await self.queue.complete_job(report.job_id, report.result or {}, budget_s=budget_s)
            else:
                await self.queue.fail_job(report.job_id, report.error or "unknown error", budget_s=budget_s)
        except JobGone as exc:
            log.warning("Job no longer exists on the queue manager; report dropped", error=str(exc))
            return False
        except ReportRejected as exc:
            self.state.metrics.report_errors.inc()
            log.error("Queue manager refused the report", error=str(exc))
            return False
        except (TransientHTTPError, httpx.TransportError) as exc:
            self.state.metrics.report_errors.inc()
            log.error(
                "Report could not be delivered within the retry budget; the queue manager will time the job out",
                outcome="completed" if report.completed else "failed",
                error=f"{type(exc).__name__}: {exc}",
                job_error=report.error,
            )
            return False
        finally:
            self.state.metrics.observe_phase("report", time.monotonic() - started)

        if report.completed:
            log.info(f"Job {report.job_id} completed", outputs=len(report.result.get("outputs", [])))
        else:
            log.warning(f"Job {report.job_id} failed", error=report.error)
        return True
