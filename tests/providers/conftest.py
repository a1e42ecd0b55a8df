"""Fixtures both provider folders (RunPod, Verda) use: a hand-moved clock and a sleep that only records."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ..conftest import ManualClock


class RecordingSleep:
    """Stands in for asyncio.sleep in the client's retries: records the waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


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
