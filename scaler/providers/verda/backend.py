"""Verda serverless containers as a scaler backend: the count is pinned with min_replica_count == max_replica_count.

Verda's own autoscaler only watches its own request queue, which our pulling workers leave empty; pinning
min == max leaves it nothing to decide, so the count is ours alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from scaler.policy import PAUSED
from scaler.providers.base import BackendView, FirstSeen
from scaler.providers.verda.client import VerdaClient, priced_compute
from scaler.settle import settled


class VerdaBackend:
    """Owns ``client`` (closed by ``aclose``)."""

    def __init__(self, client: VerdaClient, deployment: str, *, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.deployment = deployment
        self._clock = clock
        self._first_seen = FirstSeen()

    def __repr__(self) -> str:
        return f"VerdaBackend(deployment={self.deployment!r}, client={self.client!r})"

    async def observe(self) -> BackendView:
        """Status, replicas and the scaling Verda holds now, read afresh on every call: anyone (the console,
        `comfy-scaler stop`, a deploy) may have changed them since the last one. The three are asked at once: one
        after another they took three answers' time, and at 2 s an answer a fleet's provider read (3.75 s) never
        ended, so Verda was degraded while it worked and its replicas doubled on RunPod."""
        status, listed, bounds = await _each(
            self.client.get_status(self.deployment),
            self.client.get_replicas(self.deployment),
            self.client.get_replica_bounds(self.deployment),
        )
        # A replica listed without started_at is still being placed: it starts when it was first listed so.
        replicas = self._first_seen.replicas([(r.id, r.started_at) for r in listed], self._clock())
        return BackendView(replicas=replicas, status=status, bounds=bounds)

    async def apply(self, desired: int) -> bool:
        return await self.client.set_replica_bounds(self.deployment, desired, desired)

    async def pause(self) -> None:
        await self.client.pause(self.deployment)

    async def resume(self) -> None:
        """Un-pause at a count of 0: the scaler sets the count at its next tick. A tick that read the deployment
        before `comfy-scaler stop` can write its count after the pin to 0; paused, Verda keeps it, and resumed
        as it stood, it started that many replicas for whatever the queue held by then. Not paused: only
        un-paused, so a resume of a running deployment stops no replica."""
        if await self.client.get_status(self.deployment) == PAUSED:
            await self.client.set_replica_bounds(self.deployment, 0, 0)
        await self.client.resume(self.deployment)

    async def aclose(self) -> None:
        await self.client.aclose()

    def fetch_tokens_ahead(self) -> list[asyncio.Task[Any]]:
        request = self.client.fetch_token_ahead()
        return [] if request is None else [request]

    async def price_per_hour(self) -> float:
        """Hourly price of one replica of this deployment's compute, from GET /container-types."""
        deployment = await self.client.get_deployment(self.deployment)
        compute, size, spot = priced_compute(self.deployment, deployment)
        return await self.client.price_per_hour(compute, spot=spot, size=size)


async def _each(*calls: Awaitable[Any]) -> list[Any]:
    """Each call's answer, all asked at once; the first failure raised once every call has ended."""
    results = await settled(calls)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results
