"""How long RunPod's wake-up from 0 pods takes against a slow API.

    ./dev python -m bench.runpod_creates --pods 10 --latency-s 5

Starts the fake RunPod on loopback, makes every API request take ``--latency-s`` and times
`RunPodBackend.apply(pods)` from none: one listing, then a create per pod.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from demo.providers import POD_BODY
from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from standins.runpod import DEFAULT_API_KEY, FakeRunPod

NAME = "bench-runpod-creates"


async def measure(pods: int, latency_s: float) -> None:
    async with FakeRunPod(network_volumes=("vol-demo",)) as fake:
        backend = RunPodBackend(RunPodClient(DEFAULT_API_KEY, base_url=fake.url), NAME, POD_BODY)
        try:
            fake.latency_s = latency_s
            started = time.perf_counter()
            await backend.apply(pods)
            took = time.perf_counter() - started
        finally:
            await backend.aclose()
        assert len(fake.live_pods()) == pods, "every pod created"
        print(f"apply({pods}) from 0 pods at {latency_s:g} s per request: {took:.1f} s, "
              f"{len(fake.requests)} requests, at most {fake.most_in_flight} in flight")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--latency-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    asyncio.run(measure(args.pods, args.latency_s))


if __name__ == "__main__":
    main()
