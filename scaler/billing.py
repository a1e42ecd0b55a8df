"""Verda's billing arithmetic: 10-minute intervals per running replica, a started interval billed in full.

Pure helpers shared by the policy (billing-aware scale-downs, the budget guard), the live loop (its
estimated-spend metric) and the simulator (the platform's ground truth). When an interval starts is not
documented, so the anchor is a parameter: the replica's ``started_at`` or wall-clock boundaries.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Protocol

from common.timespans import DAY_S, HOUR_S
from scaler.clock_step import measured_step, unmeasured_step_back


class BillingAnchor(StrEnum):
    STARTED_AT = "started_at"
    WALL_CLOCK = "wall_clock"


class BilledReplica(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def started_at(self) -> float: ...


def billed_intervals(started_at: float, until: float, interval_s: float, anchor: BillingAnchor) -> int:
    """Intervals begun between ``started_at`` and ``until``; a replica that exists at all has begun one."""
    until = max(until, started_at)
    if anchor is BillingAnchor.WALL_CLOCK:
        return math.floor(until / interval_s) - math.floor(started_at / interval_s) + 1
    return math.floor((until - started_at) / interval_s) + 1


def first_interval_after(started_at: float, horizon: float, interval_s: float, anchor: BillingAnchor) -> int:
    """Index of the replica's first interval that begins after ``horizon``. The ones before are past every
    window a ledger keeps: walking them would cost a tick ~10^8 steps for a replica listed as started in year 1."""
    return 0 if started_at > horizon else billed_intervals(started_at, horizon, interval_s, anchor)


def interval_start(started_at: float, index: int, interval_s: float, anchor: BillingAnchor) -> float:
    """When the replica's interval number ``index`` (0-based) began, i.e. when it was charged."""
    if index == 0:
        return started_at
    if anchor is BillingAnchor.WALL_CLOCK:
        return (math.floor(started_at / interval_s) + index) * interval_s
    return started_at + index * interval_s


def seconds_to_boundary(started_at: float, now: float, interval_s: float, anchor: BillingAnchor) -> float:
    """Paid time left in the replica's current interval: stopping it before then saves the next one."""
    origin = 0.0 if anchor is BillingAnchor.WALL_CLOCK else started_at
    return interval_s - (max(now, started_at) - origin) % interval_s


def bill_for_runtime(
    started_at: float, stopped_at: float, interval_s: float, anchor: BillingAnchor
) -> int:
    """Intervals billed for a replica that ran from ``started_at`` until ``stopped_at`` (exclusive)."""
    if stopped_at <= started_at:
        return 1
    if anchor is BillingAnchor.WALL_CLOCK:
        return math.ceil(stopped_at / interval_s) - math.floor(started_at / interval_s)
    return math.ceil((stopped_at - started_at) / interval_s)


def intervals_to_charge(
    started_at: float, charged: int, now: float, *, keep_after: float, stepped_s: float, interval_s: float,
    anchor: BillingAnchor,
) -> tuple[list[float], int]:
    """The one rule both spend ledgers (this module's SpendLedger, scaler.ledger's CostLedger) charge a replica's
    intervals by: when each interval not yet charged is charged, and how many count as charged after.
    ``charged``: the intervals charged before; ``keep_after``: no charge dated before it is kept (none is made);
    ``stepped_s``: the wall-clock step this charge follows (positive forward, negative back, 0 without one)."""
    ahead_s = max(stepped_s, 0.0)
    due = billed_intervals(started_at, now, interval_s, anchor)
    # After a step back, intervals charged while the clock was ahead are counted again from now's.
    before = min(charged, due) if stepped_s < 0 else charged
    done = max(before, first_interval_after(started_at, keep_after - ahead_s, interval_s, anchor))
    # After a step forward, only the intervals begun in the time that passed, dated as if the clock had always
    # shown this time, and never after now (a start ahead of this clock: the next charge would read it as a step
    # back); those the step skipped over are not owed.
    begun = billed_intervals(started_at, now - ahead_s, interval_s, anchor)
    dates = [min(interval_start(started_at, index, interval_s, anchor) + ahead_s, now) for index in range(done, begun)]
    return dates, max(done, due)


@dataclass(frozen=True)
class SpendLedger:
    """Money committed by begun intervals, kept for a rolling day. Immutable: ``observe`` returns a new one.

    ``charges`` are ``(charged_at, amount)`` in time order; ``billed`` remembers, per live replica
    ``(id, started_at)``, how many of its intervals are already charged, so each is charged once; ``observed_at``:
    the wall-clock time of the last observation, from which a step of the clock is measured; ``clock_step``: the
    step that observation followed (positive forward, negative back, 0 without one) and the $ whose dates moved
    with it, for the loop to log (not saved).
    """

    charges: tuple[tuple[float, float], ...] = ()
    billed: tuple[tuple[tuple[str, float], int], ...] = ()
    observed_at: float | None = None
    clock_step: tuple[float, float] = (0.0, 0.0)

    @cached_property
    def _totals(self) -> tuple[float, ...]:
        # Running totals make spent_since a bisect; it is read several times per tick.
        return tuple(itertools.accumulate(amount for _, amount in self.charges))

    def observe(
        self,
        replicas: Iterable[BilledReplica],
        now: float,
        *,
        interval_s: float,
        anchor: BillingAnchor,
        price_per_hour: float,
        keep_s: float = DAY_S,
        elapsed_s: float | None = None,
    ) -> SpendLedger:
        """``elapsed_s``: the time since the last observation on a clock never stepped (None: not measured, as at a
        process's first tick), by which a stepped wall clock is told from a slow tick."""
        charges, stepped_s, moved = self._following_clock(now, elapsed_s)
        amount = price_per_hour * interval_s / HOUR_S
        horizon = now - keep_s
        already = dict(self.billed)
        listed_last = self._listed_at_last_look(interval_s, anchor)
        billed: dict[tuple[str, float], int] = {}
        new_charges: list[tuple[float, float]] = []
        for replica in replicas:
            key = (replica.id, replica.started_at)
            if key not in already and key[0] in listed_last:
                # The replica listed at the last look, now with another start: the one taken for it while Verda
                # listed none (when first listed, by a scaler since restarted) before its own. Charged on under the
                # first start: as new, it was charged a second first interval (0.77 $, not 0.38).
                key = listed_last[key[0]]
            dates, billed[key] = intervals_to_charge(key[1], already.get(key, 0), now, keep_after=horizon,
                                                     stepped_s=stepped_s, interval_s=interval_s, anchor=anchor)
            new_charges.extend((at, amount) for at in dates)
        # A replica missing from one listing and back at the next is the same replica: forgotten, its intervals were
        # charged again. Kept while one of its charges is within the window (after that none would be again).
        for key, count in already.items():
            if key not in billed and interval_start(key[1], count - 1, interval_s, anchor) > horizon:
                billed[key] = count
        if new_charges:
            charges = tuple(sorted(charges + tuple(new_charges)))
        if charges and charges[0][0] <= horizon:
            charges = tuple(charge for charge in charges if charge[0] > horizon)
        return SpendLedger(charges, tuple(billed.items()), observed_at=now, clock_step=(stepped_s, moved))

    def _listed_at_last_look(self, interval_s: float, anchor: BillingAnchor) -> dict[str, tuple[str, float]]:
        """Replica id -> its key, for the replicas whose charged intervals reach past the last observation (listed
        then). A replica gone for longer is not among them: an id given again later is a new replica."""
        if self.observed_at is None:
            return {}
        return {key[0]: key for key, count in self.billed
                if interval_start(key[1], count, interval_s, anchor) > self.observed_at}

    def _following_clock(
        self, now: float, elapsed_s: float | None
    ) -> tuple[tuple[tuple[float, float], ...], float, float]:
        """The charges with their dates moved by a wall-clock step, so that the windows read what they read before
        it; the step (positive forward, negative back, 0 without one); the $ whose dates moved. Without ``elapsed_s``
        only a step back shows, as charges dated after ``now``: those are dated ``now``, never dropped (high for a
        day, never low)."""
        step = measured_step(self.observed_at, now, elapsed_s)
        charges = tuple((at + step, amount) for at, amount in self.charges) if step else self.charges
        moved = sum(amount for _, amount in charges) if step else 0.0
        latest = max([now if self.observed_at is None else self.observed_at + step, *(at for at, _ in charges[-1:])])
        if back := unmeasured_step_back(latest, now):
            step = min(step, back)
            moved += sum(amount for at, amount in charges if at > now)
            charges = tuple((min(at, now), amount) for at, amount in charges)
        return charges, step, moved

    def spent_since(self, since: float) -> float:
        """Charges made after ``since`` (exclusive)."""
        first = bisect.bisect_right(self.charges, (since, math.inf))
        if first >= len(self.charges):
            return 0.0
        return self._totals[-1] - (self._totals[first - 1] if first else 0.0)
