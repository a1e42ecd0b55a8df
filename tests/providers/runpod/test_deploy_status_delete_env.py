"""`--provider runpod status` and `delete --yes` need the pods' name and the API key, nothing else of the spec."""

from __future__ import annotations

from scaler.deploy.command import deploy_main
from scaler.deploy.runpod import backend_from_spec
from scaler.deploy.spec import DEFAULT_SPEC_PATH
from standins.runpod import FakeRunPod

from .conftest import API_KEY
from .test_deploy import NAME, runpod_args


async def test_status_and_delete_from_a_shell_with_only_the_key(fake: FakeRunPod, capsys) -> None:
    """Before: both exit 2 (the image, the network volume, its data centre and the queue's URL required), so
    terminating the pods, billed, took exporting four values a delete never sends."""
    key_only = {"RUNPOD_API_KEY": API_KEY, "RUNPOD_API_URL": fake.url, "RUNPOD_HEALTH_URL": fake.health_url}
    deploy_env = {**key_only, "RUNPOD_VOLUME_ID": "vol-models", "RUNPOD_DATA_CENTER_IDS": "US-TX-3",
                  "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.1.0",
                  "QUEUE_MANAGER_URL": "https://queue.example.com", "QUEUE_MANAGER_TOKEN": "queue-token-do-not-log"}
    backend = backend_from_spec(DEFAULT_SPEC_PATH, deploy_env)
    try:
        await backend.apply(2)
    finally:
        await backend.aclose()
    capsys.readouterr()
    assert await deploy_main(runpod_args("status"), key_only) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "pods: 2 live" in out and out.count(f" {NAME}-") == 2, out
    assert await deploy_main(runpod_args("delete"), key_only) == 2
    assert f"terminates every pod of {NAME}" in capsys.readouterr().err
    assert await deploy_main(runpod_args("delete", "--yes"), key_only) == 0, capsys.readouterr().err
    assert fake.live_pods() == []
