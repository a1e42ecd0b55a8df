"""Fixtures for the ComfyUI simulator tests: the recorded transcripts, a running simulator and
helpers that talk to it the way a worker does (websocket first, then POST /prompt)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from standins.comfyui import ComfyUISimulator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TRANSCRIPTS = FIXTURES / "comfyui-0.8.0"
TEMP_NAME = re.compile(r"ComfyUI_temp_[a-z]{5}_")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not TRANSCRIPTS.is_dir():
        pytest.fail(f"recorded transcripts not found at {TRANSCRIPTS}: the simulator tests need them")
    return FIXTURES


def load_transcript(name: str) -> dict[str, Any]:
    path = TRANSCRIPTS / f"{name}.json"
    if not path.is_file():
        pytest.fail(f"transcript {path} is missing")
    return json.loads(path.read_text())


@pytest.fixture
async def sim(tmp_path: Path, fixtures_dir: Path) -> AsyncIterator[ComfyUISimulator]:
    simulator = ComfyUISimulator(tmp_path / "output", tmp_path / "temp", history_lag_s=0.05)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def normalize(value: Any, prompt_id: str) -> Any:
    """Blank out what differs between runs: prompt ids, timestamps, the temp files' random part."""
    if isinstance(value, dict):
        return {k: normalize(v, prompt_id) for k, v in value.items() if k != "timestamp"}
    if isinstance(value, list):
        return [normalize(v, prompt_id) for v in value]
    if value == prompt_id:
        return "<prompt_id>"
    if isinstance(value, str):
        return TEMP_NAME.sub("ComfyUI_temp_xxxxx_", value)
    return value


def normalize_history_entry(entry: dict[str, Any], prompt_id: str) -> dict[str, Any]:
    entry = copy.deepcopy(entry)
    entry["prompt"][0] = "<number>"
    entry["prompt"][3]["create_time"] = "<create_time>"
    return normalize(entry, prompt_id)


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    """Next JSON message, skipping binary preview frames."""
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return json.loads(msg.data)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"websocket ended: {msg.type}")


async def collect_until_done(ws: aiohttp.ClientWebSocketResponse, prompt_id: str) -> list[dict[str, Any]]:
    """Messages up to and including the final `executing {node: null}` for prompt_id."""
    messages = []
    while True:
        message = await receive_json(ws)
        messages.append(message)
        data = message["data"]
        if message["type"] == "executing" and data["node"] is None and data.get("prompt_id") == prompt_id:
            return messages


async def submit(
    http: aiohttp.ClientSession, url: str, workflow: dict[str, Any], client_id: str, **extra: Any
) -> dict[str, Any]:
    async with http.post(f"{url}/prompt", json={"prompt": workflow, "client_id": client_id, **extra}) as response:
        body = await response.json()
        assert response.status == 200, body
        return body
