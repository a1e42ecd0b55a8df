"""What each provider bills, by its own rule, kept in one-minute buckets and saved to a JSON file.

Verda bills every started 10-minute interval of a replica in full (scaler/billing.py); RunPod bills per second
of runtime. The ledger charges what the replicas it is shown have begun or run since the last look, once per
replica and interval (or second), and answers spend over any window across all providers together, which is
what the spend caps and the budget alerts read.

Per-second charges run up to the last time a replica was seen: a replica that stops between two looks is
under-counted by at most one tick. The file is replaced atomically (write, fsync, rename), so a crash
mid-write leaves the previous ledger; a scaler restarted later charges its replicas from where it stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import secrets
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from common.durable import sync, sync_folder
from common.processes import pid_running
from common.small_files import FileTooLarge, NotARegularFile, read_small_file
from common.timespans import DAY_S, HOUR_S
from scaler.billing import (
    BilledReplica,
    BillingAnchor,
    billed_intervals,
    interval_start,
    intervals_to_charge,
)
from scaler.clock_step import measured_step, unmeasured_step_back

log = structlog.get_logger()

BUCKET_S = 60.0
KEEP_S = 2 * DAY_S  # a rolling day plus the whole calendar day before it
PER_SECOND = 0.0
LEDGER_VERSION = 1
# The most of a saved state or ledger file read: ten times the most a scaler writes (three providers each listing
# MAX_LISTED_REPLICAS, about 6 MB each). Read whole, /dev/zero took memory without end.
MAX_SAVED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BillingRule:
    """``interval_s`` 0 means per second of runtime; otherwise every started interval is billed in full."""

    interval_s: float = PER_SECOND
    anchor: BillingAnchor = BillingAnchor.STARTED_AT

    @property
    def per_second(self) -> bool:
        return self.interval_s <= 0

    def describe(self) -> str:
        return "per second" if self.per_second else f"started {self.interval_s / 60:g}-minute intervals"

    def to_json(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s, "anchor": self.anchor.value}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> BillingRule:
        interval_s = saved_number(raw["interval_s"], "rules.interval_s")
        if interval_s < 0:
            raise ValueError(f"rules.interval_s: {interval_s!r} is not an interval")
        return cls(interval_s=interval_s, anchor=BillingAnchor(raw["anchor"]))


VERDA_BILLING = BillingRule(interval_s=600.0)
RUNPOD_BILLING = BillingRule(interval_s=PER_SECOND)


def _bucket(at: float) -> int:
    return int(at // BUCKET_S * BUCKET_S)


def log_clock_step(step: float, moved_spend: float, **fields: Any) -> None:
    """The operator's line for a ledger that followed a wall-clock step (docs/scaler.md); none for 0."""
    if step > 0:
        log.warning("ledger_clock_stepped_forward", **fields, stepped_s=round(step), moved_spend=round(moved_spend, 4),
                    hint="the time that passed is charged, not the step; the spend's dates moved with the clock")
    elif step < 0:
        log.warning("ledger_clock_stepped_back", **fields, stepped_back_s=round(-step),
                    moved_spend=round(moved_spend, 4),
                    hint="spend dated after now is counted as spent now: the caps may read high for a day at most, "
                    "never low")


def _per_second(rule: BillingRule | None) -> bool:
    return rule is not None and rule.per_second


def _moved(buckets: dict[int, float], by: float) -> dict[int, float]:
    moved: dict[int, float] = {}
    for at, amount in buckets.items():
        moved[_bucket(at + by)] = moved.get(_bucket(at + by), 0.0) + amount
    return moved


def _key(replica: BilledReplica) -> str:
    return f"{replica.id}@{replica.started_at:.3f}"


def _start_of(key: str) -> float:
    return saved_number(key.rpartition("@")[2], "billed")


def _charged_within(key: str, value: float, horizon: float, rule: BillingRule) -> bool:
    """Whether the replica of ``key`` was last charged after ``horizon`` (``value`` as kept in ``billed``)."""
    if rule.per_second:
        return value > horizon
    try:
        started_at = _start_of(key)
    except ValueError:  # a key of another shape, read from the file: nothing to keep it for
        return False
    return interval_start(started_at, int(value) - 1, rule.interval_s, rule.anchor) > horizon


def recounted(started_at: float, value: float, saved: BillingRule, rule: BillingRule) -> float:
    """A replica's charges counted under ``saved`` (intervals charged, or charged-until for per second) counted
    under ``rule``: what was paid for runs up to an instant; under an interval rule only the intervals over by
    then count as paid, so the one under way is charged again in full. Never less than the provider bills, more
    by at most one interval."""
    paid_until = value if saved.per_second else interval_start(started_at, int(value), saved.interval_s, saved.anchor)
    if rule.per_second:
        return paid_until
    return max(0, billed_intervals(started_at, paid_until, rule.interval_s, rule.anchor) - 1)


def changed_settings(saved: BillingRule, rule: BillingRule) -> str:
    changed = [name for name, differs in (("SCALER_BILLING_INTERVAL_S", saved.interval_s != rule.interval_s),
                                          ("SCALER_BILLING_ANCHOR", saved.anchor != rule.anchor)) if differs]
    return ", ".join(changed)


def day_start(now: float) -> float:
    """Midnight UTC of ``now``'s day: the budget alerts' "once per day" and the ledger's "today"."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class CostLedger:
    def __init__(self) -> None:
        self.buckets: dict[str, dict[int, float]] = {}  # provider -> bucket start -> amount
        # provider -> replica key -> intervals charged (interval rule) or charged-until epoch s (per second)
        self.billed: dict[str, dict[str, float]] = {}
        self.updated_at: float | None = None
        # provider -> replicas listed at its last read: a provider taken out of SCALER_PROVIDERS while it still
        # ran some is driven to zero by the next scaler (scaler.wiring), not left running and billed for ever.
        self.live: dict[str, int] = {}
        # provider -> the hourly price it was last charged at: a price list that does not answer at the next start
        # does not keep the fleet from starting (scaler.wiring).
        self.prices: dict[str, float] = {}
        self.looked_at: dict[str, float] = {}  # provider -> when it was last charged (its replicas last listed)
        # provider -> the rule its ``billed`` values are counted in: a scaler restarted with another
        # SCALER_BILLING_INTERVAL_S read 3 intervals of 10 minutes as 3 of an hour, and charged 2 hours less.
        self.rules: dict[str, BillingRule] = {}
        self.alerts: dict[str, Any] | None = None  # the alert book (scaler.alerts), saved in the same file
        # The running fleet's provider health (scaler.health_record), for `comfy-scaler status`; kept as read,
        # checked by its reader: a record of the wrong shape must not cost the day's spend.
        self.health: Any = None
        # The latest bucket of any provider (None: not known yet, found at the next charge): a step back is told
        # by it at every charge, and scanning every bucket for it cost a charge ~0.8 ms with full ledgers.
        self._latest_bucket: int | None = None

    def charge(
        self, provider: str, replicas: Iterable[BilledReplica], now: float, *, price_per_hour: float,
        rule: BillingRule, elapsed_s: float | None = None,
    ) -> float:
        """Charge what ``replicas`` (the provider's live list) have begun or run up to ``now``; returns it.
        ``elapsed_s``: the time since the provider's last charge on a clock that is never stepped (the fleet's
        monotonic clock; None at a process's first charge), by which a stepped wall clock is told from a slow tick."""
        replicas = tuple(replicas)
        stepped_s = self._follow_clock(provider, now, elapsed_s)
        self.live[provider] = len(replicas)
        self.prices[provider] = price_per_hour
        buckets = self.buckets.setdefault(provider, {})
        before = self._billed_in(provider, rule)
        self.rules[provider] = rule
        billed: dict[str, float] = {}
        total = 0.0
        horizon = now - KEEP_S
        listed_last = self._listed_at_last_look(before, rule, self.looked_at.get(provider))
        self.looked_at[provider] = now
        for replica in replicas:
            key, started_at = _key(replica), replica.started_at
            if key not in before and (same := listed_last.get(replica.id)) is not None:
                # The replica listed at the last look, now with another start: the one taken for it while the
                # provider listed none (when first listed, by a scaler since restarted) before its own. Charged
                # on under the first start: as new, it was charged its whole run again (0.77 $, not 0.38).
                key, started_at = same, _start_of(same)
            if rule.per_second:
                # A start in the future (a skewed or garbage clock) is charged from now on, not never; one
                # older than a day is charged for the day only: no window reads further back. A clock stepped
                # forward charges the time that passed, not the step.
                since = max(before.get(key, min(started_at, now)), now - DAY_S)
                if stepped_s > 0 and elapsed_s is not None:
                    since = max(since, now - elapsed_s)
                until = max(since, now)
                amount = (until - since) * price_per_hour / HOUR_S
                if amount > 0:
                    self._add(buckets, until, amount)
                    total += amount
                billed[key] = until
                continue
            # Intervals begun before the horizon are dropped below anyway (a minute early: buckets are minutes).
            dates, billed[key] = intervals_to_charge(
                started_at, int(before.get(key, 0)), now, keep_after=horizon - BUCKET_S, stepped_s=stepped_s,
                interval_s=rule.interval_s, anchor=rule.anchor)
            amount = price_per_hour * rule.interval_s / HOUR_S
            for at in dates:
                self._add(buckets, at, amount)
                total += amount
        # A replica missing from one listing and back at the next is the same replica: forgotten, it was charged
        # again (its intervals, or its whole runtime). Kept while one of its charges is within the window.
        for key, value in before.items():
            if key not in billed and _charged_within(key, value, horizon, rule):
                billed[key] = value
        self.billed[provider] = billed
        # Every provider's, not only this one's: one taken out of SCALER_PROVIDERS is charged no more.
        for kept in self.buckets.values():
            for old in [at for at in kept if at < horizon]:
                del kept[old]
        if self._latest_bucket is not None and self._latest_bucket < horizon:
            self._latest_bucket = None  # it may have been one of those
        self.updated_at = now
        return total

    def _add(self, buckets: dict[int, float], at: float, amount: float) -> None:
        bucket = _bucket(at)
        buckets[bucket] = buckets.get(bucket, 0.0) + amount
        if self._latest_bucket is not None:
            self._latest_bucket = max(self._latest_bucket, bucket)

    def _latest(self) -> int | None:
        if self._latest_bucket is None:
            self._latest_bucket = max((at for buckets in self.buckets.values() for at in buckets), default=None)
        return self._latest_bucket

    def _follow_clock(self, provider: str, now: float, elapsed_s: float | None) -> float:
        """Move every date kept with a wall-clock step, so that the windows read what they read before it; returns
        the step (positive forward, negative back, 0 without one). A step is measured by ``elapsed_s`` when given;
        without it (a scaler started while its clock was ahead) only a step back shows, as charges dated after
        ``now``: those are moved to ``now``, never dropped, so the spend may read high for a day, never low."""
        step = measured_step(self.looked_at.get(provider), now, elapsed_s)
        if step:
            self._shift(step)
        latest = max([self.updated_at or now, *self.looked_at.values(),
                      *[at for at in [self._latest()] if at is not None]])
        moved = sum(amount for buckets in self.buckets.values() for amount in buckets.values()) if step else 0.0
        if back := unmeasured_step_back(latest, now):
            step = min(step, back)
            moved += sum(amount for buckets in self.buckets.values() for at, amount in buckets.items() if at > now)
            self._redate_after(now)
        log_clock_step(step, moved, provider=provider)
        return step

    def _shift(self, by: float) -> None:
        """Every date kept moved by ``by`` seconds: the buckets, when replicas were charged until (per second) and
        last looked at. Interval counts are the provider's, counted from its own start times: they stay."""
        self.buckets = {name: _moved(buckets, by) for name, buckets in self.buckets.items()}
        self._latest_bucket = None
        for name, billed in self.billed.items():
            if _per_second(self.rules.get(name)):
                self.billed[name] = {key: value + by for key, value in billed.items()}
        self.looked_at = {name: at + by for name, at in self.looked_at.items()}
        if self.updated_at is not None:
            self.updated_at += by

    def _redate_after(self, now: float) -> None:
        """Whatever is dated after ``now`` (a clock that was ahead) dated ``now``: the spend is kept, in the
        windows for a day from now; per-second replicas are charged on from now."""
        for name, buckets in self.buckets.items():
            ahead = [at for at in buckets if at > now]
            for at in ahead:
                buckets[_bucket(now)] = buckets.get(_bucket(now), 0.0) + buckets.pop(at)
            if _per_second(self.rules.get(name)):
                self.billed[name] = {key: min(value, now) for key, value in self.billed.get(name, {}).items()}
        self._latest_bucket = None
        self.looked_at = {name: min(at, now) for name, at in self.looked_at.items()}
        self.updated_at = now

    def _billed_in(self, provider: str, rule: BillingRule) -> dict[str, float]:
        """What the provider's replicas were charged, counted in ``rule``: converted when it was saved under
        another (a setting changed between two runs)."""
        before = self.billed.get(provider, {})
        saved = self.rules.get(provider)
        if saved is None or saved == rule or not before:
            return before
        log.warning("cost_ledger_billing_changed", provider=provider, setting=changed_settings(saved, rule),
                    saved=saved.describe(), now=rule.describe(),
                    hint="the replicas' charges are carried over; the interval under way is charged again in full, "
                    "so the spend may read high until it leaves the window, never low")
        converted = {}
        for key, value in before.items():
            # A key of another shape, or a count past any date (infinity once dated), read from the file: nothing
            # to keep.
            with contextlib.suppress(ValueError, OverflowError):
                converted[key] = recounted(_start_of(key), value, saved, rule)
        return converted

    @staticmethod
    def _listed_at_last_look(before: dict[str, float], rule: BillingRule, looked_at: float | None) -> dict[str, str]:
        """Replica id -> its key, for the replicas charged up to the last look (listed then). A replica gone
        for longer is not among them: an id a provider gives again later is a new replica, charged as one."""
        if looked_at is None:
            return {}
        listed = {}
        for key, value in before.items():
            if rule.per_second:
                current = value >= looked_at
            else:
                try:
                    start = _start_of(key)
                except ValueError:
                    continue
                current = interval_start(start, int(value), rule.interval_s, rule.anchor) > looked_at
            if current:
                listed[key.rpartition("@")[0]] = key
        return listed

    def spent_since(self, since: float, provider: str | None = None) -> float:
        """Charged after ``since`` (to the minute), by one provider or all together."""
        names = [provider] if provider is not None else list(self.buckets)
        first = _bucket(since) + BUCKET_S if since % BUCKET_S else since
        return sum(
            amount for name in names for at, amount in self.buckets.get(name, {}).items() if at >= first
        )

    def summary(self, now: float) -> dict[str, dict[str, float]]:
        """Per provider and ``total``: last hour, last 24 h (what the caps read) and the calendar day (UTC)."""
        windows = {"last_hour": now - HOUR_S, "last_day": now - DAY_S, "today": day_start(now) - 1e-6}
        rows = {
            name: {window: round(self.spent_since(since, name), 4) for window, since in windows.items()}
            for name in sorted(self.buckets)
        }
        rows["total"] = {window: round(self.spent_since(since), 4) for window, since in windows.items()}
        return rows

    # --- the file ---------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": LEDGER_VERSION,
            "updated_at": self.updated_at,
            "buckets": {
                name: {str(at): round(amount, 6) for at, amount in sorted(buckets.items())}
                for name, buckets in self.buckets.items()
            },
            "billed": self.billed,
            "live": self.live,
            "prices": self.prices,
            "looked_at": self.looked_at,
            "rules": {name: rule.to_json() for name, rule in self.rules.items()},
            "alerts": self.alerts,
            "health": self.health,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CostLedger:
        ledger = cls()
        ledger.updated_at = None if raw.get("updated_at") is None else saved_number(raw["updated_at"], "updated_at")
        ledger.alerts = _alert_book(raw.get("alerts"))
        ledger.health = raw.get("health")
        ledger.buckets = {
            str(name): {int(saved_number(at, "buckets")): saved_number(v, "buckets") for at, v in buckets.items()}
            for name, buckets in raw["buckets"].items()
        }
        ledger.billed = {
            str(name): {str(key): saved_number(v, "billed") for key, v in billed.items()}
            for name, billed in raw["billed"].items()
        }
        ledger.live = {str(name): _replica_count(n) for name, n in (raw.get("live") or {}).items()}
        ledger.prices = {str(name): _price(v) for name, v in (raw.get("prices") or {}).items()}
        ledger.looked_at = {str(name): saved_number(v, "looked_at") for name, v in (raw.get("looked_at") or {}).items()}
        # A file saved before the rules were kept: its counts are taken as in the rule of the next charge.
        ledger.rules = {str(name): BillingRule.from_json(r) for name, r in (raw.get("rules") or {}).items()}
        return ledger

    def forget_gone(self, members: Collection[str]) -> None:
        """Drops what is kept of a provider that is no member of the fleet (taken out of SCALER_PROVIDERS) once it
        lists no replica and its charges have left the window: its empty row was in `status` and the file for good."""
        gone = [name for name, buckets in self.buckets.items()
                if name not in members and not buckets and not self.live.get(name)]
        for name in gone:
            for kept in (self.buckets, self.billed, self.live, self.prices, self.looked_at, self.rules):
                kept.pop(name, None)

    def providers_running(self) -> dict[str, int]:
        """The providers that listed replicas at their last read, with how many."""
        return {name: count for name, count in self.live.items() if count > 0}

    def save(self, path: Path) -> None:
        write_json_atomically(path, self.to_json())

    @classmethod
    def load(cls, path: Path, *, read_only: bool = False) -> CostLedger:
        """The saved ledger; a fresh one when there is none. A file that cannot be read is kept aside
        (``<name>.corrupt-<time>``) and logged, never silently overwritten. ``read_only`` (a dry run, which
        saves nothing): the folder is left as it is, an unreadable file where it lies. SavedFileUnreadable when
        the file cannot be read at all (``read_saved``)."""
        if not read_only:
            remove_stale_scratch(path)
        if (saved := read_saved(path, "SCALER_LEDGER_FILE")) is None:
            return cls()
        try:
            raw = json.loads(saved.decode())
            refuse_newer(raw, LEDGER_VERSION, f"SCALER_LEDGER_FILE {path}", "ledger")
            return cls.from_json(raw)
        except UNREADABLE as exc:
            log.error("cost_ledger_unreadable", path=str(path), kept_as=kept_aside(path, read_only),
                      error=f"{type(exc).__name__}: {exc}")
            return cls()


class SavedFileUnreadable(Exception):
    """A file the scaler saved is there but cannot be read at all: not corrupt, so left as it is."""


def read_saved(path: Path, setting: str) -> bytes | None:
    """The bytes of a file the scaler saved (``setting`` names it); None when there is none. Decoded by the
    caller, where a file that is not UTF-8 is corrupt (UnicodeDecodeError is a ValueError: UNREADABLE).

    A file that is there but cannot be read at all (no permission for the scaler's user, an I/O error, a
    directory, a FIFO or a device, more than MAX_SAVED_BYTES) raises SavedFileUnreadable: it is not corrupt, and a
    scaler started afresh beside it would forget the day's spend (the budget caps counting from zero) and write
    over it at its first tick. Opened without blocking: a FIFO held the open for good.
    """
    try:
        return read_small_file(path, MAX_SAVED_BYTES)
    except FileNotFoundError:
        return None
    except NotARegularFile:
        raise SavedFileUnreadable(_refusal(path, setting, "a FIFO, a device or a socket, not a file")) from None
    except FileTooLarge:
        raise SavedFileUnreadable(_refusal(path, setting, f"more than {MAX_SAVED_BYTES} bytes: no file a scaler saved")
                                  ) from None
    except OSError as exc:
        raise SavedFileUnreadable(_refusal(path, setting, f"{type(exc).__name__}: {exc.strerror or exc}")) from exc


def _refusal(path: Path, setting: str, why: str) -> str:
    return (f"{setting} {path} cannot be read ({why}); nothing was changed: give the scaler's user (uid 10001 in the "
            f"image) read and write access to it and its folder, or set {setting} to a file that can be")


# What reading a JSON file of the wrong shape raises: not there, not UTF-8, not JSON (or nested past the parser's
# depth), a key or an item missing, a value of the wrong type, infinity where a count is (``int`` of it).
UNREADABLE = (OSError, ValueError, LookupError, TypeError, AttributeError, RecursionError, OverflowError)


def _alert_book(raw: Any) -> dict[str, Any] | None:
    """The alert book as saved (``scaler.alerts.AlertBook.to_json``), checked: the scaler's start reads it."""
    if raw is None:
        return None
    if raw.get("day") is not None:
        raw = {**raw, "day": saved_number(raw["day"], "alerts.day")}
    sent = raw.get("sent", [])
    if not isinstance(sent, list) or not all(isinstance(kind, str) for kind in sent):
        raise ValueError(f"alerts.sent: {str(sent)[:80]} is not a list of alert kinds")
    return raw


def refuse_newer(raw: Any, current: int, where: str, what: str) -> None:
    """SavedFileUnreadable when ``raw`` (a saved file's JSON) was written in a version after ``current``: read by
    the older scaler it would be taken for corrupt and set aside, or its fields misread. ValueError (corrupt) for a
    version that is none; a file without one is of the first version."""
    version = raw.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version: {str(version)[:40]!r} is not a {what} version")
    if version > current:
        raise SavedFileUnreadable(
            f"{where} was written by a newer comfy-scaler ({what} version {version}; this one reads {current}); "
            "nothing was changed: run that version, or move the file aside to start afresh (the day's spend then "
            "counts from zero)"
        )


def _replica_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"live: {value!r} is not a replica count")
    return value


def _price(value: Any) -> float:
    price = saved_number(value, "prices")
    if price < 0:
        raise ValueError(f"prices: {value!r} is not a price")
    return price


def saved_number(value: Any, name: str) -> float:
    """A number read back from a saved file. NaN or infinity there is corruption: every sum of spend made from
    it would be NaN, and a budget compared with NaN never caps anything."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name}: {value!r} is not a finite number")
    return number


def write_json_atomically(path: Path, content: Any) -> None:
    """Write, fsync, rename, fsync the folder: a crash or a full disk mid-write leaves the previous file (and no
    scratch file); once this returns, the new file survives a power loss too (the rename is on disk). A process
    killed mid-write (SIGKILL, OOM) leaves its scratch file: ``remove_stale_scratch`` clears it at the next start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch, descriptor = _new_scratch(path)
    try:
        with os.fdopen(descriptor, "w") as out:
            json.dump(content, out)
            out.flush()
            sync(out.fileno())
        os.replace(scratch, path)
        sync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            scratch.unlink()
        raise


def _new_scratch(path: Path) -> tuple[Path, int]:
    """A scratch file beside ``path`` made here, open for writing: a name no one can guess, created new
    (O_EXCL, O_NOFOLLOW). ``open("w")`` of the name a pid gave wrote through a symlink planted there, over the
    file it pointed to. The pid stays in the name, for ``remove_stale_scratch``."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return scratch, os.open(scratch, flags, 0o666)


def remove_stale_scratch(path: Path) -> None:
    """Remove the scratch files of ``path`` that processes killed mid-write left (one per kill). One whose
    process still runs may be a write under way (`stop --all` beside `run`): kept."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.([1-9][0-9]*)(?:\.[0-9a-f]{{8}})?\.tmp")
    with contextlib.suppress(OSError):
        for leftover in path.parent.iterdir():
            found = pattern.fullmatch(leftover.name)
            if found and _stale(int(found[1])) and leftover.is_file():
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    log.info("stale_scratch_file_removed", path=str(leftover))


def _stale(pid: int) -> bool:
    return pid == os.getpid() or not pid_running(pid)  # our own pid, reused: this process writes nothing at start


def kept_aside(path: Path, read_only: bool) -> str:
    """Where an unreadable file is kept: set aside, or (read only) where it lies, for the process that saves."""
    return f"{path} (left in place: a dry run moves nothing)" if read_only else set_aside(path)


def set_aside(path: Path) -> str:
    """Move an unreadable file to ``<name>.corrupt-<time>`` so that nothing overwrites it; says where it is now.
    Anything but a file (a directory given by mistake) stays where it is: it is not ours to move. A file that
    cannot be moved (a read-only folder) is said to be left where it lies, not named by a path that does not exist."""
    if not path.is_file():
        return str(path)
    stamp = f"{path.name}.corrupt-{int(time.time())}"
    aside = path.with_name(stamp)
    for n in itertools.count(1):  # a second corrupt file within the same second gets a name of its own
        if not aside.exists():
            break
        aside = path.with_name(f"{stamp}-{n}")
    try:
        os.replace(path, aside)
    except OSError as exc:
        return f"{path} (left in place: it could not be moved aside: {type(exc).__name__}: {exc.strerror or exc})"
    return str(aside)
