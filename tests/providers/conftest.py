"""Fixtures both provider folders (RunPod, Verda) use: a hand-moved clock and a sleep that only records."""

from __future__ import annotations

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
