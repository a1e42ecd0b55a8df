"""Every body the project sends to Verda loads into the official `verda` SDK's dataclasses unchanged.

Round trip: SDK dataclass from our dict, back to a dict, None fields dropped: any key the SDK does not know,
or a value of the wrong shape, makes the comparison fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from verda.containers import Container, Deployment, ReplicaInfo, ScalingOptions

from scaler.deploy.spec import build_body, load_spec
from scaler.deploy.verda import deployment_changes
from scaler.providers.verda.client import VerdaClient
from standins.verda import FakeVerda

NAME = "comfyui-worker-serverless"


def without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None and not k.startswith("_")}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def sdk_round_trip(cls: type, body: dict[str, Any]) -> dict[str, Any]:
    return without_none(json.loads(cls.from_dict(body).to_json()))


def test_create_body_loads_into_sdk_deployment(spec_path: Path, deploy_env) -> None:
    body = build_body(load_spec(spec_path, deploy_env))
    assert sdk_round_trip(Deployment, body) == body


def test_private_registry_body_loads_into_sdk_deployment(spec_path: Path, deploy_env) -> None:
    body = build_body(load_spec(spec_path, {**deploy_env, "VERDA_REGISTRY_CREDENTIALS": "ghcr-acme"}))
    assert body["container_registry_settings"] == {"is_private": True, "credentials": {"name": "ghcr-acme"}}
    assert sdk_round_trip(Deployment, body) == body


async def test_update_and_scaling_bodies_load_into_sdk(
    fake: FakeVerda, verda: VerdaClient, spec_path: Path, deploy_env, queue_token: str
) -> None:
    body = build_body(load_spec(spec_path, deploy_env))
    await verda.create_secret("comfyui-worker-queue-manager-token", queue_token)
    live = await verda.create_deployment(body)
    newer = build_body(load_spec(spec_path, {**deploy_env, "VERDA_IMAGE": "ghcr.io/acme/worker:0.2.0"}))
    patch = deployment_changes(newer, live)
    assert list(patch) == ["containers"]
    assert [sdk_round_trip(Container, c) for c in patch["containers"]] == patch["containers"]
    await verda.update_deployment(NAME, patch)

    # A scaling PATCH carries only some keys (Verda's Go SDK sends each one optional); each is a key of the
    # SDK's ScalingOptions with the SDK's shape.
    await verda.set_replica_bounds(NAME, 2, 5)
    sent_scaling = fake.requests_to(f"/container-deployments/{NAME}/scaling", "PATCH")[0].json
    whole = {**await verda.get_scaling(NAME), **sent_scaling}
    assert sdk_round_trip(ScalingOptions, whole) == whole

    # The fake's answers parse with the SDK too, so the fake speaks Verda's shapes.
    Deployment.from_dict(await verda.get_deployment(NAME), infer_missing=True)
    ScalingOptions.from_dict(await verda.get_scaling(NAME))
    replicas = (await verda._json("GET", f"/container-deployments/{NAME}/replicas"))["list"]
    assert [ReplicaInfo.from_dict(r).id for r in replicas] == [r.id for r in await verda.get_replicas(NAME)]
