"""Who sets the replica count in a simulation: a fixed count, Verda's own autoscaler, or our ``decide``.

Each controller also says how its workers behave, because the serverless set-up and the scaled
set-up run the same worker with different exit rules.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Protocol

from common.cli import integer, number
from scaler.planning import long_duration, robust_duration
from scaler.policy import MAX_REPLICAS_LIMIT, Observation, PolicyState, Replica, ScalingConfig, decide


@dataclass(frozen=True, slots=True)
class QueueView:
    """What a controller sees of the queue at a tick (the live scaler reads the same from the queue manager)."""

    pending: int
    running: int
    pending_ages_s: tuple[float, ...] = ()
    running_elapsed_s: tuple[float, ...] = ()
    running_waited_s: tuple[float, ...] = ()  # same order
    recent_durations_s: tuple[float, ...] = ()
    recent_waits_s: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkerModel:
    """The worker's own exit rules: ``None`` means never."""

    idle_polls_before_exit: int | None = None
    job_limit: int | None = None
    poll_interval_s: float = 2.0


class Controller(Protocol):
    name: str
    worker: WorkerModel

    def target(self, now: float, queue: QueueView, replicas: tuple[Replica, ...]) -> int: ...


@dataclass
class AlwaysOn:
    replicas: int
    worker: WorkerModel = field(default_factory=WorkerModel)

    @property
    def name(self) -> str:
        return f"always-on:{self.replicas}"

    def target(self, now: float, queue: QueueView, replicas: tuple[Replica, ...]) -> int:
        return self.replicas


@dataclass
class NaiveVerda:
    """The documented serverless set-up: Verda min 0 / max 5 scaling on its own request queue.

    Verda's queue only fills if every job is also sent to the deployment's endpoint, so this models a
    user who does that: one queued request per job in flight, ``queue_load.threshold`` 1, scale-up
    delay 0, scale-down only after the lower load has lasted ``scale_down_delay_s``. Workers run in
    serverless mode with the worker's defaults: no job limit, exit after 10 idle polls of 2 s (Verda
    restarts them in place while it still wants the replica). ``naive-job-limit-1`` also exits after
    every job.
    """

    min_replicas: int = 0
    max_replicas: int = 5
    queue_load_threshold: int = 1
    scale_down_delay_s: float = 300.0
    worker: WorkerModel = field(
        default_factory=lambda: WorkerModel(idle_polls_before_exit=10, job_limit=None, poll_interval_s=2.0)
    )
    name: str = "naive"
    _recent: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def target(self, now: float, queue: QueueView, replicas: tuple[Replica, ...]) -> int:
        wanted = math.ceil((queue.pending + queue.running) / self.queue_load_threshold)
        wanted = min(max(wanted, self.min_replicas), self.max_replicas)
        self._recent.append((now, wanted))
        while self._recent[0][0] <= now - self.scale_down_delay_s:
            self._recent.popleft()
        return max(count for _, count in self._recent)


@dataclass
class Ours:
    """Our scaler: the very ``decide`` the live loop runs, with long-running workers."""

    config: ScalingConfig = field(default_factory=ScalingConfig)
    worker: WorkerModel = field(default_factory=WorkerModel)
    name: str = "ours"
    state: PolicyState = field(default_factory=PolicyState)
    decisions_changed: int = 0
    # Added to the simulation's clock: a later day runs on the clock its carried state was kept on.
    clock_offset_s: float = 0.0

    def target(self, now: float, queue: QueueView, replicas: tuple[Replica, ...]) -> int:
        offset = self.clock_offset_s
        observation = Observation(
            now=now + offset,
            pending=queue.pending,
            running=queue.running,
            replicas=tuple(replace(replica, started_at=replica.started_at + offset) for replica in replicas)
            if offset else replicas,
            pending_ages_s=queue.pending_ages_s,
            running_elapsed_s=queue.running_elapsed_s,
            running_waited_s=queue.running_waited_s,
            recent_waits_s=queue.recent_waits_s,
            job_duration_s=robust_duration(queue.recent_durations_s, self.config.default_job_duration_s),
            long_job_duration_s=long_duration(queue.recent_durations_s, self.config.default_job_duration_s),
        )
        decision = decide(self.config, self.state, observation)
        self.state = decision.new_state
        self.decisions_changed += decision.changed
        return decision.desired


BOOLEANS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def split_spec(spec: str, config: ScalingConfig) -> tuple[str, str, ScalingConfig]:
    """``kind[:arg][,field=value...]`` -> (kind, arg, config with the overrides), e.g.
    ``ours:target_wait_s=120,max_replicas=10`` or ``clairvoyant:120,max_replicas=10``."""
    kind, _, rest = spec.partition(":")
    arg, overrides = "", {}
    fields = {f.name: f for f in dataclasses.fields(ScalingConfig)}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        name, has_value, value = item.partition("=")
        if not has_value:
            if arg:
                raise ValueError(f"{spec!r}: {arg!r} and {item!r}: one value without a name at most")
            arg = item
            continue
        if name not in fields or name == "timetable":
            raise ValueError(f"{spec!r}: {name!r} is not a ScalingConfig setting")
        if name in overrides:
            raise ValueError(f"{spec!r}: {name} is set twice")
        default = fields[name].default
        if value.lower() == "none" and "None" not in str(fields[name].type):
            raise ValueError(f"{spec!r}: {name} cannot be none")
        try:
            if value.lower() == "none":
                overrides[name] = None
            elif isinstance(default, bool):
                overrides[name] = BOOLEANS[value.lower()]
            elif isinstance(default, int):
                overrides[name] = integer(value)
            else:
                overrides[name] = number(value) if not isinstance(default, str) else value
        except KeyError:
            raise ValueError(f"{spec!r}: {name}={value!r} is not one of {', '.join(BOOLEANS)}") from None
        except ValueError:
            raise ValueError(f"{spec!r}: {name}={value!r} is not a number") from None
    try:
        return kind, arg, replace(config, **overrides)
    except ValueError as error:
        raise ValueError(f"{spec!r}: {error}") from None


# The ScalingConfig settings each fixed controller reads (ours and the clairvoyant read them all).
READS = {"always-on": (), "naive": ("max_replicas",), "naive-job-limit-1": ("max_replicas",)}


def _named(spec: str) -> set[str]:
    return {item.partition("=")[0].strip() for item in spec.partition(":")[2].split(",") if "=" in item}


def parse_policy(spec: str, config: ScalingConfig) -> Controller:
    """``always-on:N``, ``naive``, ``naive-job-limit-1`` or ``ours[:field=value,...]``."""
    kind, arg, config = split_spec(spec, config)
    unread = _named(spec) - set(READS[kind]) if kind in READS else set()
    if unread:
        reads = f"reads only {', '.join(READS[kind])}" if READS[kind] else "reads no setting"
        raise ValueError(f"{spec!r}: {kind} {reads}: drop {', '.join(sorted(unread))}")
    if kind == "naive" and not arg:
        return NaiveVerda(max_replicas=config.max_replicas)
    if kind == "naive-job-limit-1" and not arg:
        return NaiveVerda(max_replicas=config.max_replicas,
                          worker=WorkerModel(idle_polls_before_exit=10, job_limit=1), name=spec)
    if kind == "ours" and not arg:
        return Ours(config=config, name=spec)
    if kind == "always-on" and arg.isascii() and arg.isdigit():
        if len(arg.lstrip("0")) > 3 or int(arg) > MAX_REPLICAS_LIMIT:  # 5,000 digits: int()'s own error
            raise ValueError(f"{reprlib.repr(spec)}: at most {MAX_REPLICAS_LIMIT} replicas")
        return AlwaysOn(int(arg))
    if kind == "clairvoyant":
        raise ValueError("clairvoyant is planned per workload: scaler.simulator.clairvoyant.best_plan")
    raise ValueError(
        f"{spec!r}: no such policy; use always-on:N, naive, naive-job-limit-1, ours[:field=value,...] "
        "or clairvoyant[:P95_S][,max_replicas=N]"
    )


def check_policy(spec: str, config: ScalingConfig) -> None:
    """Raise ValueError for a spec no controller answers to, or whose overrides do not fit ``config``."""
    kind, arg, config = split_spec(spec, config)
    if kind != "clairvoyant":
        parse_policy(spec, config)
        return
    if config.max_replicas < 1:
        raise ValueError(f"{spec!r}: the clairvoyant plans with max_replicas >= 1")
    try:
        if arg and not 0 < number(arg) < math.inf:
            raise ValueError
    except ValueError:
        raise ValueError(f"{spec!r}: the p95 target must be seconds > 0, e.g. clairvoyant:120") from None
