"""SIGTERM while `comfy-scaler run` still looks up Verda's price (before its first tick): a clean stop.

Before, the stop handling was installed only after the price lookup (up to SCALER_TICK_DEADLINE_S) and the metrics
server's start: a SIGTERM then killed the process outright (exit -15, no `scaler_stopped`)."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from ..conftest import LoopbackPeer
from .conftest import running_scaler, sigterm_and_wait


class SlowPriceList(LoopbackPeer):
    """A Verda API that takes every request (the token, the price list) and answers none within the test."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self._over = asyncio.Event()

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.asked.set()
        await self._over.wait()
        return web.Response(status=503)

    async def __aexit__(self, *exc_info: object) -> None:
        self._over.set()
        await super().__aexit__(*exc_info)


async def test_sigterm_during_the_price_lookup_stops_the_run_cleanly(cli_env):
    async with SlowPriceList() as verda:
        env = {**os.environ, **cli_env, "VERDA_API_URL": verda.url, "SCALER_TICK_DEADLINE_S": "600"}
        env.pop("SCALER_PRICE_PER_REPLICA_HOUR", None)
        async with running_scaler(env) as process:
            async with asyncio.timeout(20):
                await verda.asked.wait()
            err = await sigterm_and_wait(process, timeout=15)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    assert b'"scaler_stopped"' in err
