"""Where the replicas run: a pure placement of the policy's count over several providers.

``scaler.policy.decide`` says how many replicas the queue needs; ``allocate`` says where. Cheapest healthy
provider first (list position breaks ties). A provider that answers ``quota_reached``, fails to be read or
written for ``error_ticks`` ticks in a row, leaves asked-for replicas un-ready past ``start_deadline_s``, or holds
a replica back after failed runs in a row (crash-looping) is degraded: it keeps the replicas it has ready, its
shortfall goes to the next provider, and it is tried again after a back-off that doubles on each relapse.
Capacity moves back to a cheaper provider by draining: a dearer provider's count is lowered only by replicas
whose replacement is already ready, so the ready capacity never drops below what the queue needs while the move
is under way. Scale-down takes the dearest provider first.
Budgets: the hourly rate of the fleet never grows past ``max_spend_per_hour``, and new replicas are only
started while the day's budget covers their first billed interval.

Nothing here reads a clock, logs or does I/O; the fleet backend and the simulator call the same function.
How it behaves, setting by setting: docs/providers.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from common.timespans import HOUR_S

HEALTHY = "healthy"
PAUSED = "paused"
QUOTA_REACHED = "quota_reached"


class MoveReason(StrEnum):
    PLACE = "place"  # more replicas on a provider because the fleet needs more
    FALLBACK = "fallback"  # more replicas on a provider because a cheaper one is degraded
    SCALE_DOWN = "scale_down"  # fewer replicas because the fleet needs fewer (dearest first)
    DRAIN = "drain"  # fewer on a dearer provider because a cheaper one has their replacements ready
    DEGRADED_RELEASE = "degraded_release"  # a degraded provider lets go of replicas it never made ready


class DegradedReason(StrEnum):
    QUOTA_REACHED = "quota_reached"
    ERRORS = "errors"
    START_DEADLINE = "start_deadline"
    CRASH_LOOP = "crash_loop"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider of the priority list. ``commit_s``: the time one started replica is billed for at least
    (Verda: a 10-minute interval; per-second billing: the scaler's tick), used by the daily budget guard."""

    name: str
    max_replicas: int
    price_per_hour: float
    commit_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_replicas < 0 or self.price_per_hour < 0 or self.commit_s <= 0:
            raise ValueError(f"provider {self.name}: need max_replicas >= 0, price_per_hour >= 0, commit_s > 0")

    @property
    def commit_cost(self) -> float:
        return self.price_per_hour * self.commit_s / HOUR_S


@dataclass(frozen=True, slots=True)
class AllocatorConfig:
    providers: tuple[ProviderSpec, ...]
    error_ticks: int = 3
    start_deadline_s: float = 600.0
    retry_after_s: float = 300.0
    retry_max_s: float = 3_600.0
    max_spend_per_hour: float | None = None
    max_spend_per_day: float | None = None

    def __post_init__(self) -> None:
        names = [p.name for p in self.providers]
        problems = []
        if not names:
            problems.append("at least one provider is needed")
        if len(set(names)) != len(names):
            problems.append(f"provider names repeat: {names}")
        if self.error_ticks < 1:
            problems.append("error_ticks must be >= 1")
        if self.start_deadline_s <= 0 or self.retry_after_s <= 0 or self.retry_max_s < self.retry_after_s:
            problems.append("need start_deadline_s > 0 and 0 < retry_after_s <= retry_max_s")
        if problems:
            raise ValueError("invalid AllocatorConfig: " + "; ".join(problems))

    @property
    def preference(self) -> tuple[ProviderSpec, ...]:
        """Cheapest first; the list position breaks ties."""
        order = {p.name: i for i, p in enumerate(self.providers)}
        return tuple(sorted(self.providers, key=lambda p: (p.price_per_hour, order[p.name])))

    @property
    def total_max(self) -> int:
        return sum(p.max_replicas for p in self.providers)


@dataclass(frozen=True, slots=True)
class ProviderView:
    """One provider at this tick: its replicas (``ready`` of them serving) and status; ``error`` when it
    could not be read (then the counts are the last known ones)."""

    live: int = 0
    ready: int = 0
    status: str = HEALTHY
    error: str | None = None
    # Set while a replica is held back after failed runs in a row: how many, and when it is started again.
    exits_in_a_row: int = 0
    next_start_at: float | None = None


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    degraded: DegradedReason | None = None
    retry_at: float | None = None
    backoff_s: float | None = None
    consecutive_errors: int = 0
    short_since: float | None = None  # since when fewer replicas are ready than were asked for
    retried_at: float | None = None  # when it came back from its last degradation


@dataclass(frozen=True, slots=True)
class AllocatorState:
    targets: dict[str, int] = field(default_factory=dict)  # the count last asked of each provider
    health: dict[str, ProviderHealth] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Move:
    provider: str
    before: int
    after: int
    reason: MoveReason


@dataclass(frozen=True, slots=True)
class HealthChange:
    provider: str
    degraded: DegradedReason | None  # None: back in service (retry after the back-off)
    retry_in_s: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Allocation:
    targets: dict[str, int]
    moves: tuple[Move, ...]
    health_changes: tuple[HealthChange, ...]
    fallback_engaged: bool  # some replicas are placed on a provider because a cheaper one is degraded
    budget_capped: tuple[str, ...]  # providers that got fewer new replicas than placed: over a budget
    new_state: AllocatorState


def allocate(
    config: AllocatorConfig,
    state: AllocatorState,
    desired: int,
    views: dict[str, ProviderView],
    now: float,
    *,
    busy: int = 0,
    spent_last_day: float = 0.0,
) -> Allocation:
    """Place ``desired`` replicas; ``busy`` replicas are running jobs and ``spent_last_day`` is the fleet's
    committed spend over the last 24 h (all providers together)."""
    specs = config.preference
    before = {p.name: state.targets.get(p.name, views.get(p.name, ProviderView()).live) for p in specs}
    health, changes = update_health(config, state, views, before, now)
    available = {p.name: _capacity(p, health[p.name], views.get(p.name, ProviderView()), before[p.name])
                 for p in specs}

    placed = _fill(specs, desired, available)
    placed = _drain_not_kill(specs, placed, before, views, available, desired, busy)
    for spec in specs:
        if views.get(spec.name, ProviderView(error="not observed")).error is not None and (
            health[spec.name].degraded is DegradedReason.ERRORS
        ):
            # Unreadable now: what it may still run is not counted as capacity, but not cut below what the queue
            # needs either (a write that lands once it answers again must not kill replicas that were working
            # all along), and it is paid for: the budgets count it. Read again, it is placed like any degraded
            # provider: kept whatever the queue, it held 3 replicas through its back-off for an empty queue.
            placed[spec.name] = max(placed[spec.name], min(before[spec.name], spec.max_replicas, desired))
    targets, budget_capped = _within_budget(config, specs, placed, before, spent_last_day)

    moves = tuple(
        Move(p.name, before[p.name], targets[p.name], _reason(p, specs, targets, before, health, available))
        for p in specs if targets[p.name] != before[p.name]
    )
    engaged = any(  # a provider that may hold no replica (one being retired) is no one's fallback
        targets[p.name] > 0 and any(health[q.name].degraded is not None and q.max_replicas > 0 for q in specs[:i])
        for i, p in enumerate(specs)
    )
    new_state = AllocatorState(targets=targets, health=health)
    return Allocation(targets, moves, tuple(changes), engaged, tuple(sorted(budget_capped)), new_state)


def update_health(
    config: AllocatorConfig,
    state: AllocatorState,
    views: dict[str, ProviderView],
    asked: dict[str, int],
    now: float,
) -> tuple[dict[str, ProviderHealth], list[HealthChange]]:
    """Each provider's health after this tick's ``views``, ``asked`` replicas of each, and what changed. Also judges
    a single backend (scaler.health_record.BackendHealth), which has nowhere to fall back to."""
    health: dict[str, ProviderHealth] = {}
    changes: list[HealthChange] = []
    for spec in config.providers:
        old = state.health.get(spec.name, ProviderHealth())
        view = views.get(spec.name, ProviderView(error="not observed"))
        h = old
        if h.degraded is not None and h.retry_at is not None and now >= h.retry_at:
            # Back-off over: try it again, with a fresh start deadline and error count.
            h = replace(h, degraded=None, retry_at=None, consecutive_errors=0, short_since=None, retried_at=now)
            changes.append(HealthChange(spec.name, None, detail="retry after back-off"))
        errors = h.consecutive_errors + 1 if view.error is not None else 0
        short = view.error is None and view.ready < asked[spec.name]
        short_since = (h.short_since if h.short_since is not None else now) if short else None
        h = replace(h, consecutive_errors=errors, short_since=short_since)
        if h.degraded is None:
            reason, detail = _degradation(config, view, h, now)
            if reason is not None:
                backoff = min(config.retry_max_s, (old.backoff_s or config.retry_after_s / 2) * 2)
                if reason is DegradedReason.PAUSED:
                    backoff = config.retry_after_s
                h = replace(h, degraded=reason, retry_at=now + backoff, backoff_s=backoff)
                changes.append(HealthChange(spec.name, reason, retry_in_s=backoff, detail=detail))
            elif h.backoff_s is not None and short_since is None and view.error is None and (
                h.retried_at is None or now - h.retried_at >= h.backoff_s
            ):
                # Served what was asked for as long as it had been out: the next relapse starts afresh.
                h = replace(h, backoff_s=None, retried_at=None)
        health[spec.name] = h
    return health, changes


def _degradation(
    config: AllocatorConfig, view: ProviderView, h: ProviderHealth, now: float
) -> tuple[DegradedReason | None, str]:
    if view.error is None and view.status == QUOTA_REACHED:
        return DegradedReason.QUOTA_REACHED, "provider reports quota_reached"
    if view.error is None and view.status == PAUSED:
        return DegradedReason.PAUSED, "provider is paused"
    if h.consecutive_errors >= config.error_ticks:
        return DegradedReason.ERRORS, f"{h.consecutive_errors} failed ticks in a row: {view.error}"
    if view.error is None and view.next_start_at is not None:
        # Not ready, and known not to be for a while: no need to wait out the start deadline to say so.
        return DegradedReason.CRASH_LOOP, (f"crash-looping: {view.exits_in_a_row} exits in a row, next start in "
                                           f"{max(0, round(view.next_start_at - now))} s")
    if h.short_since is not None and now - h.short_since >= config.start_deadline_s:
        waited = round(now - h.short_since)
        return DegradedReason.START_DEADLINE, f"replicas not ready after {waited} s ({view.ready} ready)"
    return None, ""


def _capacity(spec: ProviderSpec, health: ProviderHealth, view: ProviderView, asked: int) -> int:
    """How many replicas this provider may hold: its max when healthy; when degraded, what it has ready (for an
    unreadable one, what it had ready at the last read: those are kept, nothing is counted that never came up)."""
    if health.degraded is None:
        return spec.max_replicas
    if health.degraded is DegradedReason.PAUSED:
        return 0
    return min(spec.max_replicas, asked, view.ready)


def _fill(specs: tuple[ProviderSpec, ...], desired: int, available: dict[str, int]) -> dict[str, int]:
    placed: dict[str, int] = {}
    left = max(0, desired)
    for spec in specs:
        placed[spec.name] = min(left, available[spec.name])
        left -= placed[spec.name]
    return placed


def _drain_not_kill(
    specs: tuple[ProviderSpec, ...],
    placed: dict[str, int],
    before: dict[str, int],
    views: dict[str, ProviderView],
    available: dict[str, int],
    desired: int,
    busy: int,
) -> dict[str, int]:
    """Give back to the providers being cut enough ready replicas that ready capacity stays at what is needed.

    A cut is safe once the replacements elsewhere are ready; until then the dearer provider keeps its ready
    replicas (they keep pulling jobs) and is drained as the cheaper one's replicas come up.
    """
    ready = {p.name: views.get(p.name, ProviderView()).ready for p in specs}
    need = min(max(desired, busy), sum(min(before[n], ready[n], available[n]) for n in ready))
    kept = dict(placed)
    shortfall = need - sum(min(kept[n], ready[n]) for n in kept)
    for spec in specs:  # the cheapest of the providers being cut keeps its replicas first
        if shortfall <= 0:
            break
        name = spec.name
        if kept[name] < before[name]:
            keepable = min(before[name], ready[name], available[name])
            give_back = min(shortfall, keepable - min(kept[name], ready[name]))
            if give_back > 0:
                kept[name] += give_back
                shortfall -= give_back
    return kept


def _within_budget(
    config: AllocatorConfig,
    specs: tuple[ProviderSpec, ...],
    placed: dict[str, int],
    before: dict[str, int],
    spent_last_day: float,
) -> tuple[dict[str, int], set[str]]:
    """Cut new replicas (never existing ones) the budgets do not cover; the dearest go first."""
    targets = dict(placed)
    cut: set[str] = set()

    def rate() -> float:
        return sum(targets[p.name] * p.price_per_hour for p in specs)

    def committed() -> float:
        return sum(max(0, targets[p.name] - before[p.name]) * p.commit_cost for p in specs)

    hour_cap = config.max_spend_per_hour
    day_left = None if config.max_spend_per_day is None else config.max_spend_per_day - spent_last_day
    for spec in reversed(specs):
        name = spec.name
        while targets[name] > before[name] and (
            (hour_cap is not None and rate() > max(hour_cap, _rate(specs, before)) + 1e-9)
            or (day_left is not None and committed() > max(0.0, day_left) + 1e-9)
        ):
            targets[name] -= 1
            cut.add(name)
    return targets, cut


def _rate(specs: tuple[ProviderSpec, ...], counts: dict[str, int]) -> float:
    return sum(min(counts[p.name], p.max_replicas) * p.price_per_hour for p in specs)


def _reason(
    spec: ProviderSpec,
    specs: tuple[ProviderSpec, ...],
    targets: dict[str, int],
    before: dict[str, int],
    health: dict[str, ProviderHealth],
    available: dict[str, int],
) -> MoveReason:
    name = spec.name
    cheaper = specs[: specs.index(spec)]
    if targets[name] > before[name]:
        if any(health[q.name].degraded is not None and available[q.name] < q.max_replicas for q in cheaper):
            return MoveReason.FALLBACK
        return MoveReason.PLACE
    if health[name].degraded is not None:
        return MoveReason.DEGRADED_RELEASE
    # Would it be cut even if the fleet kept its size? Then its replicas move to a cheaper provider.
    same_size = _fill(specs, sum(before.values()), available)
    return MoveReason.DRAIN if same_size[name] < before[name] else MoveReason.SCALE_DOWN


def fleet_rate(config: AllocatorConfig, targets: dict[str, int]) -> float:
    """Hourly price of the placement."""
    return sum(targets.get(p.name, 0) * p.price_per_hour for p in config.providers)
