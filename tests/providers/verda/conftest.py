"""Fixtures for the Verda client, the fake Verda API and the deploy tooling: all on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from scaler.deploy.spec import DEFAULT_SPEC_PATH
from scaler.providers.verda.client import VerdaClient
from standins.verda import FakeVerda

from ...conftest import ManualClock
from ..conftest import RecordingSleep

SECRET = "test-secret-do-not-log"
QUEUE_TOKEN = "queue-token-value-do-not-log"
NAME = "comfyui-worker-serverless"
SFS_VOLUMES = ("sfs-models-1", "sfs-outputs-1", "sfs-uploads-1")


def h100_deployment(
    container: dict[str, Any], *, name: str = NAME, min_replicas: int = 0, triggers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A create body: one H100 running `container`, scaling min_replicas..5 on queue load (plus `triggers`)."""
    return {
        "name": name,
        "is_spot": False,
        "compute": {"name": "H100", "size": 1},
        "container_registry_settings": {"is_private": False},
        "containers": [container],
        "scaling": {
            "min_replica_count": min_replicas,
            "max_replica_count": 5,
            "scale_down_policy": {"delay_seconds": 300},
            "scale_up_policy": {"delay_seconds": 0},
            "queue_message_ttl_seconds": 300,
            "concurrent_requests_per_replica": 1,
            "scaling_triggers": {"queue_load": {"threshold": 1}, **(triggers or {})},
        },
    }


@pytest.fixture
def client_secret() -> str:
    return SECRET


@pytest.fixture
def queue_token() -> str:
    return QUEUE_TOKEN


@pytest.fixture
async def fake(clock: ManualClock) -> AsyncIterator[FakeVerda]:
    async with FakeVerda(client_secret=SECRET, token_ttl_s=100, clock=clock) as server:
        server.volumes.update(dict.fromkeys(SFS_VOLUMES, "NVMe_Shared"))  # those deploy_env and the tests mount
        yield server


@pytest.fixture
def make_client(
    fake: FakeVerda, clock: ManualClock, sleeps: RecordingSleep, closed_after: Callable
) -> Callable[..., VerdaClient]:
    def build(**overrides: object) -> VerdaClient:
        options: dict[str, object] = {
            "base_url": fake.url,
            "timeout_s": 5,
            "max_attempts": 5,
            "clock": clock,
            "sleep": sleeps,
        }
        options.update(overrides)
        client_id = str(options.pop("client_id", "test-id"))
        return closed_after(VerdaClient(client_id, SECRET, **options))  # type: ignore[arg-type]

    return build


@pytest.fixture
async def verda(make_client: Callable[..., VerdaClient]) -> VerdaClient:
    return make_client()


@pytest.fixture
def spec_path() -> Path:
    assert DEFAULT_SPEC_PATH.is_file(), f"deployment spec missing at {DEFAULT_SPEC_PATH}"
    return DEFAULT_SPEC_PATH


@pytest.fixture
def deploy_env(fake: FakeVerda) -> dict[str, str]:
    """The environment an operator sets before ./deploy-serverless.sh, pointed at the fake API."""
    return {
        "VERDA_CLIENT_ID": "test-id",
        "VERDA_CLIENT_SECRET": SECRET,
        "VERDA_API_URL": fake.url,
        "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.1.0",
        "VERDA_MODELS_VOLUME_ID": "sfs-models-1",
        "VERDA_OUTPUTS_VOLUME_ID": "sfs-outputs-1",
        "QUEUE_MANAGER_URL": "https://queue.example.com",
        "QUEUE_MANAGER_TOKEN": QUEUE_TOKEN,
    }
