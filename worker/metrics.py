"""Prometheus metrics of one worker, in a registry of its own (so tests and several workers never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics

from common.text import encodes_as_utf8

disable_created_metrics()

PHASES = ("starting", "idle", "busy", "draining", "stopped")
OUTCOMES = ("completed", "failed", "handed_back", "abandoned")
JOB_PHASES = ("wait", "execution", "delivery", "report")
# A label value in every scrape and every Prometheus series: ComfyUI's are like "0.8.0".
MAX_VERSION_CHARS = 64
JOB_PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def readable_version(answered: object) -> str | None:
    """ComfyUI's version as /system_stats gave it, if it is text UTF-8 can carry, cut to MAX_VERSION_CHARS; else None.
    A number there failed every scrape of /metrics with a 500; 100k characters went into every series' label, the
    worker's /status and every job's report."""
    if isinstance(answered, str) and answered and encodes_as_utf8(answered):
        return answered[:MAX_VERSION_CHARS]
    return None


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter(
            "comfy_worker_jobs", "Jobs finished by this worker, by outcome (completed|failed|handed_back|abandoned).",
            ["outcome"], registry=r,
        )
        self.workflow_failures = Counter(
            "comfy_worker_workflow_failures",
            "Failed jobs (counted in comfy_worker_jobs{outcome=failed} too) that failed because of their own "
            "workflow: an invalid job, refused by ComfyUI's validation, or an error raised in one of its nodes.",
            registry=r,
        )
        self.job_phase_seconds = Histogram(
            "comfy_worker_job_phase_seconds",
            "Duration of each phase of a job: wait (queued in ComfyUI until it started), execution (ComfyUI), "
            "delivery (copying outputs), report (queue manager accepted the report).",
            ["phase"], buckets=JOB_PHASE_BUCKETS, registry=r,
        )
        self.idle_polls = Counter("comfy_worker_idle_polls", "Polls that found no job.", registry=r)
        self.poll_errors = Counter(
            "comfy_worker_poll_errors", "Polls that failed (connection, 5xx, bad reply).", registry=r
        )
        self.report_errors = Counter(
            "comfy_worker_report_errors", "Failed attempts to deliver a job report.", registry=r
        )
        self.comfyui_up = Gauge("comfy_worker_comfyui_up", "1 when ComfyUI answers, else 0.", registry=r)
        self.state = Gauge(
            "comfy_worker_state", "1 for the worker's current state, 0 for the others.", ["state"], registry=r
        )
        self.info = Info("comfy_worker_build", "Worker and ComfyUI versions.", registry=r)
        for phase in PHASES:
            self.state.labels(state=phase).set(1 if phase == "starting" else 0)
        # Each series exported at 0 from the start: one born at 1 with a worker's first job (a serverless worker
        # may run one) shows Prometheus no increase, and rate() and the alerts on it never counted that job.
        for outcome in OUTCOMES:
            self.jobs.labels(outcome=outcome)
        for phase in JOB_PHASES:
            self.job_phase_seconds.labels(phase=phase)

    def set_phase(self, current: str) -> None:
        for phase in PHASES:
            self.state.labels(state=phase).set(1 if phase == current else 0)

    def set_versions(self, worker_version: str, comfyui_version: str | None) -> None:
        """``comfyui_version``: as WorkerState keeps it, readable (readable_version) or None."""
        self.info.info({"worker_version": worker_version, "comfyui_version": comfyui_version or "unknown"})

    def observe_phase(self, phase: str, seconds: float) -> None:
        self.job_phase_seconds.labels(phase=phase).observe(max(0.0, seconds))
