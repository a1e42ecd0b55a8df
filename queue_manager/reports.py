"""Test hook: every complete-job / fail-job call received, so tests can assert exactly-once delivery."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Report:
    endpoint: str  # "complete-job" or "fail-job"
    job_id: str | None
    body: Any  # parsed JSON; the raw text when it is not JSON; None when empty
    status: int | None  # what the caller received; None when the connection was dropped
    handled_status: int | None  # what the queue itself answered; None when a fault answered instead
    at: float  # the server's clock

    @property
    def landed(self) -> bool:
        """The report changed the job (the queue answered 200), whatever the caller got back."""
        return self.handled_status == 200


class ReportLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: list[Report] = []

    def record(self, report: Report) -> None:
        with self._lock:
            self._reports.append(report)

    def all(self) -> list[Report]:
        with self._lock:
            return list(self._reports)

    def for_job(self, job_id: str) -> list[Report]:
        return [report for report in self.all() if report.job_id == job_id]

    def landed(self, job_id: str | None = None) -> list[Report]:
        """Reports that took effect, for one job or all; more than one per job means it was reported twice."""
        return [r for r in self.all() if r.landed and (job_id is None or r.job_id == job_id)]

    def clear(self) -> None:
        with self._lock:
            self._reports.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._reports)
