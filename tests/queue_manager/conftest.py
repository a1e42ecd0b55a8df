from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from queue_manager import QueueManagerServer

from ..conftest import ManualClock

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class FakeClock(ManualClock):
    """A settable wall clock; starts at a fixed epoch so timestamps are predictable."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        super().__init__(now)


@pytest.fixture
def workflow() -> dict[str, Any]:
    path = FIXTURES / "workflows" / "quick.json"
    if not path.is_file():
        raise FileNotFoundError(f"test workflows not found at {path.resolve()}")
    return json.loads(path.read_text())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """The workers' OUTPUTS_PATH, as mounted on the queue manager's host."""
    folder = tmp_path / "outputs"
    folder.mkdir()
    return folder


@pytest.fixture
async def queue(clock: FakeClock) -> AsyncIterator[QueueManagerServer]:
    async with QueueManagerServer(clock=clock, test_hooks=True) as server:
        yield server


@pytest.fixture
async def client(queue: QueueManagerServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=queue.url, timeout=5.0) as http:
        yield http
