"""The live scaler: wait an interval or the stop event → read → decide (pure, ``scaler.policy.decide``) → apply.

The loop holds the policy's memory between ticks and is the only place that talks to the world. A read that
fails is not skipped: it becomes a flag on the observation, and the policy holds the last applied count. A read
or write still unanswered at the tick's deadline has failed (a peer that accepts and never answers costs one
tick, not minutes of retries), and a stop signal ends a tick under way within ``STOP_GRACE_S``.
Like a controller, it compares the decision with the replica bounds the platform reports on every tick, not
with what it last wrote: a count changed behind its back (`comfy-scaler stop` then `resume`, an edit in the
console, a deploy) is logged as drift and written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from common.logs import error_text
from scaler.billing import SpendLedger
from scaler.health_record import STOPPED, BackendHealth, HealthReading, HealthRecord, degraded_fields
from scaler.job_duration import DurationFromCounters
from scaler.ledger import (
    UNREADABLE,
    BillingRule,
    SavedFileUnreadable,
    changed_settings,
    kept_aside,
    log_clock_step,
    read_saved,
    recounted,
    refuse_newer,
    remove_stale_scratch,
    saved_number,
    write_json_atomically,
)
from scaler.metrics import QUEUE_MANAGER_HEALTH_UNKNOWN, ScalerMetrics
from scaler.planning import long_duration, robust_duration
from scaler.policy import (
    MAX_REPLICAS_LIMIT,
    PAUSED,
    QUOTA_REACHED,
    Decision,
    Observation,
    PolicyState,
    ScalingConfig,
    decide,
    estimated_spend,
)
from scaler.providers.base import Backend, BackendView, KeepsItsOwnBill
from scaler.queue_status import QueueStatus
from scaler.save_failures import SaveFailures
from scaler.settle import settled

log = structlog.get_logger()

T = TypeVar("T")

# Unless SCALER_TICK_DEADLINE_S says otherwise, a tick lasts at most SCALER_INTERVAL_S and never less than this:
# a Verda tick is 3 reads and a write (plus a token now and then), each answered in well under a second.
MIN_TICK_DEADLINE_S = 10.0
# The job lists (wait-target planning) are read within this share of the tick; those not answered by then are left
# out, and the status alone decides, with the rest of the tick left for the write.
JOB_LISTS_SHARE = 0.5
# After SIGTERM a tick under way may finish this long (a write in flight lands), then it is cancelled.
STOP_GRACE_S = 2.0


def tick_deadline(interval_s: float, configured_s: float | None = None) -> float:
    return configured_s if configured_s is not None else max(interval_s, MIN_TICK_DEADLINE_S)


class TickDeadlineExceeded(Exception):
    """A read or write still unanswered when the tick's time ran out."""


class QueueReader(Protocol):
    async def read(self) -> QueueStatus: ...

    async def read_with_timings(self, now: float, lists_by: float | None = None) -> QueueStatus: ...

    async def healthy(self) -> bool | None: ...


# What happened to a decision on its way to the platform, as logged in the "apply" field.
WROTE = "wrote"
ALREADY_SET = "already_set"
SKIPPED_DRY_RUN = "skipped_dry_run"
SKIPPED_READ_FAILED = "skipped_read_failed"
SKIPPED_PAUSED = "skipped_paused"
FAILED = "failed"

# The reason of the decision that ends a queue outage's hold (SCALER_QUEUE_OUTAGE_HOLD_S).
RELEASE_QUEUE_UNREACHABLE = "release_queue_unreachable"
# A gap between the saved state's last tick and a start longer than this is not counted as queue outage: the
# scaler was down. Longer than the period of any cron running `once`, whose gaps count whatever the hold.
UNSEEN_GAP_S = 3600.0


class ScalerLoop:
    def __init__(
        self,
        config: ScalingConfig,
        backend: Backend,
        queue: QueueReader,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        interval_s: float = 15.0,
        dry_run: bool = False,
        metrics: ScalerMetrics | None = None,
        failure_alert_after: int = 3,
        state: PolicyState | None = None,
        state_file: Path | None = None,
        tick_deadline_s: float | None = None,
        queue_outage_hold_s: float | None = None,
        backend_health: BackendHealth | None = None,
    ) -> None:
        self.config = config
        # A single backend's health, judged as a fleet's providers are: shown in the decision line and saved in
        # the state file for `status`; the policy decides as before (there is nowhere to fall back to).
        self.backend_health = backend_health
        # How long a queue manager that cannot be read holds the count (None: for ever); then down to the floor.
        self.queue_outage_hold_s = queue_outage_hold_s
        self.tick_deadline_s = tick_deadline(interval_s, tick_deadline_s)
        self.backend = backend
        self.queue = queue
        self.clock = clock
        # A clock never stepped, by which the spend ledger tells a wall clock stepped by NTP from a slow tick;
        # without one the wall clock is taken as never stepped.
        self.monotonic = monotonic or clock
        self._save_failures = SaveFailures(
            "policy_state_save_failed", "policy_state_saved_again",
            "the scaler goes on from its memory; a restart now would start afresh", self.monotonic)
        self._observed_on = 0.0  # monotonic time of the last observation
        self._spend_observed_on: float | None = None  # ... and of the last one the spend ledger took
        self.interval_s = interval_s
        self.dry_run = dry_run
        self.metrics = metrics or ScalerMetrics()
        self.metrics.set_limits(config)
        if isinstance(backend, KeepsItsOwnBill):
            self.metrics.set_budgets(backend.budgets())
        self.metrics.interval.set(interval_s)
        self.failure_alert_after = failure_alert_after
        self.state = state or PolicyState()
        self.durations_from_counters = DurationFromCounters()
        # Saved after every tick (never in a dry run): a scaler that crashes restarts with its memory.
        self.state_file = None if dry_run else state_file
        # The count last written to (or seen pinned on) the platform; None until then, so the first tick takes
        # ownership (pins min == max) even when the policy sees nothing to change. A platform that reports
        # its bounds is compared with those instead; this count is only what drift is measured against.
        self.on_backend: int | None = None
        self.counted_from_platform = False
        self.last_view: BackendView | None = None
        self.last_queue: QueueStatus | None = None
        # (count before, count written) while a write to the platform is under way: a tick cut short then may
        # have changed the count, in whole or in part (a fleet writes to each of its providers separately).
        self._writing: tuple[int, int] | None = None
        # The count of the last write that failed: it may have landed all the same (its answer lost, or cut off by
        # the deadline), and the next read that shows it is that write, not drift.
        self._write_failed: int | None = None
        self._ticked = False  # this process has decided once: the gap since the saved state's last tick is behind it
        self.last_apply: str | None = None  # the tick's outcome of writing its count (WROTE, FAILED...), None till then

    async def run(self, stop: asyncio.Event) -> None:
        """A tick every ``interval_s`` (start to start) until ``stop`` is set; a tick under way when it is set gets
        ``STOP_GRACE_S`` to finish."""
        log.info("scaler_started", interval_s=self.interval_s, tick_deadline_s=self.tick_deadline_s,
                 dry_run=self.dry_run, backend=repr(self.backend))
        clock = asyncio.get_running_loop().time
        while not stop.is_set():
            started = clock()
            await self._tick_unless_stopped(stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, started + self.interval_s - clock()))
        self._save_failures.flush()
        log.info("scaler_stopped", desired=self.state.applied)

    async def _tick_unless_stopped(self, stop: asyncio.Event) -> None:
        tick = asyncio.create_task(self._logged_tick())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({tick, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not tick.done():
                await asyncio.wait({tick}, timeout=STOP_GRACE_S)
            if not tick.done():
                self._log_cut_short()
        finally:
            for task in (tick, stopped):
                task.cancel()
            await asyncio.wait({tick, stopped})

    def _log_cut_short(self) -> None:
        if self.last_apply is not None:
            log.warning("scaler_tick_cut_short", grace_s=STOP_GRACE_S, apply=self.last_apply,
                        hint="stopping while the queue manager's /health was read: the tick's decision was already "
                        "carried out (see `apply`) and saved; only comfy_scaler_queue_manager_healthy is not updated")
            return
        if self._writing is None:
            log.warning("scaler_tick_cut_short", grace_s=STOP_GRACE_S,
                        hint="stopping before the tick under way wrote its decision: the platform keeps its count")
            return
        before, desired = self._writing
        log.warning("scaler_tick_cut_short", grace_s=STOP_GRACE_S, write_under_way=desired, count_before=before,
                    hint=f"stopping while the write of {desired} replicas was under way: it may have landed in whole, "
                    "in part or not at all, and the platform keeps whatever did; `comfy-scaler status` shows the count "
                    "now, the next start counts from it")

    async def _logged_tick(self) -> None:
        try:
            await self.tick()
        except Exception as exc:
            # A tick that raised applied nothing: the count is held, and the next tick tries again.
            log.error("scaler_tick_failed", error=error_text(exc), exc_info=True,
                      hint="nothing was applied at this tick; the count is held")

    async def tick(self) -> Decision:
        deadline = asyncio.get_running_loop().time() + self.tick_deadline_s
        self.last_apply = None
        # Read alongside the tick and awaited once the decision is applied: /health never delays nor alters it.
        health = asyncio.create_task(self._by(deadline, self.queue.healthy(), "the queue manager's health"))
        try:
            decision = await self._decide_and_apply(deadline)
        except BaseException:
            health.cancel()
            raise
        await self._note_queue_manager_health(health)
        return decision

    async def _note_queue_manager_health(self, health: asyncio.Task[bool | None]) -> None:
        try:
            healthy = await health
        except Exception:  # no answer by the tick's deadline: cannot tell
            healthy = None
        self.metrics.queue_manager_healthy.set(QUEUE_MANAGER_HEALTH_UNKNOWN if healthy is None else int(healthy))

    async def _decide_and_apply(self, deadline: float) -> Decision:
        observation = await self.observe(deadline)
        if self.backend_health is not None:
            view = self.last_view if observation.verda_error is None else None
            self.backend_health.see(view, observation.verda_error, self.on_backend or 0, observation.now)
        if not self._ticked:
            self.state, self._ticked = self._outage_as_seen(observation.now), True
        decision = self._bounded_hold(decide(self.config, self.state, observation), observation)
        if decision.new_state.ledger.observed_at == observation.now:  # not after a failed read of the platform
            self._spend_observed_on = self._observed_on
            log_clock_step(*decision.new_state.ledger.clock_step)
        self.state = decision.new_state
        if observation.deployment_status == PAUSED:
            # Paused, the platform runs nothing (`comfy-scaler stop`): the count is what it lists once resumed. Kept
            # as the count applied, the one before the stop was held after `resume` (till the boundary of intervals
            # the stop cut short) and started again for an empty queue.
            self.state = replace(self.state, applied=None)
        outcome, apply_error = await self._apply(decision, observation, deadline)
        self.last_apply = outcome
        health = self.backend_health.record(observation.now) if self.backend_health is not None else None
        self._record(decision, observation, outcome, apply_error, health)
        self._save(health)
        return decision

    def _save(self, health: HealthRecord | None) -> None:
        if self.state_file is None:
            return
        try:
            save_policy_state(self.state_file, self.state, billing_of(self.config), health)
        except OSError as exc:
            self._save_failures.failed(self.state_file, exc)
        else:
            self._save_failures.saved(self.state_file)

    def record_stopped(self) -> None:
        """Saves that this scaler stopped and its replicas with it (the `local` backend's workers die with it):
        `status` then says so, not the last tick's workers as running until the record is stale."""
        if self.backend_health is not None:
            self.backend_health.view = BackendView((), STOPPED)
            self._save(self.backend_health.record(self.clock()))
            self._save_failures.flush()

    def _count_from_the_platform(self) -> None:
        """The policy's ``current`` is what the platform holds whenever that is not what this process left there: at
        the first tick (a state file saved before someone stopped, resumed or edited the deployment) and after drift.
        Kept at its saved count, the policy held or wrote back replicas nobody needed: after `stop` and `resume` with
        an empty queue it pinned the old 3 again and paid a 10-minute interval for each."""
        assert self.last_view is not None
        bounds = self.last_view.bounds
        if self._write_failed is not None and bounds == (self._write_failed, self._write_failed):
            log.info("platform_write_landed", count=self._write_failed,
                     hint="the write reported as failed at the last tick was carried out")
            self.on_backend = self._write_failed
        self._write_failed = None
        first, self.counted_from_platform = not self.counted_from_platform, True
        drifted = None not in (bounds, self.on_backend) and bounds != (self.on_backend, self.on_backend)
        if not (first or drifted):
            return
        pinned = bounds is not None and bounds[0] == bounds[1]
        # Not pinned (a deploy's min 0 / max 5, or a platform without bounds): the policy counts the listed replicas.
        self.state = replace(self.state, applied=bounds[0] if pinned else None)

    def _outage_as_seen(self, now: float) -> PolicyState:
        """The saved queue outage, without the gap since the last process's last tick when it is longer than
        UNSEEN_GAP_S: nobody read the queue then. Counted, a scaler started 5 hours after one that saw a minute of
        outage released the replicas at its first failed read, though the queue may have answered all that time.
        Shorter gaps (`once` from cron, a restart) count, as before."""
        since = self.state.queue_unreadable_since
        last_tick = self.state.last_work_seen_at  # a failed read sets it: with an outage saved, the last tick's time
        if since is None or last_tick is None or self.queue_outage_hold_s is None:
            return self.state
        gap_s = now - last_tick
        if gap_s <= UNSEEN_GAP_S:
            return self.state
        log.info("queue_outage_gap_left_out", gap_s=round(gap_s), seen_s=round(last_tick - since),
                 hint="the scaler was not running: the outage counts from what it saw, and from now")
        return replace(self.state, queue_unreadable_since=since + gap_s)

    def _bounded_hold(self, decision: Decision, observation: Observation) -> Decision:
        """A queue manager unreadable for ``queue_outage_hold_s`` while the platform answers: the workers can take no
        job either, so the replicas are let go down to the floor instead of being billed for the whole outage
        (3 replicas held through 6 hours: $41.40, past a $50 daily cap, which only caps scale-ups). The outage's
        start is in the policy's state, so a restart or a `once` from cron does not start the hold again."""
        unreadable_since = decision.new_state.queue_unreadable_since
        if unreadable_since is None:
            return decision
        unreadable_for_s = observation.now - unreadable_since
        floor = self.config.min_replicas
        if (self.queue_outage_hold_s is None or unreadable_for_s < self.queue_outage_hold_s
                or observation.verda_error is not None or observation.deployment_status == PAUSED
                or decision.current <= floor):
            return decision
        details = {**decision.details, "queue_unreadable_for_s": round(unreadable_for_s)}
        return replace(decision, desired=floor, reason=RELEASE_QUEUE_UNREACHABLE, details=details, changed=True,
                       new_state=replace(decision.new_state, applied=floor))

    async def observe(self, deadline: float | None = None) -> Observation:
        """Both reads at once; one still unanswered at ``deadline`` (event-loop time; default: a tick from now)
        has failed. A platform that answered also gives the policy its count when this process did not leave it."""
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self.tick_deadline_s
        lists_by = deadline - (1 - JOB_LISTS_SHARE) * self.tick_deadline_s
        read = (self.queue.read() if self.config.target_wait_s is None
                else self.queue.read_with_timings(self.clock(), lists_by=lists_by))
        queue, view = await settled([
            self._by(deadline, read, "the queue manager's status"),
            self._by(deadline, self.backend.observe(), "the platform's replicas"),
        ])
        now, self._observed_on = self.clock(), self.monotonic()
        queue_error = verda_error = None
        if isinstance(queue, Exception):
            queue_error = error_text(queue)
            self.metrics.read_errors.labels(source="queue").inc()
        else:
            self.last_queue = queue
        if isinstance(view, Exception):
            verda_error = error_text(view)
            self.metrics.read_errors.labels(source="backend").inc()
        else:
            self.last_view = view
            self._count_from_the_platform()
        return Observation(
            now=now,
            pending=queue.pending_jobs if isinstance(queue, QueueStatus) else 0,
            running=queue.running_jobs if isinstance(queue, QueueStatus) else 0,
            replicas=view.replicas if isinstance(view, BackendView) else (),
            deployment_status=view.status if isinstance(view, BackendView) else "unknown",
            pending_ages_s=queue.pending_ages_s if isinstance(queue, QueueStatus) else (),
            running_elapsed_s=queue.running_elapsed_s if isinstance(queue, QueueStatus) else (),
            running_waited_s=queue.running_waited_s if isinstance(queue, QueueStatus) else (),
            recent_waits_s=queue.recent_waits_s if isinstance(queue, QueueStatus) else (),
            job_duration_s=self._job_duration(queue) if isinstance(queue, QueueStatus) else None,
            # Without listed completions there is no spread to read: a long job is then the typical one.
            long_job_duration_s=long_duration(queue.recent_durations_s, 0.0) or None
            if isinstance(queue, QueueStatus) else None,
            queue_error=queue_error,
            verda_error=verda_error,
            elapsed_s=None if self._spend_observed_on is None else self._observed_on - self._spend_observed_on,
        )

    def _job_duration(self, queue: QueueStatus) -> float:
        """The median of the listed recent completions; without them, the mean from the counters; else the default.
        The counters are timed on the clock never stepped: on the wall clock, NTP stepping it an hour forward
        counted the hour as time the running jobs ran."""
        from_counters = self.durations_from_counters.observe(
            self._observed_on, queue.running_jobs, queue.completed_jobs + queue.failed_jobs
        )
        return robust_duration(queue.recent_durations_s, from_counters or self.config.default_job_duration_s)

    async def _by(self, deadline: float, work: Awaitable[T], what: str) -> T:
        """``work``'s result, or TickDeadlineExceeded (``work`` cancelled) when it is not done at ``deadline``."""
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                return await work
        except TimeoutError:
            if not timeout.expired():
                raise
            raise TickDeadlineExceeded(
                f"{what}: no answer within the tick's {self.tick_deadline_s:g} s"
            ) from None

    async def _apply(self, decision: Decision, observation: Observation, deadline: float) -> tuple[str, str | None]:
        if observation.failed and decision.reason != RELEASE_QUEUE_UNREACHABLE:
            return SKIPPED_READ_FAILED, None
        if observation.deployment_status == PAUSED:
            return SKIPPED_PAUSED, None
        if self.dry_run:
            return SKIPPED_DRY_RUN, None
        bounds = self.last_view.bounds if self.last_view is not None else None
        if bounds is not None and self.on_backend is not None and bounds != (self.on_backend, self.on_backend):
            self.metrics.drift.inc()
            log.warning(
                "scaling_drift",
                expected_min=self.on_backend,
                expected_max=self.on_backend,
                observed_min=bounds[0],
                observed_max=bounds[1],
                desired=decision.desired,
                hint="someone changed the replica bounds outside the scaler (console, stop/resume, deploy); "
                "the scaler decides from what the platform holds now",
            )
        if bounds == (decision.desired, decision.desired):
            self.on_backend = decision.desired
            return ALREADY_SET, None
        if bounds is None and decision.desired == self.on_backend:
            return ALREADY_SET, None
        self._writing = (decision.current, decision.desired)
        try:
            wrote = await self._by(deadline, self.backend.apply(decision.desired), "the platform's write")
        except Exception as exc:
            self.metrics.apply_errors.inc()
            self._write_failed = decision.desired
            return FAILED, error_text(exc)
        finally:
            self._writing = None
        self.on_backend = decision.desired
        if wrote:
            self.metrics.applies.inc()
            return WROTE, None
        return ALREADY_SET, None

    def _committed_spend(self, now: float) -> dict[str, float]:
        if isinstance(self.backend, KeepsItsOwnBill):
            return self.backend.committed_spend(now)
        spend = estimated_spend(self.config, self.state, now)
        return {"hour": spend["spend_last_hour"], "day": spend["spend_last_day"]}

    def _record(
        self, decision: Decision, observation: Observation, outcome: str, apply_error: str | None,
        health: HealthRecord | None,
    ) -> None:
        m = self.metrics
        m.decisions.labels(reason=decision.reason).inc()
        # Paused (`comfy-scaler stop`), the decision holds the count it sees; the operator asked for none, and
        # replicas a platform kept up after the stop raised no ComfyReplicasNotStopping.
        m.desired_replicas.set(0 if observation.deployment_status == PAUSED else decision.desired)
        m.consecutive_failures.set(self.state.consecutive_failures)
        m.last_decision.set(observation.now)
        if observation.verda_error is None:
            m.actual_replicas.set(len(observation.replicas))
        if observation.queue_error is None:
            m.pending_jobs.set(observation.pending)
            m.running_jobs.set(observation.running)
        spend = self._committed_spend(observation.now)
        for window, amount in spend.items():
            m.estimated_spend.labels(window=window).set(amount)
        details = decision.details
        if "spend_last_day" in details:  # a fleet's bill, not the policy's (which prices nothing for a fleet)
            details = {**details, "spend_last_hour": spend["hour"], "spend_last_day": spend["day"]}

        fields: dict[str, Any] = {
            "desired": decision.desired,
            "current": decision.current,
            "reason": decision.reason,
            "changed": decision.changed,
            "apply": outcome,
            "dry_run": self.dry_run,
            "details": details,
        }
        if apply_error:
            fields["apply_error"] = apply_error
        degraded = self._backend_degraded(health, observation.now)
        fields.update(degraded)
        failures = self.state.consecutive_failures
        if apply_error or failures >= self.failure_alert_after:
            log.error("Scaling decision", consecutive_failures=failures, **fields)
        elif observation.failed or observation.deployment_status in (PAUSED, QUOTA_REACHED) or degraded:
            log.warning("Scaling decision", **fields)
        else:
            log.info("Scaling decision", **fields)

    def _backend_degraded(self, health: HealthRecord | None, now: float) -> dict[str, Any]:
        """The single backend's degradation for the decision line (``degraded``, ``degraded_detail``,
        ``retry_in_s``…) from this tick's ``health`` record, as `status` shows a fleet's provider; empty while it is
        in service. Without it, local workers crash-looping read `steady` at info: only warnings and
        comfy_scaler_actual_replicas said so."""
        if health is None or self.backend_health is None:
            return {}
        fields = degraded_fields(HealthReading(health), self.backend_health.name, now)
        return {name: value for name, value in fields.items() if value is not None} if fields["degraded"] else {}


# --- memory across processes, for `comfy-scaler once` run from cron ---------------------------------------

# The state file's format: raised when a field changes meaning, so that an older scaler refuses the file.
POLICY_STATE_VERSION = 1


def billing_of(config: ScalingConfig) -> BillingRule:
    """The rule the policy's spend ledger counts its intervals in."""
    return BillingRule(interval_s=config.billing_interval_s, anchor=config.billing_anchor)


def save_policy_state(
    path: Path, state: PolicyState, billing: BillingRule | None = None, health: HealthRecord | None = None
) -> None:
    """Write atomically, so a cron run killed mid-write leaves the previous state intact. ``billing``: the rule
    the ledger's intervals were counted in, saved beside them; ``health``: the backend's, for `status`."""
    content = {"version": POLICY_STATE_VERSION, **asdict(state)}
    del content["ledger"]["clock_step"]  # what the last tick logged, not memory
    if billing is not None:
        content["billing"] = billing.to_json()
    if health is not None:
        content["health"] = health.to_json()
    write_json_atomically(path, content)


def saved_health(path: Path) -> Any:
    """The ``health`` record a running scaler saved in its state file; None without one (or without the file)."""
    try:
        saved = read_saved(path, "SCALER_STATE_FILE")
        raw = json.loads(saved) if saved is not None else None
    except (SavedFileUnreadable, *UNREADABLE):
        return None
    return raw.get("health") if isinstance(raw, dict) else None


def load_policy_state(path: Path, billing: BillingRule | None = None, *, read_only: bool = False) -> PolicyState:
    """The saved state, or a fresh one when there is none (first run). A file that cannot be read (truncated,
    not JSON, a value of the wrong type) is kept aside as ``<name>.corrupt-<time>`` and logged: the scaler
    starts afresh rather than not at all, and says that the spend it remembered is gone. Intervals saved under
    another rule than ``billing`` are converted to it. ``read_only`` (a dry run, which saves nothing): the
    folder is left as it is, an unreadable file where it lies. A file that cannot be read at all (no
    permission, a directory) or written by a newer scaler raises SavedFileUnreadable: it is not corrupt."""
    if not read_only:
        remove_stale_scratch(path)
    if (saved := read_saved(path, "SCALER_STATE_FILE")) is None:
        return PolicyState()
    try:
        raw = json.loads(saved.decode())
        refuse_newer(raw, POLICY_STATE_VERSION, f"SCALER_STATE_FILE {path}", "state")
        return _policy_state(raw, billing)
    except UNREADABLE as exc:
        log.error("policy_state_unreadable", path=str(path), kept_as=kept_aside(path, read_only), error=error_text(exc),
                  hint="started with a fresh state: the spend of the last day (SCALER_MAX_SPEND_PER_*) counts "
                  "from zero again")
        return PolicyState()


def _policy_state(raw: dict[str, Any], billing: BillingRule | None) -> PolicyState:
    ledger = raw.get("ledger") or {}
    opening_load = raw.get("opening_load") or (0.0, 0)
    applied = raw.get("applied")
    return PolicyState(
        applied=None if applied is None else _count(applied, "applied", most=MAX_REPLICAS_LIMIT),
        demand_samples=tuple((saved_number(t, "demand_samples"), _whole(n, "demand_samples"))
                             for t, n in raw.get("demand_samples", ())),
        last_work_seen_at=_moment(raw.get("last_work_seen_at"), "last_work_seen_at"),
        last_scale_down_at=_moment(raw.get("last_scale_down_at"), "last_scale_down_at"),
        consecutive_failures=_count(raw.get("consecutive_failures", 0), "consecutive_failures"),
        queue_unreadable_since=_moment(raw.get("queue_unreadable_since"), "queue_unreadable_since"),
        opening_started_at=_moment(raw.get("opening_started_at"), "opening_started_at"),
        opening_load=(saved_number(opening_load[0], "opening_load"), _whole(opening_load[1], "opening_load")),
        learned_prewarm=_count(raw.get("learned_prewarm", 0), "learned_prewarm"),
        held_at_zero_since=_moment(raw.get("held_at_zero_since"), "held_at_zero_since"),
        ledger=SpendLedger(
            charges=tuple((saved_number(t, "charges"), saved_number(amount, "charges"))
                          for t, amount in ledger.get("charges", ())),
            billed=_billed_in(raw.get("billing"), billing, tuple(
                ((str(key[0]), saved_number(key[1], "billed")), _whole(count, "billed"))
                for key, count in ledger.get("billed", ())
            )),
            observed_at=_moment(ledger.get("observed_at"), "observed_at"),
        ),
    )


def _billed_in(
    saved_raw: Any, billing: BillingRule | None, billed: tuple[tuple[tuple[str, float], int], ...]
) -> tuple[tuple[tuple[str, float], int], ...]:
    """The ledger's intervals charged, counted in ``billing``: read in another interval as they were, 3 intervals of
    10 minutes were 3 hours after SCALER_BILLING_INTERVAL_S went from 600 to 3600, and 2 hours went uncharged."""
    if saved_raw is None or billing is None:  # a file saved before the rule was: taken as in today's
        return billed
    saved = BillingRule.from_json(saved_raw)
    if saved == billing or not billed:
        return billed
    log.warning("policy_state_billing_changed", setting=changed_settings(saved, billing), saved=saved.describe(),
                now=billing.describe(), hint="the replicas' charges are carried over; the interval under way is "
                "charged again in full, so the spend may read high until it leaves the window, never low")
    return tuple((key, int(recounted(key[1], count, saved, billing))) for key, count in billed)


def _count(value: Any, name: str, most: float = math.inf) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise ValueError(f"{name}={value!r} is not a count")
    return value


def _whole(value: Any, name: str) -> int:
    """A number read back as a whole one: infinity, NaN or an integer past any float is corruption, as in
    ``saved_number``."""
    return int(saved_number(value, name))


def _moment(value: Any, name: str) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"{name}={value!r} is not a time")
    return None if value is None else saved_number(value, name)
