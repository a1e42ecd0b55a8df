"""A discrete-event model of Verda serverless containers running our pulling workers.

Modelled (each choice explained in docs/simulator.md):
- Verda keeps the replica count at the controller's target; a new replica bills from its start and
  takes work after cold start + health-check delay.
- On a scale-down Verda picks the replica (``PlatformModel.scale_down_victim``): by default the worst
  case, a busy one with the most work left; ``idle-nearest-boundary`` models workers that retire
  themselves (the idle replica whose paid interval ends soonest leaves); ``idle-first`` the RunPod backend,
  which stops starting, then idle, then busy pods, the newest first within each. The victim gets SIGTERM;
  the worker finishes the job if it can within its drain time, otherwise requeues it (an interruption)
  and the container is gone; SIGKILL follows 30 s after SIGTERM at the latest. A replica stop does not use
  up the job's attempts (MAX_ATTEMPTS counts faults); the queue fails a job only after its
  ``max_shutdown_handbacks``-th such hand-back (MAX_SHUTDOWN_HANDBACKS).
- A worker that exits on its own (idle polls, job limit) is restarted in place while Verda still wants
  the replica, otherwise the replica is gone.
- Billing: per replica, begun 10-minute intervals, anchored as configured. Spot reclaims are optional.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from common.handbacks import MAX_SHUTDOWN_HANDBACKS
from common.timespans import HOUR_S
from scaler.billing import BillingAnchor, bill_for_runtime, seconds_to_boundary
from scaler.policy import Replica, non_finite_fields
from scaler.simulator.policies import Controller, QueueView
from scaler.simulator.workloads import Workload


class Victim(StrEnum):
    """Who leaves on a scale-down."""

    WORST = "worst"  # busy with the most work left, then starting, then the newest idle one
    IDLE_NEAREST_BOUNDARY = "idle-nearest-boundary"  # idle first, the one whose paid interval ends soonest
    IDLE_FIRST = "idle-first"  # the RunPod backend's choice: starting, then idle, busy last; the newest within each


MIN_TICK_S, MAX_TICK_S = 1.0, 3_600.0
MAX_SPOT_RECLAIMS_PER_HOUR = 60.0  # per replica: one a minute is already a fleet that never finishes a job


@dataclass(frozen=True, slots=True)
class PlatformModel:
    cold_start_s: float = 30.0
    health_check_delay_s: float = 5.0
    sigterm_grace_s: float = 30.0
    worker_drain_s: float = 25.0
    tick_s: float = 15.0
    billing_interval_s: float = 600.0
    billing_anchor: BillingAnchor = BillingAnchor.STARTED_AT
    price_per_hour: float = 2.30
    spot_reclaims_per_hour: float = 0.0
    scale_down_victim: Victim = Victim.WORST
    max_shutdown_handbacks: int = MAX_SHUTDOWN_HANDBACKS  # the queue manager's bound; 0: no limit

    def __post_init__(self) -> None:
        """Refuse a model the simulation cannot run: each value named. Below a second a tick is a typo, and
        every tick is an event of the simulation (a tick of 1 ms simulates a day in 86 million steps)."""
        problems = non_finite_fields(self)
        for name in ("cold_start_s", "health_check_delay_s", "sigterm_grace_s", "worker_drain_s", "price_per_hour",
                     "max_shutdown_handbacks"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if not MIN_TICK_S <= self.tick_s <= MAX_TICK_S:
            problems.append(f"tick_s must be {MIN_TICK_S:g}-{MAX_TICK_S:g} s")
        if self.billing_interval_s < self.tick_s:
            problems.append("billing_interval_s must be >= tick_s")
        if not 0 <= self.spot_reclaims_per_hour <= MAX_SPOT_RECLAIMS_PER_HOUR:
            problems.append(f"spot_reclaims_per_hour must be 0-{MAX_SPOT_RECLAIMS_PER_HOUR:g}")
        if problems:
            raise ValueError("invalid platform model: " + "; ".join(problems))

    @property
    def boot_s(self) -> float:
        """From a replica's start until it takes work."""
        return self.cold_start_s + self.health_check_delay_s


ANY_GENERATION = -1
RECENT_COMPLETIONS = 50


class Event(IntEnum):
    # The order breaks ties at equal times: a job that finishes is counted before the scaler looks.
    FINISH = 0
    INTERRUPT = 1
    WORKER_EXIT = 2
    READY = 3
    CLAIM = 4
    ARRIVAL = 5
    RECLAIM = 6
    TICK = 7


@dataclass(slots=True)
class SimJob:
    submit_s: float
    duration_s: float
    finished_s: float | None = None
    attempt_started_s: float = 0.0
    interruptions: int = 0
    failed: bool = False  # handed back after its last allowed attempt


@dataclass(slots=True)
class SimReplica:
    id: str
    started_at: float
    state: str = "starting"  # starting, idle, busy, stopped
    draining: bool = False
    generation: int = 0
    job: SimJob | None = None
    idle_since: float = 0.0
    claim_scheduled: bool = False
    jobs_done: int = 0
    stopped_at: float | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    pending: int
    running: int
    replicas: int
    ready: int


@dataclass
class SimOutcome:
    jobs: list[SimJob]
    replicas: list[SimReplica]
    samples: list[Sample]
    horizon_s: float
    replica_starts: int = 0
    cold_starts: int = 0
    interruptions: int = 0
    spot_reclaims: int = 0
    billed_intervals: int = 0


@dataclass
class Simulation:
    workload: Workload
    controller: Controller
    platform: PlatformModel = field(default_factory=PlatformModel)
    seed: int = 0
    # What the queue manager lists from before the workload begins (a later day: yesterday's last completions).
    listed_durations_s: tuple[float, ...] = ()
    listed_waits_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self._rng = random.Random(f"platform:{self.seed}")
        self._events: list[tuple[float, int, int, object, int]] = []
        self._scheduled = 0  # events scheduled so far: ties at equal times keep that order
        self._queue: deque[SimJob] = deque()
        self._replicas: list[SimReplica] = []  # not yet stopped
        self._target = 0
        # What the live scaler reads from GET /api/jobs?status=completed: recent run times.
        self._recent_durations: deque[float] = deque(self.listed_durations_s, maxlen=RECENT_COMPLETIONS)
        # ... and how long the last jobs to start had waited (created_at -> started_at).
        self._recent_waits: deque[float] = deque(self.listed_waits_s, maxlen=RECENT_COMPLETIONS)
        self.outcome = SimOutcome(
            jobs=[SimJob(job.submit_s, job.duration_s) for job in self.workload.jobs],
            replicas=[],
            samples=[],
            horizon_s=self.workload.horizon_s,
        )

    def run(self) -> SimOutcome:
        for job in self.outcome.jobs:
            self._schedule(job.submit_s, Event.ARRIVAL, job)
        self._schedule(0.0, Event.TICK, None)
        horizon = self.workload.horizon_s
        self.advance(horizon)
        for replica in list(self._replicas):
            self._stop(horizon, replica)
        self.outcome.billed_intervals = sum(
            bill_for_runtime(
                replica.started_at,
                replica.stopped_at if replica.stopped_at is not None else horizon,
                self.platform.billing_interval_s,
                self.platform.billing_anchor,
            )
            for replica in self.outcome.replicas
        )
        return self.outcome

    def advance(self, until: float) -> None:
        """Play every event before ``until``."""
        handlers: dict[int, Callable[[float, object], None]] = {  # by the int the heap holds
            Event.ARRIVAL: self._on_arrival,
            Event.TICK: self._on_tick,
            Event.READY: self._on_ready,
            Event.CLAIM: self._on_claim,
            Event.FINISH: self._on_finish,
            Event.WORKER_EXIT: self._on_worker_exit,
            Event.INTERRUPT: self._on_interrupt,
            Event.RECLAIM: self._on_reclaim,
        }
        while self._events and self._events[0][0] < until:
            at, kind, _, subject, generation = heapq.heappop(self._events)
            if isinstance(subject, SimReplica) and generation != ANY_GENERATION and (
                subject.generation != generation
            ):
                continue
            handlers[kind](at, subject)

    def what_if(self, now: float, target: int, controller: Controller) -> Simulation:
        """A copy of this simulation, called from its controller at the tick ``now``, in which that tick's count
        is ``target`` and ``controller`` decides from the next tick on (the rollout oracle in bench/)."""
        memo: dict[int, object] = {id(self.workload): self.workload, id(self.controller): controller,
                                   id(self.outcome.samples): []}
        copy = deepcopy(self, memo)
        copy._target = target
        copy._reconcile(now)
        copy._schedule(now + self.platform.tick_s, Event.TICK, None)
        return copy

    @property
    def queued(self) -> tuple[SimJob, ...]:
        """The jobs waiting to be claimed, oldest first."""
        return tuple(self._queue)

    def _schedule(self, at: float, kind: Event, subject: object) -> None:
        generation = subject.generation if isinstance(subject, SimReplica) else 0
        self._push(at, kind, subject, generation)

    def _push(self, at: float, kind: Event, subject: object, generation: int) -> None:
        self._scheduled += 1
        heapq.heappush(self._events, (at, int(kind), self._scheduled, subject, generation))

    def _live(self) -> list[SimReplica]:
        return [replica for replica in self._replicas if not replica.draining]

    # Arrivals and the scaler's tick.

    def _on_arrival(self, now: float, job: object) -> None:
        assert isinstance(job, SimJob)
        self._queue.append(job)
        self._offer_work(now)

    def _on_tick(self, now: float, _: object) -> None:
        live = self._live()
        running_jobs = [replica.job for replica in self._replicas if replica.job is not None]
        listed = tuple(Replica(replica.id, replica.started_at) for replica in live)
        view = QueueView(
            pending=len(self._queue),
            running=len(running_jobs),
            pending_ages_s=tuple(now - job.submit_s for job in self._queue),
            running_elapsed_s=tuple(now - job.attempt_started_s for job in running_jobs),
            running_waited_s=tuple(job.attempt_started_s - job.submit_s for job in running_jobs),
            recent_durations_s=tuple(self._recent_durations),
            recent_waits_s=tuple(self._recent_waits),
        )
        self._target = self.controller.target(now, view, listed)
        self._reconcile(now)
        live = self._live()
        ready = sum(1 for replica in live if replica.state in ("idle", "busy"))
        self.outcome.samples.append(Sample(now, len(self._queue), len(running_jobs), len(live), ready))
        self._schedule(now + self.platform.tick_s, Event.TICK, None)

    def _reconcile(self, now: float) -> None:
        live = self._live()
        for _ in range(self._target - len(live)):
            self._start_replica(now)
        ranked = sorted(live, key=lambda replica: self._victim_rank(replica, now))
        for victim in ranked[: max(0, len(live) - self._target)]:
            self._sigterm(now, victim)

    def _victim_rank(self, replica: SimReplica, now: float) -> tuple[int, float]:
        if self.platform.scale_down_victim is Victim.IDLE_NEAREST_BOUNDARY:
            return self._kind_victim_rank(replica, now)
        if self.platform.scale_down_victim is Victim.IDLE_FIRST:
            return (0 if replica.state == "starting" else 1 if replica.job is None else 2, -replica.started_at)
        # Worst case first: busy with the most work left, then starting, then the newest idle one.
        if replica.job is not None:
            left = replica.job.attempt_started_s + replica.job.duration_s
            return (0, -left)
        return (1 if replica.state == "starting" else 2, -replica.started_at)

    def _kind_victim_rank(self, replica: SimReplica, now: float) -> tuple[int, float]:
        """Idle replicas retire themselves, the one nearest its billing boundary first; busy ones last."""
        if replica.job is not None:
            return (2, replica.job.attempt_started_s + replica.job.duration_s)
        if replica.state == "starting":
            return (1, -replica.started_at)
        return (0, seconds_to_boundary(replica.started_at, now, self.platform.billing_interval_s,
                                       self.platform.billing_anchor))

    # Replica lifecycle.

    def _start_replica(self, now: float) -> None:
        replica = SimReplica(f"replica-{self.outcome.replica_starts + 1}", started_at=now)
        self._replicas.append(replica)
        self.outcome.replicas.append(replica)
        self.outcome.replica_starts += 1
        self._boot(now, replica)
        if self.platform.spot_reclaims_per_hour > 0:
            reclaim_in = self._rng.expovariate(self.platform.spot_reclaims_per_hour / HOUR_S)
            self._push(now + reclaim_in, Event.RECLAIM, replica, ANY_GENERATION)

    def _boot(self, now: float, replica: SimReplica) -> None:
        replica.state = "starting"
        replica.generation += 1
        self.outcome.cold_starts += 1
        self._schedule(now + self.platform.cold_start_s + self.platform.health_check_delay_s,
                       Event.READY, replica)

    def _on_ready(self, now: float, replica: object) -> None:
        assert isinstance(replica, SimReplica)
        self._become_idle(now, replica)

    def _become_idle(self, now: float, replica: SimReplica) -> None:
        replica.state, replica.job, replica.idle_since = "idle", None, now
        replica.claim_scheduled = False
        replica.generation += 1
        polls = self.controller.worker.idle_polls_before_exit
        if polls is not None:
            self._schedule(now + polls * self.controller.worker.poll_interval_s, Event.WORKER_EXIT, replica)
        self._offer_work(now)

    def _offer_work(self, now: float) -> None:
        """Idle workers see queued work at their next poll; the earliest poller claims the head."""
        if not self._queue:
            return
        poll = self.controller.worker.poll_interval_s
        for replica in self._replicas:
            if replica.state == "idle" and not replica.draining and not replica.claim_scheduled:
                waited = now - replica.idle_since
                replica.claim_scheduled = True
                self._schedule(replica.idle_since + math.ceil(waited / poll - 1e-9) * poll, Event.CLAIM, replica)

    def _on_claim(self, now: float, replica: object) -> None:
        assert isinstance(replica, SimReplica)
        replica.claim_scheduled = False
        if replica.state != "idle" or replica.draining or not self._queue:
            return
        job = self._queue.popleft()
        replica.state, replica.job = "busy", job
        replica.generation += 1
        job.attempt_started_s = now
        self._recent_waits.append(now - job.submit_s)
        self._schedule(now + job.duration_s, Event.FINISH, replica)

    def _on_finish(self, now: float, replica: object) -> None:
        assert isinstance(replica, SimReplica) and replica.job is not None
        replica.job.finished_s = now
        self._recent_durations.append(replica.job.duration_s)
        replica.job = None
        replica.jobs_done += 1
        limit = self.controller.worker.job_limit
        if replica.draining:
            self._stop(now, replica)
        elif limit is not None and replica.jobs_done >= limit:
            self._on_worker_exit(now, replica)
        else:
            self._become_idle(now, replica)

    def _on_worker_exit(self, now: float, replica: object) -> None:
        """The process exited by itself: Verda restarts it in place if it still wants that many replicas."""
        assert isinstance(replica, SimReplica)
        if len(self._live()) <= self._target:
            replica.jobs_done = 0
            self._boot(now, replica)
        else:
            self._stop(now, replica)

    # Scale-down and spot reclaims.

    def _sigterm(self, now: float, replica: SimReplica) -> None:
        replica.draining = True
        job = replica.job
        if job is None:
            self._stop(now, replica)
            return
        left = job.attempt_started_s + job.duration_s - now
        if left > self.platform.worker_drain_s:
            drain = min(self.platform.worker_drain_s, self.platform.sigterm_grace_s)
            self._schedule(now + drain, Event.INTERRUPT, replica)

    def _on_interrupt(self, now: float, replica: object) -> None:
        assert isinstance(replica, SimReplica) and replica.job is not None
        replica.job.interruptions += 1
        self.outcome.interruptions += 1
        if self.platform.max_shutdown_handbacks and replica.job.interruptions >= self.platform.max_shutdown_handbacks:
            replica.job.failed = True  # "Gave up after N attempts"
        else:
            self._queue.appendleft(replica.job)
        replica.job = None
        self._stop(now, replica)
        self._offer_work(now)

    def _on_reclaim(self, now: float, replica: object) -> None:
        assert isinstance(replica, SimReplica)
        if replica.state == "stopped" or replica.draining:
            return
        self.outcome.spot_reclaims += 1
        self._sigterm(now, replica)
        self._reconcile(now)

    def _stop(self, now: float, replica: SimReplica) -> None:
        replica.state, replica.stopped_at = "stopped", now
        replica.generation += 1
        self._replicas.remove(replica)
