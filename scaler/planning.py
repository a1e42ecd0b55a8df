"""Wait-target arithmetic for the policy: how long jobs take, when queued jobs would start, who is needed.

Pure functions; ``scaler.policy.decide`` uses them when ``target_wait_s`` is set.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

# Jobs that ran shorter than this are not evidence of a duration (a cancelled or instantly failed job).
MIN_EVIDENCE_S = 0.5


def robust_duration(durations: Sequence[float], default_s: float, *, keep: int = 50) -> float:
    """The median of the last ``keep`` completions: an outlier moves it little, a shift soon.

    The median, not a higher percentile: a queued job starts after several jobs in a row, and a pessimistic
    length for each adds up (with the 75th percentile the measured p95 wait landed 15-25 % under the target,
    paid for with replicas). With fewer than 3 completions there is no evidence yet: ``default_s``.
    """
    return _percentile(durations, default_s, keep, 0.5)


def _percentile(durations: Sequence[float], default_s: float, keep: int, share: float) -> float:
    recent = sorted(d for d in list(durations)[-keep:] if d >= MIN_EVIDENCE_S and math.isfinite(d))
    if len(recent) < 3:
        return default_s
    return recent[math.ceil(share * len(recent)) - 1]


def long_duration(durations: Sequence[float], default_s: float, *, keep: int = 50) -> float:
    """The 95th percentile of the last ``keep`` completions: how long a long job runs (``default_s`` without data).

    A running job is only taken as about to end once it has run nearly this long; judged by the typical
    length instead, a scale-down would stop the longer jobs just before they finish.
    """
    return _percentile(durations, default_s, keep, 0.95)


def predicted_starts(free_at: Sequence[float], queued: int, duration_s: float) -> list[float]:
    """When each queued job (in queue order) starts, on replicas free at ``free_at``, each job ``duration_s``."""
    if not free_at:
        return [math.inf] * queued
    heap = list(free_at)
    heapq.heapify(heap)
    starts = []
    for _ in range(queued):
        start = heapq.heappop(heap)
        starts.append(start)
        heapq.heappush(heap, start + duration_s)
    return starts


def misses(
    now: float, free_at: Sequence[float], ages_s: Sequence[float], duration_s: float, target_s: float
) -> int:
    """Queued jobs (oldest first, ``ages_s``) predicted to wait longer than ``target_s`` in all."""
    starts = predicted_starts(free_at, len(ages_s), duration_s)
    return sum(1 for age, start in zip(ages_s, starts, strict=True) if age + start - now > target_s)


# The target is a p95: this share of jobs may start later than it ...
LATE_SHARE = 0.05
# ... but none is planned to wait longer than this many times the target.
LATE_LIMIT = 1.5


def late_allowance(recent_waits_s: Sequence[float], queued: int, target_s: float) -> int:
    """How many queued jobs may be planned to start past the target, the p95 still meeting it.

    ``LATE_SHARE`` of the recent jobs (``recent_waits_s``: how long the last ones to start had waited) and
    the queued ones; the recent jobs that already waited past the target have used up their part.
    """
    already = sum(1 for wait in recent_waits_s if wait > target_s)
    return max(0, math.floor(LATE_SHARE * (len(recent_waits_s) + queued) + 1e-9) - already)


def excess(
    now: float, free_at: Sequence[float], ages_s: Sequence[float], duration_s: float, target_s: float, allowed: int
) -> int:
    """Queued jobs late beyond the allowance: past the target beyond ``allowed``, or past ``LATE_LIMIT`` x it."""
    return max(
        misses(now, free_at, ages_s, duration_s, target_s) - allowed,
        misses(now, free_at, ages_s, duration_s, LATE_LIMIT * target_s),
    )


def replicas_to_add(
    now: float,
    free_at: Sequence[float],
    ages_s: Sequence[float],
    duration_s: float,
    target_s: float,
    boot_s: float,
    room: int,
    allowed: int = 0,
) -> int:
    """The fewest new replicas (ready at ``now + boot_s``, at most ``room``) that leave the fewest misses
    (beyond the ``allowed`` late ones, see ``late_allowance``).

    A new replica is only bought for a job that would otherwise miss the target; when even ``room`` new
    replicas cannot save a job (it has waited too long already), the count that does best is taken, so the
    damage stays as small as the cap allows.
    """
    if not ages_s or room <= 0:
        return 0

    def outlook(extra: int) -> tuple[int, float]:
        fleet = [*free_at, *([now + boot_s] * extra)]
        longest = longest_wait(now, fleet, ages_s, duration_s)
        late = excess(now, fleet, ages_s, duration_s, target_s, allowed)
        return late, round(longest) if math.isfinite(longest) else longest

    best, best_outlook = 0, outlook(0)
    for extra in range(1, min(room, len(ages_s)) + 1):
        if best_outlook[0] == 0:
            break
        candidate = outlook(extra)
        if candidate < best_outlook:
            best, best_outlook = extra, candidate
    return best


def replicas_needed(
    now: float,
    free_at: Sequence[float],
    ages_s: Sequence[float],
    duration_s: float,
    target_s: float,
    allowed: int = 0,
) -> int:
    """How many of the replicas (``free_at``) the queue needs: no more misses, no longer worst wait than all.

    A backlog already past the target is not abandoned: keeping fewer replicas must not make its longest
    wait longer.
    """
    if not ages_s:
        return 0
    ordered = sorted(free_at)
    floor = excess(now, ordered, ages_s, duration_s, target_s, allowed)
    bound = LATE_LIMIT * target_s if allowed else target_s
    worst = max(bound, longest_wait(now, ordered, ages_s, duration_s))
    for keep in range(1, len(ordered) + 1):
        kept = ordered[:keep]
        if excess(now, kept, ages_s, duration_s, target_s, allowed) <= floor and (
            longest_wait(now, kept, ages_s, duration_s) <= worst + 1e-6
        ):
            return keep
    return len(ordered)


def longest_wait(now: float, free_at: Sequence[float], ages_s: Sequence[float], duration_s: float) -> float:
    starts = predicted_starts(free_at, len(ages_s), duration_s)
    return max(age + start - now for age, start in zip(ages_s, starts, strict=True))
