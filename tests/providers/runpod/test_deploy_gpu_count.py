"""RUNPOD_GPU_COUNT is written in digits alone: anything else is refused naming it."""

from __future__ import annotations

import pytest

from scaler.deploy.command import deploy_main
from standins.runpod import FakeRunPod

from .conftest import API_KEY
from .test_deploy import runpod_args


def env_for(fake: FakeRunPod, gpu_count: str) -> dict[str, str]:
    return {"RUNPOD_API_KEY": API_KEY, "RUNPOD_API_URL": fake.url, "RUNPOD_HEALTH_URL": fake.health_url,
            "RUNPOD_VOLUME_ID": "vol-models", "RUNPOD_DATA_CENTER_IDS": "US-TX-3", "RUNPOD_GPU_COUNT": gpu_count,
            "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.1.0",
            "QUEUE_MANAGER_URL": "https://queue.example.com", "QUEUE_MANAGER_TOKEN": "queue-token-do-not-log"}


@pytest.mark.parametrize("value", ["1_0", " 1", "1.0", "+1"])
async def test_a_gpu_count_not_in_digits_alone_is_refused_naming_it_before_any_call(
    fake: FakeRunPod, value: str, capsys
) -> None:
    """Before: RUNPOD_GPU_COUNT=1_0 was read as 10: "ready", 10 GPUs per pod at ten times the price, exit 0."""
    assert await deploy_main(runpod_args(), env_for(fake, value)) == 2
    assert "RUNPOD_GPU_COUNT: must be a whole number" in capsys.readouterr().err
    assert fake.requests == []


async def test_a_gpu_count_in_digits_is_checked_with_runpod(fake: FakeRunPod, capsys) -> None:
    assert await deploy_main(runpod_args(), env_for(fake, "2")) == 0
    assert "x2, SECURE" in capsys.readouterr().out
