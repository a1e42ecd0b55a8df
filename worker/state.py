"""The worker's observable state: written by the worker loop, read by the health server.

Health reads this and never does work of its own (no calls to ComfyUI or the queue on a probe).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from worker.metrics import WorkerMetrics, readable_version


class Phase(enum.StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class WorkerState:
    worker_id: str
    provider: str
    version: str
    max_idle_polls: int
    serverless: bool
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    phase: Phase = Phase.STARTING
    started_at: float = field(default_factory=time.monotonic)
    heartbeat_at: float = field(default_factory=time.monotonic)
    current_job_id: str | None = None
    current_prompt_id: str | None = None
    jobs_completed: int = 0
    jobs_failed: int = 0
    jobs_handed_back: int = 0
    jobs_abandoned: int = 0  # taken back by the queue manager (lease lost, report refused with 404/409)
    consecutive_idle_polls: int = 0
    comfyui_up: bool = False
    comfyui_version: str | None = None
    warmed_up: bool = False
    not_ready_reason: str | None = "starting: waiting for ComfyUI"
    fatal_reason: str | None = None  # set when only a restart can help (dead ComfyUI, GPU fault)
    poll_failure: str | None = None  # the last poll failed: no job can come until one is answered

    def beat(self) -> None:
        self.heartbeat_at = time.monotonic()

    @contextlib.asynccontextmanager
    async def beating(
        self, interval_s: float = 1.0, *, for_at_most_s: float = math.inf,
        progressed_at: Callable[[], float] | None = None, stall_s: float = math.inf,
    ) -> AsyncIterator[None]:
        """Keep the heartbeat fresh through a step that is bounded by its own deadline but may be slow
        (a report retried while the queue manager restarts, a large output copied): slow is not wedged.
        for_at_most_s: for work in a thread, which no deadline can cancel: it beats only that long (its budget),
        so a thread hung past it still shows as wedged HEARTBEAT_TIMEOUT_S later. progressed_at, stall_s: for
        work in a thread that says when it last moved (time.monotonic()): it beats only while that is within
        stall_s, so a thread hung inside one step shows as wedged stall_s + HEARTBEAT_TIMEOUT_S later."""

        async def beat_forever() -> None:
            stop_at = time.monotonic() + for_at_most_s
            while time.monotonic() < stop_at:
                if progressed_at is None or time.monotonic() - progressed_at() < stall_s:
                    self.beat()
                await asyncio.sleep(interval_s)

        ticker = asyncio.create_task(beat_forever())
        try:
            yield
        finally:
            ticker.cancel()
            self.beat()

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self.metrics.set_phase(phase.value)
        self.beat()

    def set_comfyui(self, up: bool, version: object = None) -> None:
        """``version``: as ComfyUI's /system_stats gave it; kept only when readable (readable_version)."""
        self.comfyui_up = up
        if shown := readable_version(version):
            self.comfyui_version = shown
        self.metrics.comfyui_up.set(1 if up else 0)
        self.metrics.set_versions(self.version, self.comfyui_version)

    def mark_ready(self) -> None:
        self.not_ready_reason = None

    def mark_not_ready(self, reason: str) -> None:
        self.not_ready_reason = reason

    def mark_fatal(self, reason: str) -> None:
        if self.fatal_reason is None:
            self.fatal_reason = reason

    def job_started(self, job_id: str) -> None:
        self.current_job_id = job_id
        self.current_prompt_id = None
        self.consecutive_idle_polls = 0
        self.set_phase(Phase.BUSY)

    def job_finished(self, outcome: str, *, workflow_fault: bool = False) -> None:
        """outcome: completed, failed, handed_back (the report that was sent, or attempted) or abandoned;
        workflow_fault: a failure the job's own workflow caused, not this service."""
        if outcome == "completed":
            self.jobs_completed += 1
        elif outcome == "handed_back":
            self.jobs_handed_back += 1
        elif outcome == "abandoned":
            self.jobs_abandoned += 1
        else:
            self.jobs_failed += 1
        self.metrics.jobs.labels(outcome=outcome).inc()
        if outcome == "failed" and workflow_fault:
            self.metrics.workflow_failures.inc()
        self.current_job_id = None
        self.current_prompt_id = None
        self.beat()

    def poll_failed(self, reason: str) -> None:
        self.poll_failure = reason
        self.metrics.poll_errors.inc()
        self.beat()

    def poll_answered(self) -> None:
        self.poll_failure = None

    def idle_poll(self) -> None:
        self.consecutive_idle_polls += 1
        self.metrics.idle_polls.inc()
        self.beat()

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    def heartbeat_age_s(self) -> float:
        return time.monotonic() - self.heartbeat_at

    @property
    def jobs_finished(self) -> int:
        return self.jobs_completed + self.jobs_failed + self.jobs_handed_back + self.jobs_abandoned
