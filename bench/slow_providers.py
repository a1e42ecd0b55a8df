"""A wake-up from 0 to 10 replicas when every provider API call takes 0.5-3 s: fleet and single RunPod backend.

    ./dev python -m bench.slow_providers --latency-s 0.5 1 2 3

Starts the fake RunPod and the fake Verda on loopback, makes every API request take ``--latency-s`` and runs
the scaler loop's ticks back to back (``ScalerLoop.tick``, under its deadline of SCALER_INTERVAL_S 15 s), with
10 jobs waiting, until the loop lists 10 replicas and no provider call failed, or ``--ticks``. Four set-ups:
a fleet with RunPod first (cheaper), one with Verda first, the first with the jobs arriving 3 a tick, and a
RunPod backend alone. Per set-up: the ticks
until the 10 replicas are listed, the provider calls cut off by the fleet's per-call timeout, whether a
provider was degraded, and the replicas each provider holds once the writes in flight landed (10 in all:
none doubled, none lost).

``--setup "verda token"``: Verda's OAuth token in a fleet (Verda first): the ticks until Verda's first read
succeeds, then the Verda reads failed over the token's renewal (the clock moved to 9/10 of its hour: due) and
after Verda refused the token in hand (401: a new one is asked for), ``TOKEN_TICKS`` ticks each; ticks start
every SCALER_INTERVAL_S here, as ``comfy-scaler run`` starts them (about 3 minutes per latency).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from demo.providers import POD_BODY, VERDA_BODY, VERDA_ID, VERDA_SECRET
from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.fleet import FleetBackend, Member
from scaler.ledger import RUNPOD_BILLING, BillingRule
from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig
from scaler.providers import VerdaBackend
from scaler.providers.base import Backend
from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from scaler.providers.verda.client import VerdaClient
from scaler.queue_status import QueueStatus
from scaler.wiring import member_timeout, tokens_ahead
from standins.runpod import DEFAULT_API_KEY, FakeRunPod
from standins.verda import FakeVerda

INTERVAL_S = 15.0  # SCALER_INTERVAL_S's default
WANTED = 10
NAME = "bench-slow"


class WaitingJobs:
    """The queue manager: ``WANTED`` jobs waiting, or, arriving, ``per_tick`` more at each tick up to ``WANTED``."""

    def __init__(self, per_tick: int = WANTED) -> None:
        self.per_tick = per_tick
        self.tick = 1

    async def read(self) -> QueueStatus:
        return QueueStatus(pending_jobs=min(WANTED, self.per_tick * self.tick), running_jobs=0)

    async def read_with_timings(self, now: float, lists_by: float | None = None) -> QueueStatus:
        return await self.read()

    async def healthy(self) -> bool | None:
        return True


@dataclass
class Outcome:
    ticks: list[str] = field(default_factory=list)  # one line per tick
    ready_at_tick: int | None = None
    cut_off: int = 0  # member calls that ran out of the fleet's per-call time
    degraded: set[str] = field(default_factory=set)


def runpod_backend(fake: FakeRunPod) -> RunPodBackend:
    client = RunPodClient(DEFAULT_API_KEY, base_url=fake.url)
    return RunPodBackend(client, NAME, POD_BODY, health=PodHealthProbe(fake.health_url))


async def verda_backend(fake: FakeVerda, clock: Callable[[], float] = time.monotonic) -> VerdaBackend:
    async with VerdaClient(VERDA_ID, VERDA_SECRET, base_url=fake.url) as client:
        await client.create_deployment({**copy.deepcopy(VERDA_BODY), "name": NAME})
    return VerdaBackend(VerdaClient(VERDA_ID, VERDA_SECRET, base_url=fake.url, clock=clock), NAME)


def fleet(runpod: Backend, verda: Backend, first: str) -> FleetBackend:
    prices = {"runpod": 0.69, "verda": 2.99} if first == "runpod" else {"runpod": 3.49, "verda": 2.99}
    specs = {name: ProviderSpec(name, WANTED, prices[name], commit_s=INTERVAL_S) for name in prices}
    config = AllocatorConfig(providers=tuple(specs.values()))  # SCALER_FALLBACK_* defaults
    members = [Member(specs["runpod"], runpod, RUNPOD_BILLING), Member(specs["verda"], verda, BillingRule())]
    return FleetBackend(members, config, member_timeout_s=member_timeout(INTERVAL_S, None))


async def wake(setup: str, latency_s: float, most_ticks: int) -> Outcome:
    """``setup``: "fleet, runpod first", "fleet, verda first" or "runpod alone", and ", jobs arriving" for 3
    jobs more at each tick instead of 10 at once."""
    async with FakeRunPod(network_volumes=("vol-demo",)) as runpod_api, FakeVerda(VERDA_ID, VERDA_SECRET) as verda_api:
        runpod = runpod_backend(runpod_api)
        backend: Backend = runpod
        if setup != "runpod alone":
            backend = fleet(runpod, await verda_backend(verda_api), "runpod" if "runpod first" in setup else "verda")
            await tokens_ahead(backend, member_timeout(INTERVAL_S, None))
        runpod_api.latency_s = verda_api.latency_s = latency_s
        queue = WaitingJobs(3 if "arriving" in setup else WANTED)
        loop = ScalerLoop(ScalingConfig(max_replicas=WANTED, target_wait_s=None), backend, queue,
                          interval_s=INTERVAL_S)
        outcome = Outcome()
        try:
            for tick in range(1, most_ticks + 1):
                queue.tick = tick
                started = time.perf_counter()
                await loop.tick()
                took = time.perf_counter() - started
                errors = _errors(backend)
                outcome.cut_off += sum("no answer within" in e for n, e in errors.items() if "counted" not in n)
                if isinstance(backend, FleetBackend):
                    outcome.degraded |= {n for n, h in backend.state.health.items() if h.degraded is not None}
                listed = len(loop.last_view.replicas) if loop.last_view else 0
                outcome.ticks.append(f"tick {tick}: {took:4.1f} s, {listed:2d} listed"
                                     + "".join(f"; {n}: {e}" for n, e in errors.items()))
                if listed == WANTED and not errors and outcome.ready_at_tick is None:
                    outcome.ready_at_tick = tick
                    break
            await asyncio.sleep(latency_s + 0.5)  # writes the server still carries out land
            created = len(runpod_api.pods) + len(runpod_api.terminated)
            verda = len(verda_api.deployments[NAME].replicas) if NAME in verda_api.deployments else 0
            outcome.ticks.append(f"then: runpod {len(runpod_api.live_pods())} pods live ({created} ever created), "
                                 f"verda {verda} replicas")
        finally:
            await backend.aclose()
        return outcome


def _errors(backend: Backend) -> dict[str, str]:
    """What failed at this tick, as the fleet holds it: a provider's read, its write, and a write of the tick
    before that its read counted as this tick's error."""
    if not isinstance(backend, FleetBackend):
        return {}
    errors = {}
    for name, seen in backend._seen.items():
        error = seen.view.error
        if error is not None:
            errors[f"{name} {'read' if not seen.fresh else 'counted'}"] = error.removeprefix("write failed: ")
    for name, (_, error) in backend._write_errors.items():
        errors[f"{name} write"] = error
    return errors


TOKEN_TICKS = 3
TOKEN_LIFETIME_S = 3600.0  # the fake's; Verda states none


class ShiftedClock:
    """The monotonic clock, moved ahead by hand: the fake Verda and the client share it."""

    def __init__(self) -> None:
        self.shift_s = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.shift_s


async def paced(loop: ScalerLoop) -> None:
    """One tick, then the rest of its SCALER_INTERVAL_S, as ``run`` paces them: what a tick cut off left under
    way (a token request) has that long to land."""
    started = time.perf_counter()
    await loop.tick()
    await asyncio.sleep(max(0.0, started + INTERVAL_S - time.perf_counter()))


async def token_phases(latency_s: float, most_ticks: int) -> list[str]:
    """Verda's failed reads per phase: until its first good read, over the token's renewal, after a 401."""
    clock = ShiftedClock()
    async with (FakeRunPod(network_volumes=("vol-demo",)) as runpod_api,
                FakeVerda(VERDA_ID, VERDA_SECRET, token_ttl_s=TOKEN_LIFETIME_S, clock=clock) as verda_api):
        verda_api.latency_s = runpod_api.latency_s = latency_s
        backend = fleet(runpod_backend(runpod_api), await verda_backend(verda_api, clock), "verda")
        await tokens_ahead(backend, member_timeout(INTERVAL_S, None))  # as the CLI does before the first tick
        loop = ScalerLoop(ScalingConfig(max_replicas=WANTED, target_wait_s=None), backend, WaitingJobs(),
                          interval_s=INTERVAL_S)
        lines = []
        try:
            first_good = None
            for tick in range(1, most_ticks + 1):
                await paced(loop)
                if "verda read" not in _errors(backend):
                    first_good = tick
                    break
            lines.append(f"first good Verda read at tick {first_good or f'> {most_ticks}'}")
            due = 0.9 * TOKEN_LIFETIME_S + 60  # past the client's renewal mark, an hour's token still valid
            for phase, act in (("token due for renewal", lambda: setattr(clock, "shift_s", due)),
                               ("token refused (401)", verda_api.expire_tokens)):
                act()
                failed = []
                for _ in range(TOKEN_TICKS):
                    await paced(loop)
                    failed += [_errors(backend)["verda read"]] if "verda read" in _errors(backend) else []
                tokens = len(verda_api.requests_to("/oauth2/token"))
                lines.append(f"{phase}: {len(failed)} of {TOKEN_TICKS} Verda reads failed "
                             f"({'; '.join(sorted(set(failed))) or 'none'}), {tokens} token requests so far")
            degraded = sorted(n for n, h in backend.state.health.items() if h.degraded is not None)
            lines.append(f"degraded: {degraded or 'none'}")
        finally:
            await backend.aclose()
        return lines


SETUPS = ("fleet, runpod first", "fleet, verda first", "fleet, runpod first, jobs arriving", "runpod alone",
          "verda token")


async def measure(setups: list[str], latencies: list[float], most_ticks: int) -> None:
    print(f"member timeout {member_timeout(INTERVAL_S, None):g} s, tick deadline {INTERVAL_S:g} s, "
          f"{WANTED} jobs waiting")
    for setup in setups:
        for latency_s in latencies:
            if setup == "verda token":
                print(f"{setup}, {latency_s:g} s per call:")
                for line in await token_phases(latency_s, most_ticks):
                    print(f"    {line}")
                continue
            outcome = await wake(setup, latency_s, most_ticks)
            ready = f"{outcome.ready_at_tick} ticks" if outcome.ready_at_tick else f"not in {most_ticks} ticks"
            print(f"{setup}, {latency_s:g} s per call: {WANTED} replicas in {ready}, "
                  f"{outcome.cut_off} calls cut off, degraded: {sorted(outcome.degraded) or 'none'}")
            for line in outcome.ticks:
                print(f"    {line}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--ticks", type=int, default=6)
    parser.add_argument("--setup", choices=SETUPS, nargs="+", default=list(SETUPS))
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))  # the figures say what failed
    asyncio.run(measure(args.setup, args.latency_s, args.ticks))


if __name__ == "__main__":
    main()
