"""Benchmark: the live scaler over simulated days: does its memory or a file it saves grow without bound?

The real loop (scaler.loop.ScalerLoop, ticked as `comfy-scaler run` ticks it) runs in this process on a stepped
clock (15 s a tick, as SCALER_INTERVAL_S) against the fake Verda (standins/verda.py) and a queue status stand-in
on loopback, both following the same clock. The load follows the day: jobs are submitted, started on the
replicas there are and completed, each with an id of its own; Verda replaces a replica now and then (a new id),
answers 500 to a read every 2 hours and nothing within the tick's deadline every 12; the queue manager answers
503 every 3 hours. Two scalers are measured, each for --days: `single` (SCALER_BACKEND=verda: policy state file)
and `fleet` (SCALER_PROVIDERS=verda: cost ledger file, budget alerts, per-provider metrics).

At the end of each simulated day it prints, per scaler: the process's RSS, the bytes Python allocated in
scaler/ and common/ (tracemalloc) and the 3 lines that grew most, the size of each saved file, and the
entries of every collection of the scaler's that could grow (keyed by replica or job id, per day, per label).

    ./dev python -m bench.scaler_soak --days 7   (from the repository root; ~2 min a simulated day per scaler)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import itertools
import linecache
import math
import random
import secrets
import tempfile
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from common.timespans import DAY_S, HOUR_S
from scaler.alerts import AlertBook, AlertSender
from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.fleet import FleetBackend, Member
from scaler.health_record import BackendHealth
from scaler.ledger import VERDA_BILLING
from scaler.loop import ScalerLoop
from scaler.metrics import ProviderMetrics, ScalerMetrics
from scaler.policy import ScalingConfig
from scaler.providers import VerdaBackend
from scaler.providers.verda.client import VerdaClient
from scaler.queue_status import QueueStatusReader
from standins.verda import FakeVerda

REPO = Path(__file__).resolve().parents[1]
INTERVAL_S = 15.0
DEPLOYMENT = "comfyui-worker-serverless"
CLIENT_ID, CLIENT_SECRET = "soak-id", "soak-secret"
MAX_REPLICAS = 5
# Verda's fake answers each call this much later than the tick's deadline (a peer that does not answer in time).
TICK_DEADLINE_S = 2.0
DEPLOYMENT_BODY = {
    "name": DEPLOYMENT, "is_spot": False, "compute": {"name": "H100", "size": 1},
    "container_registry_settings": {"is_private": False},
    "containers": [{"image": "ghcr.io/acme/comfyui-worker-serverless:0.1.0", "exposed_port": 8000}],
    "scaling": {"min_replica_count": 0, "max_replica_count": MAX_REPLICAS, "scale_down_policy": {"delay_seconds": 300},
                "scale_up_policy": {"delay_seconds": 0}, "queue_message_ttl_seconds": 300,
                "concurrent_requests_per_replica": 1, "scaling_triggers": {"queue_load": {"threshold": 1}}},
}
VERDA_FAULT_EVERY_S = 2 * HOUR_S
VERDA_SILENT_EVERY_S = 12 * HOUR_S
QUEUE_FAULT_EVERY_S = 3 * HOUR_S
REPLICA_REPLACED_EVERY_S = 600
JOBS_PER_S_AT_PEAK = 0.04
# A job pending this long is given up (gone from the queue, counted): under a capped budget the backlog grew ~950 jobs
# a day in this process, beside the scaler measured (RSS +1.4 MiB a simulated day), which reads 200 of them at most.
GIVE_UP_S = DAY_S


class SimClock:
    """The wall clock and the one never stepped, both moved by hand, a tick's interval at a time."""

    def __init__(self) -> None:
        self.wall = time.time() // DAY_S * DAY_S + 9 * HOUR_S  # a morning: the load rises from the first day
        self.boot = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.boot += seconds


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


@dataclass
class Job:
    id: str
    created_at: float
    started_at: float | None = None
    duration_s: float = 0.0


class QueueStandIn:
    """The queue manager's status, job lists and /health, as the scaler reads them, on the simulated clock."""

    def __init__(self, clock: SimClock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng
        self.pending: deque[Job] = deque()
        self.running: list[Job] = []
        self.completed: deque[tuple[Job, float]] = deque(maxlen=50)
        self.completed_count = 0
        self.given_up = 0
        self.failing = 0  # status reads left to answer 503
        self.alerts = 0  # alerts the webhook received
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/queue/status", self._status)
        app.router.add_get("/api/jobs", self._jobs)
        app.router.add_get("/health", self._health)
        app.router.add_post("/webhook", self._webhook)  # the budget alerts' (SCALER_ALERT_WEBHOOK_URL)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def step(self, replicas: int, interval_s: float) -> None:
        """One tick of load: arrivals by the time of day (busy afternoons, quiet nights), starts on the replicas
        there are, completions."""
        now = self.clock.wall
        hour = (now % DAY_S) / HOUR_S
        rate_per_tick = max(0.0, math.sin((hour - 8) / 24 * 2 * math.pi)) * JOBS_PER_S_AT_PEAK * interval_s
        for _ in range(self._poisson(rate_per_tick)):
            self.pending.append(Job(f"job-{secrets.token_hex(8)}", now, duration_s=self.rng.uniform(30, 300)))
        while self.pending and self.pending[0].created_at <= now - GIVE_UP_S:
            self.pending.popleft()
            self.given_up += 1
        for job in [job for job in self.running if job.started_at + job.duration_s <= now]:  # type: ignore[operator]
            self.running.remove(job)
            self.completed.append((job, now))
            self.completed_count += 1
        while self.pending and len(self.running) < replicas:
            job = self.pending.popleft()
            job.started_at = now
            self.running.append(job)

    def _poisson(self, mean: float) -> int:
        count, threshold, product = 0, math.exp(-mean), self.rng.random()
        while product > threshold:
            count += 1
            product *= self.rng.random()
        return count

    async def _status(self, request: web.Request) -> web.Response:
        if self.failing:
            self.failing -= 1
            return web.json_response({"detail": "injected 503"}, status=503)
        return web.json_response({"pending_jobs": len(self.pending), "running_jobs": len(self.running),
                                  "completed_jobs": self.completed_count, "failed_jobs": 0, "mode": "fifo"})

    async def _jobs(self, request: web.Request) -> web.Response:
        state, limit = request.query.get("status"), int(request.query.get("limit", "200"))
        if state == "pending":  # a backlog (a capped budget) is listed up to the limit, as the queue manager does
            jobs = [{"id": j.id, "status": state, "created_at": iso(j.created_at)}
                    for j in itertools.islice(self.pending, limit)]
        elif state == "running":
            jobs = [{"id": j.id, "status": state, "created_at": iso(j.created_at), "started_at": iso(j.started_at)}
                    for j in self.running if j.started_at is not None]
        else:
            jobs = [{"id": j.id, "status": "completed", "created_at": iso(j.created_at),
                     "started_at": iso(j.started_at), "completed_at": iso(done)}
                    for j, done in reversed(self.completed) if j.started_at is not None]
        return web.json_response(jobs[:limit])

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    async def _webhook(self, request: web.Request) -> web.Response:
        await request.read()
        self.alerts += 1
        return web.Response(text="ok")


class EventCounter:
    """structlog's last processor: counts each warning and error by event, prints nothing."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> Any:
        if method in ("warning", "error", "critical", "exception"):
            self.counts[f"{method}:{event.get('event')}"] += 1
        raise structlog.DropEvent


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def ours(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    return snapshot.filter_traces([tracemalloc.Filter(True, str(REPO / "scaler") + "/*"),
                                   tracemalloc.Filter(True, str(REPO / "common") + "/*")])


def label_sets(registry: Any) -> int:
    return sum(len(metric.samples) for metric in registry.collect())


def collections_of(loop: ScalerLoop, backend: Any) -> dict[str, int]:
    """Entries of each collection the scaler keeps between ticks that could grow."""
    state = loop.state
    counts = {
        "policy.demand_samples": len(state.demand_samples),
        "policy.ledger.charges": len(state.ledger.charges),
        "policy.ledger.billed": len(state.ledger.billed),
        "duration_counters": len(loop.durations_from_counters._samples),
        "metrics.label_sets": label_sets(loop.metrics.registry),
    }
    if loop.backend_health is not None:
        counts["backend_health.notes"] = len(loop.backend_health._notes)
        counts["backend_health.health"] = len(loop.backend_health.state.health)
    verda = backend if isinstance(backend, VerdaBackend) else backend.members["verda"].backend
    counts["verda.first_seen"] = len(verda._first_seen._at)
    if isinstance(backend, FleetBackend):
        ledger = backend.ledger
        counts.update({
            "ledger.buckets": sum(map(len, ledger.buckets.values())),
            "ledger.billed": sum(map(len, ledger.billed.values())),
            "ledger.providers": len(ledger.looked_at) + len(ledger.live) + len(ledger.prices) + len(ledger.rules),
            "fleet.move_log": len(backend.move_log),
            "fleet.seen": len(backend._seen),
            "fleet.degraded_notes": len(backend._degraded_notes),
            "fleet.health": len(backend.state.health),
        })
        if backend.alerts is not None:
            counts["alerts.sent"] = len(backend.alerts.sent)
            counts["alerts.book"] = len(backend.alerts.book.sent)
    return counts


class Soak:
    def __init__(self, kind: str, folder: Path, seed: int, interval_s: float) -> None:
        self.kind = kind
        self.interval_s = interval_s
        self.folder = folder
        self.clock = SimClock()
        self.rng = random.Random(seed)
        self.queue = QueueStandIn(self.clock, self.rng)
        self.verda = FakeVerda(CLIENT_ID, CLIENT_SECRET, clock=lambda: self.clock.boot)
        self.listed: set[str] = set()  # the replica ids listed at the last tick, already stamped
        self.replica_ids = 0
        self.failed_ticks = 0

    async def __aenter__(self) -> Soak:
        await self.verda.start()
        await self.queue.start()
        async with self._verda_client() as client:
            await client.create_deployment(copy.deepcopy(DEPLOYMENT_BODY))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.queue.stop()
        await self.verda.stop()

    def _verda_client(self) -> VerdaClient:
        return VerdaClient(CLIENT_ID, CLIENT_SECRET, base_url=self.verda.url, max_attempts=2,
                           backoff_initial_s=0.01, clock=lambda: self.clock.boot)

    def build(self) -> tuple[ScalerLoop, Any]:
        verda = VerdaBackend(self._verda_client(), DEPLOYMENT, clock=lambda: self.clock.wall)
        reader = QueueStatusReader(self.queue.url, attempts=1, timeout_s=TICK_DEADLINE_S)
        metrics = ScalerMetrics()
        spec = ProviderSpec("verda", MAX_REPLICAS, 2.30)
        allocator = AllocatorConfig((spec,), max_spend_per_day=20.0)
        common: dict[str, Any] = {"clock": lambda: self.clock.wall, "monotonic": lambda: self.clock.boot,
                                  "interval_s": self.interval_s, "tick_deadline_s": TICK_DEADLINE_S, "metrics": metrics,
                                  "state_file": self.folder / f"{self.kind}-state.json"}
        if self.kind == "single":
            config = ScalingConfig(max_replicas=MAX_REPLICAS, max_spend_per_day=40.0)
            return ScalerLoop(config, verda, reader, backend_health=BackendHealth("verda", allocator), **common), reader
        alerts = AlertSender(f"{self.queue.url}/webhook", book=AlertBook(), attempts=1, timeout_s=TICK_DEADLINE_S)
        fleet = FleetBackend([Member(spec, verda, VERDA_BILLING)], allocator, ledger_file=self.ledger_file,
                             metrics=ProviderMetrics(metrics.registry), alerts=alerts, clock=lambda: self.clock.wall,
                             monotonic=lambda: self.clock.boot, member_timeout_s=TICK_DEADLINE_S)
        config = ScalingConfig(max_replicas=MAX_REPLICAS, price_per_replica_hour=0.0)
        return ScalerLoop(config, fleet, reader, **common), reader

    @property
    def ledger_file(self) -> Path:
        return self.folder / f"{self.kind}-ledger.json"

    def files(self) -> dict[str, int]:
        return {path.name.removeprefix(f"{self.kind}-"): path.stat().st_size
                for path in sorted(self.folder.glob(f"{self.kind}-*.json"))}

    def churn(self, tick: int) -> None:
        """The platform between two ticks: a replica replaced now and then (a new id), new replicas stamped with
        the simulated time, the faults of this tick, and what the fake keeps for tests dropped."""
        deployment = self.verda.deployments[DEPLOYMENT]
        every = {name: max(1, round(period_s / self.interval_s)) for name, period_s in [
            ("replaced", REPLICA_REPLACED_EVERY_S), ("silent", VERDA_SILENT_EVERY_S), ("500", VERDA_FAULT_EVERY_S),
            ("503", QUEUE_FAULT_EVERY_S)]}
        if tick % every["replaced"] == 0 and deployment.replicas:
            deployment.replicas.pop(self.rng.randrange(len(deployment.replicas)))
            self.verda._reconcile_replicas(deployment)
        for replica in deployment.replicas:
            if replica.id not in self.listed:
                self.replica_ids += 1
                replica.started_at = datetime.fromtimestamp(self.clock.wall, UTC)
        self.listed = {replica.id for replica in deployment.replicas}
        self.verda.latency_s = TICK_DEADLINE_S * 2 if tick % every["silent"] == 1 else 0.0
        if tick % every["500"] == 2:
            self.verda._faults._by_path.clear()  # the fake keeps every fault it was given
            self.verda.fail_next(f"/container-deployments/{DEPLOYMENT}/replicas", 500, times=2)
        if tick % every["503"] == 3:
            self.queue.failing = 1
        self.verda.requests.clear()  # the fake's records, for tests' asserts
        self.verda.tokens_issued.clear()

    async def run(self, days: float, report: Callable[[str], None]) -> None:
        loop, reader = self.build()
        backend = loop.backend
        if isinstance(backend, FleetBackend) and backend.alerts is not None:
            backend.alerts.start()
        ticks_a_day = int(DAY_S / self.interval_s)
        total = max(1, int(days * ticks_a_day))
        baseline = ours(tracemalloc.take_snapshot())
        previous = baseline
        try:
            for tick in range(1, total + 1):
                self.churn(tick)
                try:
                    await loop.tick()
                except Exception:  # as `run` does: logged there, the count held
                    self.failed_ticks += 1
                replicas = len(self.verda.deployments[DEPLOYMENT].replicas)
                self.queue.step(replicas, self.interval_s)
                self.clock.advance(self.interval_s)
                if tick % ticks_a_day == 0 or tick == total:
                    gc.collect()  # what is still held, not cycles waiting for the collector
                    snapshot = ours(tracemalloc.take_snapshot())
                    self._report(report, tick / ticks_a_day, snapshot, previous, baseline, loop, backend)
                    previous = snapshot
        finally:
            await reader.aclose()
            await backend.aclose()

    def _report(self, report: Callable[[str], None], day: float, snapshot: tracemalloc.Snapshot,
                previous: tracemalloc.Snapshot, baseline: tracemalloc.Snapshot, loop: ScalerLoop, backend: Any) -> None:
        day_label = f"{round(day, 2):g}"
        held = sum(stat.size for stat in snapshot.statistics("filename")) / 1024
        grown = sum(stat.size_diff for stat in snapshot.compare_to(baseline, "filename")) / 1024
        files = ", ".join(f"{name} {size} B" for name, size in self.files().items()) or "none"
        counts = ", ".join(f"{name} {count}" for name, count in collections_of(loop, backend).items())
        report(f"{self.kind} day {day_label}: RSS {rss_mib():.1f} MiB, scaler+common allocated {held:.1f} KiB "
               f"({grown:+.1f} KiB since the start); files: {files}")
        report(f"{self.kind} day {day_label} collections: {counts}; jobs {self.queue.completed_count} "
               f"(given up {self.queue.given_up}, pending {len(self.queue.pending)}), replica ids {self.replica_ids}, "
               f"alerts delivered {self.queue.alerts}, ticks failed {self.failed_ticks}")
        for stat in snapshot.compare_to(previous, "lineno")[:3]:
            frame = stat.traceback[0]
            where = f"{Path(frame.filename).relative_to(REPO)}:{frame.lineno}"
            code = linecache.getline(frame.filename, frame.lineno).strip()[:70]
            report(f"{self.kind} day {day_label} grew: {stat.size_diff / 1024:+.1f} KiB ({stat.count_diff:+d} blocks) "
                   f"at {where} {code}")


async def measure(args: argparse.Namespace) -> None:
    events = EventCounter()
    structlog.configure(processors=[events], cache_logger_on_first_use=False)
    tracemalloc.start()
    with tempfile.TemporaryDirectory(prefix="scaler-soak-") as folder:
        for kind in args.scalers:
            started = time.monotonic()
            async with Soak(kind, Path(folder), args.seed, args.interval_s) as soak:
                await soak.run(args.days, lambda line: print(line, flush=True))
            print(f"{kind}: {args.days:g} simulated days in {time.monotonic() - started:.0f} s", flush=True)
    print("warnings and errors logged: " + (", ".join(f"{event} {n}" for event, n in sorted(events.counts.items()))
                                           or "none"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7.0, help="simulated days, 5760 ticks of 15 s each")
    parser.add_argument("--scalers", nargs="+", choices=["single", "fleet"], default=["single", "fleet"])
    parser.add_argument("--interval-s", type=float, default=INTERVAL_S,
                        help="seconds between ticks (SCALER_INTERVAL_S); a longer one simulates a day in fewer ticks")
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(measure(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
