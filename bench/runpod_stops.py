"""How long RunPod's `pause()` (the kill switch) takes for a fleet of pods against a slow API.

    ./dev python -m bench.runpod_stops --pods 10 --latency-s 1

Starts the fake RunPod on loopback, creates the pods, then makes every API request take ``--latency-s`` and
times `RunPodBackend.pause()`: one listing, then each pod stopped and terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from demo.providers import POD_BODY
from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from standins.runpod import DEFAULT_API_KEY, FakeRunPod

NAME = "bench-runpod-stops"


async def measure(pods: int, latency_s: float) -> None:
    async with FakeRunPod(network_volumes=("vol-demo",)) as fake:
        backend = RunPodBackend(RunPodClient(DEFAULT_API_KEY, base_url=fake.url), NAME, POD_BODY)
        try:
            await backend.apply(pods)
            fake.latency_s, fake.most_in_flight, before = latency_s, 0, len(fake.requests)
            started = time.perf_counter()
            await backend.pause()
            took = time.perf_counter() - started
        finally:
            await backend.aclose()
        assert fake.pods == {}, "every pod terminated"
        print(f"pause() of {pods} pods at {latency_s:g} s per request: {took:.1f} s, "
              f"{len(fake.requests) - before} requests, at most {fake.most_in_flight} in flight")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--latency-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    asyncio.run(measure(args.pods, args.latency_s))


if __name__ == "__main__":
    main()
