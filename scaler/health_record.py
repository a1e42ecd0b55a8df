"""The running fleet's provider health, saved beside its costs in SCALER_LEDGER_FILE for `comfy-scaler status`.

Degradation (quota refusals, the start deadline, errors, their back-off: scaler.allocator) lives in the
`comfy-scaler run` process; `status` is another process, whose fresh fleet never asked a provider for a
replica. The running fleet writes which providers it holds degraded, why and until when, with the time it
wrote it, at every save of the ledger (scaler.fleet); `status` reads it back. A record that is missing,
unreadable or older than a few ticks is reported as unknown: never as healthy. A restarted `run` reads it back
too, and keeps each degradation until its back-off ends (``Degraded.kept``).

Without a fleet the same record, in SCALER_STATE_FILE, also holds the backend's replicas as the running scaler last
read them (``HealthRecord.view``); a fleet's holds its `local` provider's (``HealthRecord.views``): `status` shows
the `local` workers, which live in that process, from there (``RecordedBackend``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from common.logs import scrubbed_excerpt
from scaler.allocator import (
    PAUSED,
    AllocatorConfig,
    AllocatorState,
    DegradedReason,
    HealthChange,
    ProviderHealth,
    ProviderView,
    update_health,
)
from scaler.ledger import UNREADABLE
from scaler.policy import Replica
from scaler.providers.base import BackendView

log = structlog.get_logger()

DETAIL_LIMIT = 300  # the record stays small: one short line per degraded provider
FUTURE_SLACK_S = 60.0  # a record this far ahead of the reader's clock is not trusted
STOPPED = "stopped"  # the status a `local` scaler records as it stops: its workers stop with it
MAX_REPLICAS_READ = 10_000  # more than any backend runs: a longer list in the record is cut, not held
LAST_MOMENT = 253_402_300_799.0  # 9999-12-31T23:59:59Z: a later time cannot be printed as a date
# What a restarted fleet keeps: not a pause, which its first read of the provider sees again (or not), nor a crash
# loop, whose local workers died with the scaler: the restarted one's start with its settings (the usual fix).
KEPT_OVER_A_RESTART = frozenset(DegradedReason) - {DegradedReason.PAUSED, DegradedReason.CRASH_LOOP}


@dataclass(frozen=True, slots=True)
class Degraded:
    reason: str
    detail: str
    since: float | None
    retry_at: float | None

    def kept(self, now: float, longest_backoff_s: float) -> ProviderHealth | None:
        """This degradation as a restarted fleet's allocator holds it, or None when its back-off is over (or it has
        none, or it was a pause). Its back-off ends no later than ``longest_backoff_s`` from now (SCALER_FALLBACK_
        RETRY_MAX_S), and doubles on a relapse as it would have in the scaler that degraded it."""
        if self.retry_at is None or self.retry_at <= now or self.reason not in KEPT_OVER_A_RESTART:
            return None
        backoff_s = None if self.since is None else min(longest_backoff_s, self.retry_at - self.since) or None
        return ProviderHealth(DegradedReason(self.reason), min(self.retry_at, now + longest_backoff_s), backoff_s)


@dataclass(frozen=True, slots=True)
class HealthRecord:
    at: float  # when the running fleet wrote it
    degraded: dict[str, Degraded]
    # A single backend's replicas as the running scaler read them at ``at`` (None: not read): the `local` backend's
    # workers live in that process, and `status` shows them from here. ``views``: a fleet's, per provider whose
    # replicas live in its process (its `local` one), those read at ``at``.
    view: BackendView | None = None
    views: dict[str, BackendView] = field(default_factory=dict)

    @classmethod
    def of(
        cls, health: dict[str, ProviderHealth], notes: dict[str, tuple[float, str]], at: float,
        view: BackendView | None = None, views: dict[str, BackendView] | None = None,
    ) -> HealthRecord:
        """The record of the allocator's ``health``; ``notes``: provider -> (since, detail) of its degradation."""
        degraded = {}
        for name, h in health.items():
            if h.degraded is not None:
                since, detail = notes.get(name, (None, ""))
                # scrubbed: a provider's error may echo a secret, and this file is read by another process
                degraded[name] = Degraded(str(h.degraded), scrubbed_excerpt(detail, DETAIL_LIMIT), since, h.retry_at)
        return cls(at, degraded, view, dict(views or {}))

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"at": self.at, "degraded": {
            name: {"reason": d.reason, "detail": d.detail, "since": d.since, "retry_at": d.retry_at}
            for name, d in self.degraded.items()
        }}
        if self.view is not None:
            raw["view"] = _view_json(self.view)
        if self.views:
            raw["views"] = {name: _view_json(view) for name, view in self.views.items()}
        return raw

    @classmethod
    def from_json(cls, raw: Any) -> HealthRecord:
        """Raises one of scaler.ledger.UNREADABLE for a record of the wrong shape."""
        degraded = {}
        for name, d in raw["degraded"].items():
            degraded[str(name)] = Degraded(
                _text(d["reason"]), _text(d.get("detail", "")), _moment(d.get("since")), _moment(d.get("retry_at")),
            )
        at = _moment(raw["at"])
        if at is None:
            raise ValueError("at: not a time")
        view = None if raw.get("view") is None else _view_of(raw["view"])
        views = {_text(name): _view_of(seen) for name, seen in (raw.get("views") or {}).items()}
        return cls(at, degraded, view, views)


def _view_json(view: BackendView) -> dict[str, Any]:
    return {"status": view.status, "ready": view.ready, "replicas": [[r.id, r.started_at] for r in view.replicas]}


def _view_of(seen: Any) -> BackendView:
    replicas = tuple(Replica(_text(i), _moment(t) or 0.0) for i, t in seen["replicas"][:MAX_REPLICAS_READ])
    return BackendView(replicas, _text(seen["status"]), ready=_count(seen.get("ready")))


@dataclass(frozen=True, slots=True)
class HealthReading:
    """What `status` can say of the running scaler's provider health: the record, or why it cannot know."""

    record: HealthRecord | None
    unknown: str | None = None  # why there is no usable record

    @property
    def known(self) -> bool:
        return self.unknown is None and self.record is not None

    def age_s(self, now: float) -> float | None:
        return None if self.record is None else round(max(0.0, now - self.record.at), 1)


def reading_fields(reading: HealthReading, now: float) -> dict[str, Any]:
    """Whether `status` knows the running scaler's health, as of when, and else why not."""
    return {"known": reading.known, "recorded_at": iso(reading.record.at) if reading.record else None,
            "age_s": reading.age_s(now), "unknown": reading.unknown}


def degraded_fields(reading: HealthReading, name: str, now: float) -> dict[str, Any]:
    """Provider ``name``'s degradation as `status` shows it: ``unknown`` without a usable record."""
    degraded = reading.record.degraded.get(name) if reading.known and reading.record else None
    return {
        "degraded": (degraded.reason if degraded else None) if reading.known else "unknown",
        "degraded_detail": degraded.detail if degraded else None,
        "degraded_since": iso(degraded.since) if degraded else None,
        "retry_at": iso(degraded.retry_at) if degraded else None,
        # 0 from the back-off's end to the running scaler's next tick, which tries the provider again
        "retry_in_s": max(0, round(degraded.retry_at - now)) if degraded and degraded.retry_at else None,
    }


def provider_view(view: BackendView, error: str | None = None) -> ProviderView:
    """How the allocator sees a provider's (or the single backend's) read; ``error``: a write that did not land."""
    crash_loop = view.crash_loop
    return ProviderView(len(view.replicas), len(view.replicas) if view.ready is None else view.ready, view.status,
                        error, crash_loop.exits if crash_loop else 0, crash_loop.next_start_at if crash_loop else None)


def log_health_change(change: HealthChange) -> None:
    if change.degraded is None:
        log.info("Provider back in service", provider=change.provider, detail=change.detail)
    else:
        log.warning("Provider degraded", provider=change.provider, reason=str(change.degraded),
                    retry_in_s=change.retry_in_s, detail=change.detail)


class BackendHealth:
    """One backend's health when there is no fleet, judged as the fleet judges each provider's
    (scaler.allocator.update_health): replicas asked for and not ready past SCALER_FALLBACK_START_DEADLINE_S (local
    workers crash-looping), SCALER_FALLBACK_ERROR_TICKS failed reads, quota, pause. There is nowhere to fall back
    to: it is shown (the decision line, `comfy-scaler status` through the state file), never acted on."""

    def __init__(self, name: str, config: AllocatorConfig) -> None:
        self.name = name
        self.config = config
        self.state = AllocatorState()
        self.view: BackendView | None = None  # this tick's read
        self._notes: dict[str, tuple[float, str]] = {}

    def see(self, view: BackendView | None, error: str | None, asked: int, now: float) -> None:
        """This tick's read (``view``, or the ``error`` it failed with) of a backend asked for ``asked`` replicas."""
        self.view = view
        if view is not None and view.status == PAUSED:
            # `comfy-scaler stop`: the decision line and `status` say paused already. Judged, it was also logged
            # "Provider degraded: paused" and retried every SCALER_FALLBACK_RETRY_AFTER_S. It starts afresh.
            self.state, self._notes = AllocatorState(), {}
            return
        seen = ProviderView(error=error or "not read") if view is None else provider_view(view)
        health, changes = update_health(self.config, self.state, {self.name: seen}, {self.name: asked}, now)
        self.state = replace(self.state, health=health)
        for change in changes:
            log_health_change(change)
            if change.degraded is None:
                self._notes.pop(change.provider, None)
            else:
                self._notes[change.provider] = (now, change.detail)

    def record(self, now: float) -> HealthRecord:
        return HealthRecord.of(self.state.health, self._notes, now, self.view)


class RunningScalerUnknown(Exception):
    """`status` cannot say what the running scaler's backend holds: no usable record of it."""


class RecordedBackend:
    """The `local` backend (alone, or ``provider`` of a fleet) as `comfy-scaler status` shows it: its workers live in
    the `comfy-scaler run` process, so a backend built here listed none (`healthy`, 0 replicas) while that one ran 3,
    or crash-looped. ``observe`` gives the running scaler's last read, from its record (``reading``), or raises
    saying why it is not known. Only read: the other calls refuse."""

    def __init__(self, reading: HealthReading, provider: str | None = None) -> None:
        self.reading = reading
        self.provider = provider

    async def observe(self) -> BackendView:
        record = self.reading.record
        view = None if record is None else record.view if self.provider is None else record.views.get(self.provider)
        if view is not None and (self.reading.known or view.status == STOPPED):  # a stop stays true however old
            return view
        why = self.reading.unknown or "its record holds no read of its workers (the last read failed)"
        raise RunningScalerUnknown(f"the local workers live in `comfy-scaler run`, and what it runs is not known: "
                                   f"{why}")

    async def apply(self, desired: int) -> bool:
        raise RunningScalerUnknown("the local workers live in `comfy-scaler run`: only it can change them")

    async def pause(self) -> None:
        await self.apply(0)

    async def resume(self) -> None:
        await self.apply(0)

    async def aclose(self) -> None:
        return None


def read_health(raw: Any, now: float, stale_after_s: float, where: str = "SCALER_LEDGER_FILE") -> HealthReading:
    """``raw``: the ``health`` section of the file named by ``where`` as read (None when it has none): the ledger
    file of a fleet, the state file of a single backend."""
    if raw is None:
        return HealthReading(None, f"no record in {where}: no `comfy-scaler run` has saved one there")
    try:
        record = HealthRecord.from_json(raw)
    except UNREADABLE as exc:
        return HealthReading(None, f"the record in {where} is unreadable ({type(exc).__name__})")
    if record.at > now + FUTURE_SLACK_S:
        return HealthReading(None, f"the record in {where} is dated {record.at - now:.0f} s ahead of this "
                             "machine's clock")
    if now - record.at > stale_after_s:
        return HealthReading(record, f"the running scaler's record is {now - record.at:.0f} s old (more than "
                             f"{stale_after_s:g} s): is `comfy-scaler run` running, with this {where}?")
    return HealthReading(record)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a text")
    return value[:DETAIL_LIMIT]


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _moment(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= LAST_MOMENT:
        raise ValueError(f"{value!r} is not a time")
    return float(value)


def iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
