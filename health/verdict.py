"""What the probes answer, decided from the worker's state alone (pure: no I/O, no clock but the state's).

Liveness is unhealthy only for what a container restart cures; everything else stays healthy, because on
Verda repeated liveness failures restart the container and a restart cannot fix, say, a queue outage.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.state import Phase, WorkerState

# The worker's own deadlines (ComfyUI start-up timeout, job timeout) bound these phases, and the loop no
# longer runs once stopped: a stale heartbeat there means nothing a restart would fix.
_HEARTBEAT_EXEMPT = frozenset({Phase.STARTING, Phase.STOPPED})


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    status: str  # the JSON "status" Verda reads: ok|busy|ready on 200, unhealthy|not_ready on 503
    reason: str | None = None

    @property
    def http_status(self) -> int:
        return 200 if self.healthy else 503


def liveness(state: WorkerState, heartbeat_timeout_s: float) -> Verdict:
    if state.fatal_reason is not None:
        return Verdict(False, "unhealthy", state.fatal_reason)
    age_s = state.heartbeat_age_s()
    if state.phase not in _HEARTBEAT_EXEMPT and age_s > heartbeat_timeout_s:
        return Verdict(
            False, "unhealthy",
            f"worker loop wedged: no heartbeat for {age_s:.0f} s (limit {heartbeat_timeout_s:g} s)",
        )
    # "busy" is Verda's optional third state: 200, so it can never cause a restart. Draining stays 200
    # too: a 503 during the 30 s after SIGTERM could only get a container restarted mid-drain.
    if state.current_job_id is not None:
        return Verdict(True, "busy")
    return Verdict(True, "ok")


def readiness(state: WorkerState) -> Verdict:
    if state.fatal_reason is not None:
        return Verdict(False, "not_ready", state.fatal_reason)
    if state.phase in (Phase.DRAINING, Phase.STOPPED):
        return Verdict(False, "not_ready", f"{state.phase.value}: shutting down")
    if state.not_ready_reason is not None:
        return Verdict(False, "not_ready", state.not_ready_reason)
    if state.poll_failure is not None:
        return Verdict(False, "not_ready", state.poll_failure)
    return Verdict(True, "ready")
