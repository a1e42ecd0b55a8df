"""Fixtures for the RunPod client, backend and the fake RunPod API: all on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from scaler.providers.runpod.client import RunPodClient
from standins.runpod import FakeRunPod

from ...conftest import ManualClock
from ..conftest import RecordingSleep

API_KEY = "rpa_test_key_do_not_log"
OPENAPI_EXCERPT = Path(__file__).resolve().parents[2] / "fixtures" / "runpod" / "openapi-v2-pods.json"
GPU = "NVIDIA GeForce RTX 4090"


@pytest.fixture
def api_key() -> str:
    return API_KEY


@pytest.fixture
async def fake(clock: ManualClock) -> AsyncIterator[FakeRunPod]:
    async with FakeRunPod(API_KEY, clock=clock, network_volumes=("vol-models",)) as server:
        yield server


@pytest.fixture
def make_client(fake: FakeRunPod, sleeps: RecordingSleep, closed_after: Callable) -> Callable[..., RunPodClient]:
    def build(**overrides: Any) -> RunPodClient:
        options: dict[str, Any] = {"base_url": fake.url, "timeout_s": 5, "max_attempts": 4, "sleep": sleeps}
        options.update(overrides)
        return closed_after(RunPodClient(options.pop("api_key", API_KEY), **options))

    return build


@pytest.fixture
async def runpod(make_client: Callable[..., RunPodClient]) -> RunPodClient:
    return make_client()


@pytest.fixture(scope="session")
def openapi() -> dict[str, Any]:
    return json.loads(OPENAPI_EXCERPT.read_text())


def pod_body(name: str = "comfy-test-0", **overrides: Any) -> dict[str, Any]:
    """A create body of the shape the deploy spec produces."""
    body: dict[str, Any] = {
        "name": name,
        "image": "ghcr.io/acme/comfyui-worker-serverless:0.1.0",
        "gpu": {"id": GPU, "count": 1},
        "cloud": "SECURE",
        "disk": 50,
        "ports": ["8000/http"],
        "env": {"SERVERLESS_MODE": "true", "HEALTH_PORT": "8000"},
        "mounts": {"network": [{"volumeId": "vol-models", "path": "/models"}]},
    }
    body.update(overrides)
    return body
