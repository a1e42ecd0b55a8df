"""The one small interface between the scaler loop and whatever runs the workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

import structlog

from common.timespans import YEAR_S
from scaler.policy import MAX_REPLICAS_LIMIT, Replica

log = structlog.get_logger()
T = TypeVar("T")

HEALTH_ANSWER_LIMIT_BYTES = 64 * 1024  # the worker's /health answers a few hundred bytes
# Which replicas a scale-down stops first, where the backend chooses (RunPod, local), by the phase their worker's
# /health last gave: no job to lose first, a running job last (the worker hands it back, and it starts over); a
# phase not known (no answer, draining) in between.
_STOP_ORDER = {"starting": 0, "idle": 1, "busy": 3}
_UNKNOWN_PHASE_RANK = 2
# The most replicas a platform's list may hold: ten times the most the scaler ever asks for (SCALER_MAX_REPLICAS is
# at most 100), room for a count raised in the console to be read and pinned back. A longer list is a broken answer,
# refused as a failed read: the spend ledger charges each replica up to 144 intervals, and 70,000 replicas (a 3.9 MB
# answer) made a tick take 77 s and 2237 MiB and wrote a 375 MB state file; 1,000 take 1 s, 105 MiB and 6 MB.
MAX_LISTED_REPLICAS = 10 * MAX_REPLICAS_LIMIT
# A replica's start is believed from this long before the scaler's clock to a few minutes after it (clock skew, as
# the queue's job times). Outside, it is a placeholder (Go's zero time, year 1; Unix's 0, 1970) or a broken clock,
# and is taken as missing: Go's zero time charged a full day at first sight (55.20 at 2.30/h) and capped every
# scale-up for a day. The past bound is far wider than the queue's 7 days: the ledger charges any start older than
# a day the same day, so the width changes no real replica's charge, while a start that aged out of a narrower
# window would be taken as missing, given a new start, and charged a second first interval.
OLDEST_START_S = 10 * YEAR_S
START_CLOCK_SKEW_S = 300.0


def stop_rank(phase: str | None) -> int:
    """Where a replica whose worker is in ``phase`` comes in a scale-down: the lowest is stopped first."""
    return _STOP_ORDER.get(phase or "", _UNKNOWN_PHASE_RANK)


def listed_once(entries: Sequence[T], id_of: Callable[[T], str], *, peer: str, request: str) -> list[T]:
    """A platform's listing with each replica once, as first listed. One id listed twice is one replica: counted
    twice, Verda's first tick pinned a count of 2 for the one replica running (a second started, and both were
    charged), and RunPod's backend stopped its only pod as the surplus of a count of 1."""
    seen: dict[str, T] = {}
    for entry in entries:
        seen.setdefault(id_of(entry), entry)
    if len(seen) < len(entries):
        log.warning("replicas_listed_twice", peer=peer, request=request, listed=len(entries), distinct=len(seen),
                    hint="each id is counted once; the platform's API lists some replicas more than once")
    return list(seen.values())


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
        """The listed (id, start) replicas, each started when first listed without a believable start (see
        OLDEST_START_S), else at its own."""
        believed = [(replica, self._believed(replica, start, now)) for replica, start in listed]
        self._at = {replica: self._at.get(replica, now) for replica, start in believed
                    if start is None or replica in self._at}
        return tuple(Replica(replica, self._at.get(replica, start)) for replica, start in believed)

    def _believed(self, replica: str, start: datetime | None, now: float) -> float | None:
        if start is None:
            return None
        moment = start.timestamp()
        if now - OLDEST_START_S <= moment <= now + START_CLOCK_SKEW_S:
            return moment
        if replica not in self._at:
            log.warning("replica_start_implausible", replica=replica, started_at=start.isoformat(),
                        believed=f"from {OLDEST_START_S / YEAR_S:g} years ago to {START_CLOCK_SKEW_S:g} s "
                                 "ahead of this host's clock",
                        hint="taken as started when first listed so; check the platform's answer and this host's clock")
        return None


class Backend(Protocol):
    async def observe(self) -> BackendView: ...

    async def apply(self, desired: int) -> bool:
        """Pin the replica count to ``desired``; True when something was written, False when already so."""
        ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class OutlivesItsStop(Protocol):
    """A backend whose platform may accept a stop and never carry it out (RunPod): the kill switch ends what it
    still lists half way through its wait as it is."""

    async def terminate_live(self) -> list[str]:
        """End, without their stop, the replicas the last read listed live; the ids whose end was accepted."""
        ...


@runtime_checkable
class RunsItsReplicasHere(Protocol):
    """A backend whose replicas are processes of the scaler that runs it (the local workers): another process
    (`comfy-scaler stop`) can neither see nor stop them."""

    @property
    def pids(self) -> list[int]:
        """The processes it tracks (running or being stopped)."""
        ...


@runtime_checkable
class AsksForTokensAhead(Protocol):
    """A backend whose first read would first ask for a token (Verda's OAuth; a fleet, for its members): asked
    for before the first tick, so that read is not two answers long."""

    def fetch_tokens_ahead(self) -> list[asyncio.Task[Any]]:
        """The token requests now under way."""
        ...


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
