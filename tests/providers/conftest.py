"""Fixtures both provider folders (RunPod, Verda) use: a hand-moved clock, a sleep that only records, and the
deployment spec of an operator whose queue URL carries its own credentials."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from scaler.deploy.spec import DEFAULT_SPEC_PATH

from ..conftest import LoopbackPeer, ManualClock


class RecordingSleep:
    """Stands in for asyncio.sleep in the client's retries: records the waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def edited_spec(tmp_path: Path, old: str, new: str) -> Path:
    """The shipped spec with its first ``old`` (which it must hold) made ``new``, as tmp_path/deployment.toml."""
    text = DEFAULT_SPEC_PATH.read_text()
    assert old in text
    path = tmp_path / "deployment.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.fixture
def spec_without_token(tmp_path: Path) -> Path:
    """The default spec less the QUEUE_MANAGER_TOKEN secret: what an operator whose QUEUE_MANAGER_URL carries a
    user and password (a proxy's) deploys, the two being refused together."""
    return edited_spec(tmp_path, 'QUEUE_MANAGER_TOKEN = "comfyui-worker-queue-manager-token"\n', "")


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
async def closed_after() -> AsyncIterator[Callable[[Any], Any]]:
    """`closed_after(client)` returns the client and closes it (`aclose`) when the test ends."""
    clients: list[Any] = []

    def keep(client: Any) -> Any:
        clients.append(client)
        return client

    yield keep
    for client in clients:
        await client.aclose()


class DrippingPeer(LoopbackPeer):
    """Answers every request 200 and then one byte every 20 ms, never done: each read gets a byte well within any
    read timeout. ``requests`` counts the requests it took."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(b" ")
                await asyncio.sleep(0.02)


@pytest.fixture
async def dripping_peer() -> AsyncIterator[DrippingPeer]:
    async with DrippingPeer() as peer:
        yield peer


class NestingPeer(LoopbackPeer):
    """Answers every request 200 with JSON nested ``depth`` deep (2 bytes a level): valid JSON past what Python's
    parser reads (RecursionError, not ValueError)."""

    def __init__(self, depth: int = 100_000) -> None:
        super().__init__()
        self.body = b"[" * depth + b"]" * depth

    async def answer(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.body, content_type="application/json")


@pytest.fixture
async def nesting_peer() -> AsyncIterator[NestingPeer]:
    async with NestingPeer() as peer:
        yield peer
