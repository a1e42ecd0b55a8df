"""The /status document for humans: what the worker is doing, never what it was asked to do or its settings."""

from __future__ import annotations

from typing import Any

from health.verdict import liveness, readiness
from worker.state import WorkerState


def status_document(state: WorkerState, heartbeat_timeout_s: float) -> dict[str, Any]:
    live = liveness(state, heartbeat_timeout_s)
    ready = readiness(state)
    return {
        "worker_id": state.worker_id,
        "provider": state.provider,
        "serverless": state.serverless,
        "state": state.phase.value,
        "health": {"status": live.status, "reason": live.reason},
        "readiness": {"status": ready.status, "reason": ready.reason},
        "current_job_id": state.current_job_id,
        "current_prompt_id": state.current_prompt_id,
        "jobs_completed": state.jobs_completed,
        "jobs_failed": state.jobs_failed,
        "jobs_handed_back": state.jobs_handed_back,
        "jobs_abandoned": state.jobs_abandoned,
        "consecutive_idle_polls": state.consecutive_idle_polls,
        "max_idle_polls": state.max_idle_polls,
        "uptime_s": round(state.uptime_s(), 3),
        "heartbeat_age_s": round(state.heartbeat_age_s(), 3),
        "comfyui_up": state.comfyui_up,
        "versions": {"worker": state.version, "comfyui": state.comfyui_version},
    }
