"""The Verda stand-in on loopback and the environment an operator deploys with, pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from standins.verda import FakeVerda

SECRET = "deploy-test-secret-do-not-log"
QUEUE_TOKEN = "deploy-queue-token-do-not-log"


@pytest.fixture
async def fake() -> AsyncIterator[FakeVerda]:
    async with FakeVerda(client_secret=SECRET) as server:
        yield server


@pytest.fixture
def deploy_env(fake: FakeVerda) -> dict[str, str]:
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
