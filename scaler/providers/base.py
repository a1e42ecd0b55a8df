"""The one small interface between the scaler loop and whatever runs the workers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from scaler.policy import Replica

HEALTH_ANSWER_LIMIT_BYTES = 64 * 1024  # the worker's /health answers a few hundred bytes
# Which replicas a scale-down stops first, where the backend chooses (RunPod, local), by the phase their worker's
# /health last gave: no job to lose first, a running job last (the worker hands it back, and it starts over); a
# phase not known (no answer, draining) in between.
_STOP_ORDER = {"starting": 0, "idle": 1, "busy": 3}
_UNKNOWN_PHASE_RANK = 2


def stop_rank(phase: str | None) -> int:
    """Where a replica whose worker is in ``phase`` comes in a scale-down: the lowest is stopped first."""
    return _STOP_ORDER.get(phase or "", _UNKNOWN_PHASE_RANK)


@dataclass(frozen=True, slots=True)
class BackendView:
    """What the platform reports: its live replicas (``started_at`` in epoch seconds), the deployment status, and
    the replica bounds it holds now as (min, max), or None for a platform that has none to report.

    ``ready``: how many of the replicas serve, when the platform says; None counts every listed replica as ready.
    ``crash_loop``: set while the platform holds a replica back after repeated failed runs (its CrashLoopBackOff).
    """

    replicas: tuple[Replica, ...]
    status: str
    bounds: tuple[int, int] | None = None
    ready: int | None = None
    crash_loop: CrashLoop | None = None


@dataclass(frozen=True, slots=True)
class CrashLoop:
    """A replica whose worker exited with an error ``exits`` times in a row, held back until ``next_start_at``
    (epoch seconds) before it is started again (the worst of them, when several are)."""

    exits: int
    next_start_at: float


class FirstSeen:
    """When each replica was first listed, for the ones a platform lists without a start time (still being placed).

    Taken as "now" at every read instead, such a replica looks newly started at every tick: the ledgers charged
    it a new 10-minute interval each tick (Verda), or never a second (per-second billing). It keeps that start once
    the platform gives its own: the ledgers know a replica by its id and start, and took the start that appeared
    for a new replica (a second first interval). Its billing boundaries then fall a little early, never late.
    """

    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def replicas(self, listed: Sequence[tuple[str, datetime | None]], now: float) -> tuple[Replica, ...]:
        """The listed (id, start) replicas, each started when first listed without a start, else at its own."""
        self._at = {replica: self._at.get(replica, now) for replica, start in listed
                    if start is None or replica in self._at}
        return tuple(Replica(replica, self._at[replica] if replica in self._at or start is None else start.timestamp())
                     for replica, start in listed)


class Backend(Protocol):
    async def observe(self) -> BackendView: ...

    async def apply(self, desired: int) -> bool:
        """Pin the replica count to ``desired``; True when something was written, False when already so."""
        ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class KeepsItsOwnBill(Protocol):
    """A backend that bills itself (a fleet: each provider at its own price, against the fleet's budgets). The
    policy then prices nothing, so the loop's spend metrics show this bill and these budgets instead."""

    def committed_spend(self, now: float) -> dict[str, float]:
        """Window ("hour", "day") -> spend committed over the last hour and the last 24 h."""
        ...

    def budgets(self) -> dict[str, float | None]:
        """Window ("hour", "day") -> its spend limit, None when there is none."""
        ...
