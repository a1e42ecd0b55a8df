"""Several providers behind the one Backend the scaler loop drives (``SCALER_PROVIDERS=local,verda,runpod``).

The loop still decides how many replicas (``scaler.policy.decide``); ``apply(n)`` hands n to the allocator
(``scaler.allocator.allocate``), which places them over the providers, and each provider is pinned to its share.
Where replicas should run changes with provider health even when how many does not, so every ``observe``
also re-places the last count (the loop writes only when the count changes). Each tick the fleet charges
every provider's replicas to the cost ledger by its own billing rule and saves it, raises the budget and
"fallback engaged" alerts, and logs every move with its reason ("Provider move") and every health change
("Provider degraded" / "Provider back in service").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import structlog

from common.logs import error_text
from common.timespans import DAY_S
from scaler.alerts import Alert, AlertBook, AlertSender, budget_alerts
from scaler.allocator import (
    PAUSED,
    QUOTA_REACHED,
    Allocation,
    AllocatorConfig,
    AllocatorState,
    DegradedReason,
    ProviderHealth,
    ProviderSpec,
    ProviderView,
    allocate,
)
from scaler.health_record import (
    STOPPED,
    HealthReading,
    HealthRecord,
    degraded_fields,
    iso,
    log_health_change,
    provider_view,
    read_health,
    reading_fields,
)
from scaler.ledger import (
    LEDGER_VERSION,
    UNREADABLE,
    BillingRule,
    CostLedger,
    SavedFileUnreadable,
    read_saved,
    refuse_newer,
)
from scaler.metrics import ProviderMetrics
from scaler.policy import Replica
from scaler.providers.base import AsksForTokensAhead, Backend, BackendView
from scaler.save_failures import SaveFailures
from scaler.settle import settled

log = structlog.get_logger()

T = TypeVar("T")

HEALTHY = "healthy"
SEPARATOR = "/"
MOVE_LOG_SIZE = 1000
PRICE_REFRESH_S = 3600.0  # how often the price lists read at start are read again


class FleetReadError(Exception):
    """No provider could be read: the loop holds its count."""


class FleetStopError(Exception):
    """Some providers did not take a pause/resume; ``failures`` maps each to its error."""

    def __init__(self, action: str, failures: dict[str, str]) -> None:
        super().__init__(f"{action} failed on " + ", ".join(f"{n} ({e})" for n, e in failures.items()))
        self.failures = failures


@dataclass
class Member:
    spec: ProviderSpec
    backend: Backend
    billing: BillingRule = field(default_factory=BillingRule)
    # The provider's price list, read again every PRICE_REFRESH_S; None when the operator set the price.
    price_lookup: Callable[[], Awaitable[float]] | None = None
    # Its replicas live in this process (the `local` workers): `status`, another process, shows them from the
    # fleet's record (HealthRecord.views), not from a backend of its own.
    in_process: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class _Seen:
    view: ProviderView
    replicas: tuple[Replica, ...] = ()
    fresh: bool = True  # read at this tick (else the last known state, kept for the allocator)


def _holds(view: BackendView, target: int) -> bool:
    """Whether the provider holds ``target``: pinned so (Verda's bounds), else that many replicas listed."""
    return view.bounds == (target, target) if view.bounds is not None else len(view.replicas) == target


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` is now: each atomic save is a new file (a new inode), whoever wrote it."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def stop_file_present(stop_file: Path) -> bool:
    """Whether the kill switch ``stop_file`` is there; a symlink is, even one to nothing (whoever made it meant to
    stop). OSError when it cannot be looked for."""
    try:
        stop_file.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


class FleetBackend:
    """Owns the members' backends (closed by ``aclose``) and, when given, the alert sender."""

    def __init__(
        self,
        members: Sequence[Member],
        config: AllocatorConfig,
        *,
        ledger: CostLedger | None = None,
        ledger_file: Path | None = None,
        metrics: ProviderMetrics | None = None,
        alerts: AlertSender | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        dry_run: bool = False,
        stop_file: Path | None = None,
        member_timeout_s: float | None = None,
    ) -> None:
        self.members = {m.name: m for m in members}
        # Each call to one provider is cut off after this, and counts as that provider's error: a provider that
        # never answers is degraded and fallen back from, instead of costing the loop its tick deadline.
        self.member_timeout_s = member_timeout_s
        self.stop_file = stop_file
        self._stop_file_unreadable = False  # said once, until it can be looked for again
        self._held = False
        self._not_stopped: set[str] = set()  # providers the kill switch has not reached yet
        self._not_resumed: set[str] = set()  # ... and those its release has not reached yet
        self.move_log: deque[dict[str, Any]] = deque(maxlen=MOVE_LOG_SIZE)  # recent moves and health changes
        self.config = config
        self.ledger = ledger or CostLedger()
        self.ledger_file = ledger_file
        self.metrics = metrics
        self.alerts = alerts
        self.clock = clock
        # A clock never stepped (time.monotonic), by which the ledger tells a wall clock stepped by NTP from a slow
        # tick; without one the wall clock is taken as never stepped.
        self.monotonic = monotonic or clock
        self._save_failures = SaveFailures(
            "cost_ledger_save_failed", "cost_ledger_saved_again",
            "the fleet goes on from its memory; a restart now would lose the day's charges", self.monotonic)
        self._charged_at: dict[str, float] = {}  # provider -> monotonic time of its last charge
        self.dry_run = dry_run
        self.state = AllocatorState()
        self.last_allocation: Allocation | None = None
        self._degraded_notes: dict[str, tuple[float, str]] = {}  # provider -> since when degraded, and why
        self._desired: int | None = None
        self._judged = False  # the providers' health was judged from this tick's reads (by a first _place)
        self._seen: dict[str, _Seen] = {}
        self._in_process_views: dict[str, BackendView] = {}  # this tick's reads of the in-process members
        self._write_errors: dict[str, tuple[int, str]] = {}  # provider -> the count whose write failed, and why
        self._written: dict[str, int] = {}
        self._saved: tuple[int, int] | None = None  # the ledger file as this fleet last wrote it
        self._prices_read_at = clock()  # the prices were read when the fleet was built
        if not dry_run:
            self._keep_recorded_degradations(clock())
        if metrics is not None:
            for member in members:
                metrics.price.labels(provider=member.name).set(member.spec.price_per_hour)

    def __repr__(self) -> str:
        return f"FleetBackend(providers={list(self.members)}, dry_run={self.dry_run})"

    def _keep_recorded_degradations(self, now: float) -> None:
        """A restarted scaler keeps the degradations the last one recorded in the ledger file, each until its
        back-off ends. Started with every provider in service, it wrote "nothing degraded" at its first save
        (`status` showed RunPod healthy again) and placed its next replicas on the provider it had just fallen back
        from. A record that cannot be read, or is dated ahead of this clock, keeps nothing and is logged; one older
        than the longest back-off (SCALER_FALLBACK_RETRY_MAX_S) holds none still running."""
        reading = read_health(self.ledger.health, now, self.config.retry_max_s)
        if reading.record is None:
            if self.ledger.health is not None:
                log.warning("provider_health_not_restored", why=reading.unknown,
                            hint="every provider starts in service; degraded again as it fails")
            return
        if reading.unknown is not None:
            return
        health = dict(self.state.health)
        for name, degraded in reading.record.degraded.items():
            kept = degraded.kept(now, self.config.retry_max_s) if name in self.members else None
            if kept is None:
                continue
            health[name] = kept
            self._degraded_notes[name] = (degraded.since or reading.record.at, degraded.detail)
            log.warning("Provider still degraded", provider=name, reason=degraded.reason,
                        retry_in_s=round(kept.retry_at - now) if kept.retry_at else None, detail=degraded.detail,
                        since=iso(degraded.since))
            if self.metrics is not None:
                self.metrics.degraded.labels(provider=name).set(1)
        self.state = replace(self.state, health=health)

    # --- Backend ----------------------------------------------------------------------------------------

    async def observe(self) -> BackendView:
        self._judged = False
        held = await self._honour_kill_switch()
        now = self.clock()
        _, results = await asyncio.gather(
            self._refresh_prices(now), settled(self._bounded(m.backend.observe()) for m in self.members.values())
        )
        for member, result in zip(self.members.values(), results, strict=True):
            self._see(member, result, now)
        self._charge(now)
        if not any(s.fresh for s in self._seen.values()):
            errors = "; ".join(f"{name}: {s.view.error}" for name, s in self._seen.items())
            raise FleetReadError(f"no provider could be read: {errors}")
        if held:
            status = PAUSED
        else:
            if self._desired is not None:
                await self._place(self._desired, now)
            status = PAUSED if await self._stopped_while_writing() else self._fleet_status()
        replicas = tuple(
            Replica(f"{name}{SEPARATOR}{r.id}", r.started_at, per_second=self.members[name].billing.per_second)
            for name, s in self._seen.items() for r in s.replicas
        )
        return BackendView(replicas=replicas, status=status)

    async def _stopped_while_writing(self) -> bool:
        """True when the kill switch was set while this tick wrote, now honoured. `stop --all` writes its file
        before it stops any provider, so a write decided before the file and landing after the stop (RunPod:
        pods created after `runpod: stopped`) is followed by a file already there: undone now, not a tick later."""
        if self._held or self.dry_run or not self._kill_switch_on():
            return False
        return await self._honour_kill_switch()

    async def _honour_kill_switch(self) -> bool:
        """While ``stop_file`` exists (written by `comfy-scaler stop --all`), hold every provider at zero.

        RunPod has no paused state another process could set, so the running scaler must see the kill switch
        itself; Verda's pause is seen anyway. Removed by `comfy-scaler resume`: the providers are resumed here.
        A dry run (`comfy-scaler status`) reports it as the running scaler does, paused, and writes nothing:
        ignored there, `status` printed `change 0 → 1: wake_from_zero` while nothing was allowed to run.
        """
        stopped = self._kill_switch_on()
        if self.dry_run:
            return stopped
        if stopped and not self._held:
            log.warning("kill_switch_seen", stop_file=str(self.stop_file))
            self._held, self._written, self._not_stopped = True, {}, set(self.members)
            # The count from before the stop is void: re-placed at the release, it started replicas the loop,
            # deciding from the queue in the same tick, then took back. Nothing is placed until it decides again.
            self._desired = None
        if stopped and self._not_stopped:
            # A provider that could not be reached is asked again at every tick until it takes the stop.
            failed = await self._on_members(lambda b: b.apply(0), "apply", self._not_stopped)
            failed |= await self._on_members(lambda b: b.pause(), "pause", self._not_stopped)
            self._not_stopped = failed
        elif not stopped and self._held:
            log.info("kill_switch_released", stop_file=str(self.stop_file))
            self._held, self._not_stopped, self._not_resumed = False, set(), set(self.members)
        if not stopped and self._not_resumed:
            # Likewise, a provider that could not be resumed is asked again at every tick.
            failed = await self._on_members(lambda b: b.resume(), "resume", self._not_resumed)
            resumed, self._not_resumed = self._not_resumed - failed, failed
            # Paused by the kill switch is not a fault of the provider: no back-off to sit out.
            health = {name: ProviderHealth() if name in resumed and h.degraded is DegradedReason.PAUSED else h
                      for name, h in self.state.health.items()}
            self.state = replace(self.state, health=health)
        return stopped

    async def _on_members(self, call: Callable[[Backend], Any], action: str, names: set[str]) -> set[str]:
        """``call`` on the members named; returns the names it failed on (each logged)."""
        chosen = [name for name in self.members if name in names]
        results = await settled(self._bounded(call(self.members[name].backend)) for name in chosen)
        failed = set()
        for name, result in zip(chosen, results, strict=True):
            if isinstance(result, Exception):
                failed.add(name)
                log.error("provider_kill_switch_failed", provider=name, action=action, error=error_text(result),
                          hint="tried again at the next tick")
        return failed

    async def apply(self, desired: int) -> bool:
        if desired < 0:
            raise ValueError(f"desired replicas must be >= 0, got {desired}")
        self._desired = desired
        wrote = await self._place(desired, self.clock())
        await self._stopped_while_writing()
        return wrote

    async def pause(self) -> None:
        await self._on_all("pause", lambda b: b.pause())

    async def resume(self) -> None:
        await self._on_all("resume", lambda b: b.resume())

    async def aclose(self) -> None:
        results = await asyncio.gather(*(m.backend.aclose() for m in self.members.values()), return_exceptions=True)
        if self.alerts is not None:
            await self.alerts.aclose()
        for name, result in zip(self.members, results, strict=True):
            if isinstance(result, Exception):
                log.error("provider_close_failed", provider=name, error=error_text(result))

    # --- one tick ---------------------------------------------------------------------------------------

    def fetch_tokens_ahead(self) -> list[asyncio.Task[Any]]:
        return [request for member in self.members.values() if isinstance(member.backend, AsksForTokensAhead)
                for request in member.backend.fetch_tokens_ahead()]

    async def _bounded(self, call: Awaitable[T]) -> T:
        if self.member_timeout_s is None:
            return await call
        try:
            return await asyncio.wait_for(call, self.member_timeout_s)
        except TimeoutError:
            raise TimeoutError(f"no answer within {self.member_timeout_s:g} s") from None

    async def _refresh_prices(self, now: float) -> None:
        """Read the price lists again every PRICE_REFRESH_S: a provider's new price goes to the ledger, the budgets
        and the placement order. Read once at start, a RunPod price raised from 0.69 to 3.49 was charged at 0.69
        and kept RunPod first, ahead of a Verda at 2.99, until a restart. A price list that fails keeps the last
        price, and is read again an hour later."""
        if now - self._prices_read_at < PRICE_REFRESH_S:
            return
        self._prices_read_at = now
        lookups = {m.name: m.price_lookup for m in self.members.values() if m.price_lookup is not None}
        if not lookups:
            return
        results = await settled(self._bounded(lookup()) for lookup in lookups.values())
        for member, result in zip((self.members[name] for name in lookups), results, strict=True):
            if isinstance(result, Exception):
                log.warning("provider_price_refresh_failed", provider=member.name, error=error_text(result),
                            price_per_hour=member.spec.price_per_hour, hint="the last price is kept")
            elif result != member.spec.price_per_hour:
                log.info("provider_price_changed", provider=member.name, before=member.spec.price_per_hour,
                         after=result)
                member.spec = replace(member.spec, price_per_hour=result)
                if self.metrics is not None:
                    self.metrics.price.labels(provider=member.name).set(result)
        self.config = replace(self.config, providers=tuple(
            self.members[p.name].spec if p.name in self.members else p for p in self.config.providers
        ))

    def _see(self, member: Member, result: BackendView | Exception, now: float) -> None:
        name = member.name
        previous = self._seen.get(name)
        write_error = self._write_errors.pop(name, None)
        if member.in_process:
            if isinstance(result, Exception):
                self._in_process_views.pop(name, None)
            else:
                self._in_process_views[name] = result
        if isinstance(result, Exception):
            last = previous.view if previous else ProviderView()
            view = replace(last, error=error_text(result))
            self._seen[name] = _Seen(view, previous.replicas if previous else (), fresh=False)
            if self.metrics is not None:  # not the count of the last read: nobody knows it now
                for state in ("live", "ready"):
                    self.metrics.replicas.labels(provider=name, state=state).set(math.nan)
            return
        error = None
        if write_error is not None and not _holds(result, write_error[0]):
            error = f"write failed: {write_error[1]}"
        elif write_error is not None:
            # Cut off by member_timeout_s (a slow API: RunPod's listing then creates, 2 answers) or failed after
            # the provider did the work: what it holds now says it works. Counted as errors, jobs arriving 3 a tick
            # at 2 s an answer degraded RunPod while its pods ran, and the fleet held 6 replicas for 10 jobs.
            log.info("provider_write_landed", provider=name, target=write_error[0], error=write_error[1])
        view = provider_view(result, error)
        self._seen[name] = _Seen(view, result.replicas)
        if self.metrics is not None:
            self.metrics.replicas.labels(provider=name, state="live").set(view.live)
            self.metrics.replicas.labels(provider=name, state="ready").set(view.ready)

    def _charge(self, now: float) -> None:
        for name, seen in self._seen.items():
            if seen.fresh:
                member, charged_at = self.members[name], self.monotonic()
                elapsed_s = charged_at - self._charged_at[name] if name in self._charged_at else None
                self.ledger.charge(name, seen.replicas, now, price_per_hour=member.spec.price_per_hour,
                                   rule=member.billing, elapsed_s=elapsed_s)
                self._charged_at[name] = charged_at
        self.ledger.forget_gone(self.members)
        summary = self.ledger.summary(now)
        if self.metrics is not None:
            for name, windows in summary.items():
                for window, amount in windows.items():
                    self.metrics.spend.labels(provider=name, window=window).set(amount)
        if self.alerts is not None:
            for alert in budget_alerts(summary["total"]["last_day"], self.config.max_spend_per_day, now):
                self.alerts.raise_(alert)
        self.save()

    def record_stopped(self) -> None:
        """Saves that the in-process members' replicas stop with this scaler (the `local` workers, on aclose):
        `status` then says so, not the last tick's workers as running until the record is stale. The failed saves
        held back are counted then: no later one will."""
        for name in self._in_process_views:
            self._in_process_views[name] = BackendView((), STOPPED)
        self.save()
        self._save_failures.flush()

    def committed_spend(self, now: float) -> dict[str, float]:
        total = self.ledger.summary(now)["total"]
        return {"hour": total["last_hour"], "day": total["last_day"]}

    def budgets(self) -> dict[str, float | None]:
        return {"hour": self.config.max_spend_per_hour, "day": self.config.max_spend_per_day}

    def save(self) -> None:
        if self.ledger_file is None or self.dry_run:
            return
        if self.alerts is not None:
            try:
                self._take_in_alerts_booked_elsewhere(self.ledger_file, self.alerts.book)
            except SavedFileUnreadable as exc:  # a newer scaler's ledger: left as it is, the charges kept in memory
                self._save_failures.failed(self.ledger_file, exc)
                return
            self.ledger.alerts = self.alerts.book.to_json()
        # For `comfy-scaler status`, another process: which providers this fleet holds degraded, as of now, and
        # the replicas of those that live in this process.
        self.ledger.health = HealthRecord.of(
            self.state.health, self._degraded_notes, self.clock(), views=self._in_process_views
        ).to_json()
        try:
            self.ledger.save(self.ledger_file)
            self._saved = _identity(self.ledger_file)
        except OSError as exc:
            # The charges stay in memory and the caps keep reading them: a full disk must not freeze the fleet.
            self._save_failures.failed(self.ledger_file, exc)
        else:
            self._save_failures.saved(self.ledger_file)

    def _take_in_alerts_booked_elsewhere(self, path: Path, book: AlertBook) -> None:
        """`comfy-scaler stop --all` books its kill_switch alert in the ledger file from another process: taken
        into this book before the save writes over it, so that the alert still goes out once a day. Read only
        when the file is no longer the one this fleet wrote (and once at the first save). SavedFileUnreadable when a
        newer scaler wrote it: written over, what that one kept in it was lost."""
        if _identity(path) == self._saved:
            return
        try:
            saved = read_saved(path, "SCALER_LEDGER_FILE")
        except SavedFileUnreadable:  # cannot be read at all (a FIFO held the read for good): overwritten, as before
            return
        if saved is None:
            return
        with contextlib.suppress(*UNREADABLE):  # unreadable: it is overwritten, as before
            raw = json.loads(saved.decode())
            refuse_newer(raw, LEDGER_VERSION, f"SCALER_LEDGER_FILE {path}", "ledger")
            book.take_in(AlertBook.from_json(CostLedger.from_json(raw).alerts))

    async def _place(self, desired: int, now: float) -> bool:
        views = {name: seen.view for name, seen in self._seen.items()}
        allocation = allocate(
            self.config, self._state_to_judge(views), desired, views, now,
            spent_last_day=self.ledger.spent_since(now - DAY_S),
        )
        self.state, self._judged = allocation.new_state, True
        self.last_allocation = allocation
        self._report(allocation, now)
        if self.dry_run:
            return bool(allocation.moves)
        grew = any(target > self.ledger.live.get(name, 0) for name, target in allocation.targets.items())
        if grew:
            # Saved before the writes, not at the next tick: replicas asked for by a scaler stopped before it lists
            # them (a write cut short included) are still found by the next one if their provider leaves
            # SCALER_PROVIDERS (scaler.wiring).
            for name, target in allocation.targets.items():
                self.ledger.live[name] = max(target, self.ledger.live.get(name, 0))
        if grew or allocation.health_changes:  # a degradation shows in `status` now, not a tick later
            self.save()
        # Write what changed, and again after a failed write or a count the provider does not show.
        writes = [(name, target) for name, target in allocation.targets.items()
                  if target != self._written.get(name) or target != self._seen[name].view.live]
        results = await settled(self._bounded(self.members[name].backend.apply(target)) for name, target in writes)
        wrote = False
        for (name, target), result in zip(writes, results, strict=True):
            if isinstance(result, Exception):
                self._written.pop(name, None)
                self._write_errors[name] = (target, error_text(result))
                log.error("provider_write_failed", provider=name, target=target, error=self._write_errors[name][1])
                continue
            self._written[name] = target
            wrote = wrote or bool(result)
        return wrote

    def _state_to_judge(self, views: dict[str, ProviderView]) -> AllocatorState:
        """The state the allocator judges this tick's reads from. The loop's write after a read places again from the
        same reads: their errors are one failed tick, not two. Counted at both, a failed read at a tick whose count
        changed was 2 of SCALER_FALLBACK_ERROR_TICKS' 3: jobs arriving degraded a provider after 2 failed reads."""
        if not self._judged:
            return self.state
        health = {name: replace(h, consecutive_errors=h.consecutive_errors - 1)
                  if views.get(name) is not None and views[name].error is not None and h.consecutive_errors > 0 else h
                  for name, h in self.state.health.items()}
        return replace(self.state, health=health)

    def _report(self, allocation: Allocation, now: float) -> None:
        for change in allocation.health_changes:
            log_health_change(change)
            self.move_log.append({"at": now, "provider": change.provider, "health": str(change.degraded or "back"),
                                  "detail": change.detail})
            if change.degraded is None:
                self._degraded_notes.pop(change.provider, None)
            else:
                self._degraded_notes[change.provider] = (now, change.detail)
                if self.metrics is not None:
                    self.metrics.degradations.labels(provider=change.provider, reason=str(change.degraded)).inc()
        for move in allocation.moves:
            self.move_log.append({"at": now, "provider": move.provider, "before": move.before, "after": move.after,
                                  "reason": str(move.reason)})
            log.info("Provider move", provider=move.provider, before=move.before, after=move.after,
                     reason=str(move.reason), dry_run=self.dry_run)
            if self.metrics is not None:
                self.metrics.moves.labels(provider=move.provider, reason=str(move.reason)).inc()
        for name in allocation.budget_capped:
            log.warning("Provider capped by budget", provider=name, target=allocation.targets[name])
            if self.metrics is not None:
                self.metrics.budget_capped.labels(provider=name).inc()
        if self.metrics is not None:
            for name, target in allocation.targets.items():
                self.metrics.target_replicas.labels(provider=name).set(target)
                degraded = allocation.new_state.health[name].degraded is not None
                self.metrics.degraded.labels(provider=name).set(int(degraded))
            self.metrics.fallback_engaged.set(int(allocation.fallback_engaged))
        if allocation.fallback_engaged and self.alerts is not None:
            health = allocation.new_state.health
            degraded = {n: str(h.degraded) for n, h in health.items() if h.degraded is not None}
            serving = {n: t for n, t in allocation.targets.items() if t > 0}
            self.alerts.raise_(Alert(
                "fallback_engaged",
                f"fallback engaged: degraded {degraded}; replicas now placed {serving}",
                now, {"degraded": degraded, "targets": allocation.targets},
            ))

    def _fleet_status(self) -> str:
        statuses = [s.view.status for s in self._seen.values() if s.view.error is None]
        if statuses and all(status == PAUSED for status in statuses):
            return PAUSED
        health = self.state.health
        if health and all(h.degraded is not None for h in health.values()):
            return QUOTA_REACHED if any(s == QUOTA_REACHED for s in statuses) else "degraded"
        return HEALTHY

    async def _on_all(self, action: str, call: Callable[[Backend], Any]) -> None:
        results = await settled(call(m.backend) for m in self.members.values())
        failures = {name: error_text(r) for name, r in zip(self.members, results, strict=True)
                    if isinstance(r, Exception)}
        if failures:
            raise FleetStopError(action, failures)

    def status_report(self, now: float, stale_after_s: float = math.inf) -> dict[str, Any]:
        """Per provider: price, billing, max, target, live/ready, health; the ledger and the kill switch, for
        `status`. A dry run (`status` is one, in a process of its own) never degraded anything: the health shown
        is the running scaler's record in the ledger file, or ``unknown`` without one newer than
        ``stale_after_s``. Built from its own empty memory, `status` showed RunPod healthy while the running
        scaler had degraded it and fallen back to Verda."""
        reading = self._health_reading(now, stale_after_s)
        providers = {}
        for name, member in self.members.items():
            seen = self._seen.get(name)
            read = seen is not None and seen.fresh  # else its counts are not known: none, never 0
            providers[name] = {
                "price_per_hour": member.spec.price_per_hour,
                "billing": member.billing.describe(),
                "max_replicas": member.spec.max_replicas,
                "target": self.state.targets.get(name),
                "live": seen.view.live if read else None,
                "ready": seen.view.ready if read else None,
                "status": seen.view.status if read else None,
                "error": seen.view.error if seen else None,
                **degraded_fields(reading, name, now),
            }
            if member.in_process and self.dry_run:  # read from `comfy-scaler run`'s record: as of when (else null)
                record = reading.record if read else None
                providers[name]["read_at"] = iso(record.at) if record else None
                providers[name]["read_age_s"] = reading.age_s(now) if record else None
        return {"providers": providers, "health": reading_fields(reading, now), "spend": self.ledger.summary(now),
                "kill_switch": str(self.stop_file) if self._kill_switch_on() else None}

    def _kill_switch_on(self) -> bool:
        """Whether `comfy-scaler stop --all` left its file (``stop_file``) for this fleet to honour. One that cannot
        be looked for (a folder that cannot be searched) counts as set: a fault of the disk must not turn off the
        safety stop, nor fail every tick as it did."""
        if self.stop_file is None:
            return False
        try:
            present = stop_file_present(self.stop_file)
        except OSError as exc:
            if not self._stop_file_unreadable:
                log.error("kill_switch_unreadable", stop_file=str(self.stop_file), error=error_text(exc),
                          hint="every provider is held at zero until the scaler can look for this file: "
                               "let it search the folder")
            self._stop_file_unreadable = True
            return True
        self._stop_file_unreadable = False
        return present

    def _health_reading(self, now: float, stale_after_s: float) -> HealthReading:
        if not self.dry_run:
            return HealthReading(HealthRecord.of(self.state.health, self._degraded_notes, now))
        if self.ledger_file is None:
            return HealthReading(None, "no SCALER_LEDGER_FILE: the running scaler keeps provider health in its "
                                 "memory only")
        return read_health(self.ledger.health, now, stale_after_s)

