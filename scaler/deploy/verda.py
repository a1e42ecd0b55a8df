"""Deploy the worker to Verda serverless containers (`python -m scaler.deploy --provider verda`, the default).

apply is idempotent: it creates the secrets that are missing, then creates the deployment or updates it in
place (keeping the container names Verda assigned and the live min_replica_count the autoscaler set), then
prints status and replicas. `--dry-run` prints the exact JSON body and touches nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

import httpx

from scaler.deploy.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, DeployError
from scaler.deploy.spec import DEFAULT_SPEC_PATH, DeploymentSpec, SpecError, build_body, load_spec
from scaler.providers.verda.client import DEFAULT_BASE_URL, VerdaAPIError, VerdaClient


def update_body(body: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """The PATCH body: the spec's body with the assigned container names and the live min_replica_count."""
    live_containers = live.get("containers") or []
    if len(live_containers) != len(body["containers"]):
        raise DeployError(
            f"deployment {body['name']} has {len(live_containers)} containers, the spec {len(body['containers'])};"
            " delete and recreate it to change the number of containers"
        )
    containers = [{**c, "name": lc["name"]} for c, lc in zip(body["containers"], live_containers, strict=True)]
    scaling = dict(body["scaling"])
    live_min = (live.get("scaling") or {}).get("min_replica_count")
    if isinstance(live_min, int):
        scaling["min_replica_count"] = min(live_min, scaling["max_replica_count"])
    return {**body, "containers": containers, "scaling": scaling}


async def ensure_secrets(verda: VerdaClient, spec: DeploymentSpec, environ: Mapping[str, str]) -> None:
    existing = set(await verda.list_secrets())
    for env_name, secret_name in spec.secrets.items():
        if secret_name in existing:
            print(f"secret {secret_name}: exists (kept; Verda cannot update a secret, rename it to rotate)")
            continue
        value = environ.get(env_name)
        if not value:
            raise DeployError(
                f"secrets.{env_name}: Verda secret {secret_name!r} does not exist; set {env_name} to create it"
            )
        await verda.create_secret(secret_name, value)
        print(f"secret {secret_name}: created from ${env_name}")


async def find_deployment(verda: VerdaClient, name: str) -> dict[str, Any] | None:
    try:
        return await verda.get_deployment(name)
    except VerdaAPIError as error:
        if error.status == 404:
            return None
        raise


async def print_state(verda: VerdaClient, name: str) -> None:
    print(f"status: {await verda.get_status(name)}")
    scaling = await verda.get_scaling(name)
    print(f"scaling: min {scaling.get('min_replica_count')} max {scaling.get('max_replica_count')}")
    replicas = await verda.get_replicas(name)
    print(f"replicas: {len(replicas)}")
    for replica in replicas:
        since = replica.started_at.isoformat() if replica.started_at else "?"
        print(f"  {replica.id} {replica.status} since {since}")


async def apply(verda: VerdaClient, spec: DeploymentSpec, environ: Mapping[str, str]) -> None:
    body = build_body(spec)
    name = body["name"]
    await ensure_secrets(verda, spec, environ)
    live = await find_deployment(verda, name)
    if live is None:
        created = await verda.create_deployment(body)
        print(f"deployment {name}: created")
        endpoint = created.get("endpoint_base_url")
    else:
        await verda.update_deployment(name, update_body(body, live))
        print(f"deployment {name}: updated in place")
        endpoint = live.get("endpoint_base_url")
    if endpoint:
        print(f"endpoint: {endpoint}")
    await print_state(verda, name)


async def delete(verda: VerdaClient, name: str) -> None:
    if await find_deployment(verda, name) is None:
        print(f"deployment {name}: not found, nothing to delete")
        return
    await verda.delete_deployment(name)
    print(f"deployment {name}: deleted (secrets kept)")


def make_client(environ: Mapping[str, str]) -> VerdaClient:
    client_id, client_secret = environ.get("VERDA_CLIENT_ID"), environ.get("VERDA_CLIENT_SECRET")
    if not client_id or not client_secret:
        raise DeployError("set VERDA_CLIENT_ID and VERDA_CLIENT_SECRET (Verda console > API keys)")
    return VerdaClient(client_id, client_secret, base_url=environ.get("VERDA_API_URL", DEFAULT_BASE_URL))


async def run(args: argparse.Namespace, spec: DeploymentSpec, environ: Mapping[str, str]) -> None:
    async with make_client(environ) as verda:
        name = spec.deployment.name
        if args.action == "apply":
            await apply(verda, spec, environ)
        elif args.action == "status":
            if await find_deployment(verda, name) is None:
                raise DeployError(f"deployment {name} does not exist; run ./deploy-serverless.sh to create it")
            await print_state(verda, name)
        else:
            await delete(verda, name)


def _explain(error: VerdaAPIError) -> str:
    if error.status == 401:
        return f"{error} (check VERDA_CLIENT_ID / VERDA_CLIENT_SECRET)"
    return str(error)


async def deploy(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        spec = load_spec(args.spec or DEFAULT_SPEC_PATH, environ)
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        if args.action != "apply":
            print("--dry-run applies to apply only", file=sys.stderr)
            return EXIT_USAGE
        print(json.dumps(build_body(spec), indent=2))
        for env_name, secret_name in spec.secrets.items():
            print(f"# secret {secret_name} (env {env_name}) is created from ${env_name} if missing", file=sys.stderr)
        return EXIT_OK
    if args.action == "delete" and not args.yes:
        print(f"delete removes deployment {spec.deployment.name}; add --yes to confirm", file=sys.stderr)
        return EXIT_USAGE
    try:
        await run(args, spec, environ)
    except DeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except VerdaAPIError as error:
        print(f"error: {_explain(error)}", file=sys.stderr)
        return EXIT_FAILED
    except httpx.HTTPError as error:
        print(f"error: cannot reach the Verda API: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK

