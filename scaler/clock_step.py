"""A wall clock stepped (NTP correcting a host whose clock was wrong), told from a slow tick by a clock never
stepped. Both spend ledgers (the fleet's, scaler.ledger; the single backend's, scaler.billing) move their dates with
a step and charge the time that passed, not the step (pure: the policy's ledger uses it; scaler.ledger logs it)."""

from __future__ import annotations

# A wall clock that moved further than this from what a ledger expects has been stepped: smaller differences are a
# slow tick or a slewed clock, and are charged as they come.
CLOCK_STEP_TOLERANCE_S = 60.0


def measured_step(last_at: float | None, now: float, elapsed_s: float | None) -> float:
    """How far the wall clock was stepped between ``last_at`` and ``now``, ``elapsed_s`` apart on a clock never
    stepped (positive forward, negative back); 0 within the tolerance, or with nothing to measure by (a process's
    first charge)."""
    if last_at is None or elapsed_s is None:
        return 0.0
    step = now - last_at - elapsed_s
    return step if abs(step) > CLOCK_STEP_TOLERANCE_S else 0.0


def unmeasured_step_back(latest: float, now: float) -> float:
    """A step back seen without a measure (a scaler started after its clock was set back): a ledger holds a date,
    ``latest``, beyond ``now``. Negative; 0 when nothing is dated after now."""
    return now - latest if latest > now + CLOCK_STEP_TOLERANCE_S else 0.0
