"""Deploy the worker to Verda serverless containers (`python -m scaler.deploy --provider verda`, the default).

apply is idempotent: it creates the secrets that are missing, then creates the deployment, or PATCHes only what
differs from the spec (keeping the container names Verda assigned and the replica count the scaler pinned) and
says "unchanged" otherwise; then it prints status and replicas. `--dry-run` prints the exact JSON body and
touches nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import httpx

from common.http_answers import AnswerTooLarge
from common.logs import register_secret
from common.settings import QUEUE_TOKEN_ENV, QUEUE_WORKER_TOKEN_ENV, secret_length_problem
from scaler.deploy.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    DeployError,
    check_api_url,
    credential,
    options_misused,
    print_error,
    shown,
    unreachable,
)
from scaler.deploy.queue_url import queue_url_problems
from scaler.deploy.spec import (
    DEFAULT_SPEC_PATH,
    SHARED_VOLUME_ENVS,
    SPEC_VARIABLES,
    DeploymentSpec,
    SpecError,
    build_body,
    deployment_name,
    load_spec,
    refusing_misspelt,
    unmounted_folders,
)
from scaler.deploy.verda_console import console_lines
from scaler.providers.verda.client import (
    DEFAULT_BASE_URL,
    VerdaAPIError,
    VerdaClient,
    container_image,
    replica_bounds,
)

# Top-level keys of a deployment that a PATCH of /container-deployments/{name} may carry (scaling has its own call).
DEPLOYMENT_KEYS = ("is_spot", "compute", "container_registry_settings")
# A change of these runs new containers: the replicas that were running are stopped, busy ones included.
REPLICA_RESTARTING_KEYS = {"containers", "compute", "is_spot"}
REPLACED_REPLICAS = (
    "the replicas above started before this update: Verda rolls them over to the new version (status"
    " version_updating meanwhile; how and in which order is not documented). Expect each to get SIGTERM: a job still"
    " running SHUTDOWN_GRACE_S (default 25 s) later is handed back to the queue and starts again from the beginning"
    " on another replica; none is lost"
)


def _covers(live: Any, wanted: Any) -> bool:
    """True when `live` (Verda's answer) holds everything `wanted` (what we send) says. Verda adds keys of its
    own to what it answers, and a disabled option may read back as absent."""
    if isinstance(wanted, dict):
        if live is None and wanted == {"enabled": False}:
            return True
        return isinstance(live, dict) and all(_covers(live.get(key), value) for key, value in wanted.items())
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(_covers(one, other) for one, other in zip(live, wanted, strict=True))
        )
    return live == wanted


def _objects(value: Any) -> list[dict[str, Any]]:
    """The objects of a list Verda answered; anything else reads as none, and so differs from the spec."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _env_entries(container: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (str(e.get("name")), str(e.get("type")), str(e.get("value_or_reference_to_secret")))
        for e in _objects(container.get("env"))
    }


def container_differences(wanted: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """What differs, in words: the image (both references), env var names (never values: one typed in the
    console may be a secret), then the other fields by name. Image and env compare exactly; every wanted volume
    mount must be present (Verda may add mounts of its own); the rest as `_covers`."""
    differences = []
    if container_image(live) != wanted["image"]:
        differences.append(f"image {container_image(live)} -> {wanted['image']}")
    live_env = {name: rest for name, *rest in _env_entries(live)}
    wanted_env = {name: rest for name, *rest in _env_entries(wanted)}
    for word, names in (
        ("set", wanted_env.keys() - live_env.keys()),
        ("removed", live_env.keys() - wanted_env.keys()),
        ("changed", {name for name in wanted_env.keys() & live_env.keys() if wanted_env[name] != live_env[name]}),
    ):
        if names:
            differences.append(f"env {word} {' '.join(sorted(names))}")
    live_mounts = _objects(live.get("volume_mounts"))
    if not all(any(_covers(mount, w) for mount in live_mounts) for w in wanted.get("volume_mounts") or []):
        differences.append("volume_mounts")
    skip = ("image", "env", "volume_mounts", "name")
    return differences + [key for key, value in wanted.items() if key not in skip and not _covers(live.get(key), value)]


def describe_changes(changes: dict[str, Any], live: dict[str, Any]) -> str:
    """The keys of a deployment PATCH, a container's with what in it differs from what Verda held."""
    described = []
    for key in changes:
        if key == "containers":
            pairs = zip(changes["containers"], live.get("containers") or [], strict=False)
            described += [f"containers: {', '.join(container_differences(new, old))}" for new, old in pairs]
        else:
            described.append(key)
    return "; ".join(described)


def check_updatable(body: dict[str, Any], live: dict[str, Any]) -> None:
    """DeployError when the spec cannot update the deployment Verda holds (another number of containers)."""
    live_containers = live.get("containers") or []
    if len(live_containers) != len(body["containers"]):
        raise DeployError(
            f"deployment {body['name']} has {len(live_containers)} containers, the spec {len(body['containers'])};"
            " delete and recreate it to change the number of containers"
        )


def deployment_changes(body: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """The PATCH body for an existing deployment: only the top-level keys that differ, {} when none does.
    Containers keep the names Verda assigned (an update must carry them)."""
    check_updatable(body, live)
    changes = {key: body[key] for key in DEPLOYMENT_KEYS if not _covers(live.get(key), body[key])}
    pairs = list(zip(body["containers"], live.get("containers") or [], strict=True))
    if any(container_differences(wanted, one) for wanted, one in pairs):
        changes["containers"] = [{**wanted, "name": one.get("name")} for wanted, one in pairs]
    return changes


def scaling_changes(wanted: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """The partial PATCH of …/scaling: the spec's options that differ from Verda's, keeping the live count.

    A count pinned by the scaler (min == max) stays as it is, whatever the spec's bounds; an unpinned one keeps
    its min (capped at the spec's max). The spec's bounds apply only when the deployment is created.
    """
    wanted = dict(wanted)
    bounds = replica_bounds(live)
    if bounds is not None and bounds[0] == bounds[1]:
        wanted["min_replica_count"] = wanted["max_replica_count"] = bounds[0]
    elif bounds is not None:
        wanted["min_replica_count"] = min(bounds[0], wanted["max_replica_count"])
    return {key: value for key, value in wanted.items() if not _covers(live.get(key), value)}


KEPT_AS_IT_IS = "kept; Verda cannot update a secret, rename it to rotate"
RACED = "created by another deploy since this one looked"
# The replicas poll with QUEUE_MANAGER_TOKEN, so against a queue manager run with a worker token its value is that one.
WORKER_TOKEN_HINT = (
    f" (if your queue manager has a worker token, {QUEUE_WORKER_TOKEN_ENV}, give its value here: the replicas only "
    "poll, and the participants' token is refused on the worker routes)"
)


def _already_exists(error: VerdaAPIError) -> bool:
    """Verda's answer to a create of what exists: here, what another deploy created since this one looked."""
    return error.status == 409


async def ensure_secrets(verda: VerdaClient, spec: DeploymentSpec, environ: Mapping[str, str]) -> None:
    """Create the missing secrets; DeployError, before any is created, naming each that has no value to be made
    from."""
    existing = set(await verda.list_secrets())
    if unset := [
        f"secrets.{env_name}: Verda secret {secret_name!r} does not exist; set {env_name} to create it"
        + (WORKER_TOKEN_HINT if env_name == QUEUE_TOKEN_ENV else "")
        for env_name, secret_name in spec.secrets.items()
        if secret_name not in existing and not environ.get(env_name)
    ]:
        raise DeployError("\n".join(unset))
    for env_name, secret_name in spec.secrets.items():
        if secret_name in existing:
            print(f"secret {secret_name}: exists ({KEPT_AS_IT_IS})")
            continue
        try:
            await verda.create_secret(secret_name, environ[env_name])
        except VerdaAPIError as error:
            if not _already_exists(error) or secret_name not in await verda.list_secrets():
                raise
            print(f"secret {secret_name}: {RACED} ({KEPT_AS_IT_IS})")
            continue
        print(f"secret {secret_name}: created from ${env_name}")


async def check_compute(verda: VerdaClient, spec: DeploymentSpec, environ: Mapping[str, str]) -> None:
    """DeployError naming the setting when Verda offers no such compute (GET /serverless-compute-resources):
    Verda refuses it only at the deployment's create or update, after the secrets were made. One listed as not
    available is deployed, with a warning: what Verda does with it is undocumented."""
    compute = spec.compute
    offered = await verda.list_compute_resources()
    sizes = sorted({one.size for one in offered if one.name == compute.name})
    if not sizes:
        field = "VERDA_COMPUTE" if environ.get("VERDA_COMPUTE") else "compute.name"
        if not offered:
            raise DeployError(f"{field}: Verda lists no compute for serverless containers (GET "
                              "/serverless-compute-resources answered an empty list), so none can be deployed: check "
                              "in the console that the account can run serverless containers, and that VERDA_API_URL "
                              "(if set) is Verda's API; nothing was written")
        names = ", ".join(sorted({one.name for one in offered}))
        raise DeployError(f"{field}: Verda offers no compute {compute.name!r}; the names it offers: {names}")
    if compute.size not in sizes:
        field = "VERDA_COMPUTE_SIZE" if environ.get("VERDA_COMPUTE_SIZE") else "compute.size"
        raise DeployError(f"{field}: Verda offers {compute.name} with {', '.join(map(str, sizes))} GPUs per "
                          f"replica, not {compute.size}")
    if not any(one.available for one in offered if (one.name, one.size) == (compute.name, compute.size)):
        print(f"warning: Verda lists {shown(compute.name)} with {compute.size} GPUs per replica as not available now: "
              "replicas may not start until it is; deploying anyway", file=sys.stderr)


T = TypeVar("T")
SFS_VOLUME_TYPE = "NVMe_Shared"  # GET /volumes' type of a shared filesystem, the only kind a container mounts
BLOCK_VOLUME_TYPES = {"NVMe", "HDD"}  # an instance's disks; a type Verda adds later is not refused on a guess
# A list the deploy's credentials may not read (403) or an API without it (404): the check is skipped, with a warning.
UNLISTABLE = (403, 404)


async def _listed(listing: Awaitable[T], what: str) -> T | None:
    """The list, or None (said on stderr) when Verda will not list it: then Verda's create is the check."""
    try:
        return await listing
    except VerdaAPIError as error:
        if error.status not in UNLISTABLE:
            raise
        print(f"warning: cannot check {what} before writing ({error}); deploying anyway", file=sys.stderr)
        return None


def _overriding(environ: Mapping[str, str], variable: str | None, value: object, field: str) -> str:
    """The variable that gave ``value`` (it overrides the spec), else the spec's ``field``."""
    return variable if variable and environ.get(variable) == value else field


async def check_account_resources(verda: VerdaClient, spec: DeploymentSpec, environ: Mapping[str, str]) -> None:
    """DeployError naming each setting whose registry credential or shared (SFS) volume the account lacks (GET
    /container-registry-credentials, GET /volumes): Verda refuses them only at the deployment's create or update,
    after the secrets were made."""
    problems = []
    name = spec.deployment.registry_credentials
    credentials = await _listed(verda.list_registry_credentials(), "the registry credential") if name else None
    if name and credentials is not None and name not in credentials:
        field = _overriding(environ, "VERDA_REGISTRY_CREDENTIALS", name, "deployment.registry_credentials")
        problems.append(f"{field}: Verda has no registry credential {name!r} (GET /container-registry-credentials); "
                        "create it in the console (Containers > Registry credentials) or correct the name")
    shared = [(index, mount) for index, mount in enumerate(spec.volume_mounts) if mount.type == "shared"]
    volumes = await _listed(verda.list_volumes(), "the shared volumes") if shared else None
    for index, mount in shared if volumes is not None else ():
        field = _overriding(environ, SHARED_VOLUME_ENVS.get(mount.mount_path), mount.volume_id,
                            f"volume_mounts.{index}.volume_id")
        kind = volumes.get(mount.volume_id or "")
        if kind is None:
            problems.append(f"{field}: Verda has no volume {mount.volume_id!r} (GET /volumes), for the shared mount at "
                            f"{mount.mount_path}; give the id of an SFS volume of this account")
        elif kind in BLOCK_VOLUME_TYPES:
            problems.append(f"{field}: volume {mount.volume_id!r} is of type {shown(kind)}, not a shared filesystem "
                            f"({SFS_VOLUME_TYPE}), which a container cannot mount at {mount.mount_path}")
    if problems:
        raise DeployError("\n".join([*problems, "nothing was written"]))


async def print_state(verda: VerdaClient, name: str) -> int:
    """Print status, scaling bounds and replicas; the number of replicas."""
    print(f"status: {shown(await verda.get_status(name))}")
    scaling = await verda.get_scaling_options(name)
    print(f"scaling: min {scaling.get('min_replica_count')} max {scaling.get('max_replica_count')}")
    replicas = await verda.get_replicas(name)
    print(f"replicas: {len(replicas)}")
    for replica in replicas:
        since = replica.started_at.isoformat() if replica.started_at else "?"
        print(f"  {shown(replica.id)} {shown(replica.status)} since {since}")
    return len(replicas)


async def create(verda: VerdaClient, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(Verda's answer, True) once created; or, when another deploy created it since this one looked (409), (the
    deployment read once more, False): the caller updates it to this spec, so that the last deploy's is applied."""
    name = body["name"]
    try:
        created = await verda.create_deployment(body)
    except VerdaAPIError as error:
        if not _already_exists(error) or (live := await verda.find_deployment(name)) is None:
            raise
        print(f"deployment {name}: {RACED}; updating it to this spec")
        return live, False
    print(f"deployment {name}: created")
    return created, True


async def update(verda: VerdaClient, body: dict[str, Any], live: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Change only what differs from the spec; (the deployment as Verda answered, whether replicas are replaced)."""
    name = body["name"]
    replaced = False
    changes = deployment_changes(body, live)
    if changes:
        described = describe_changes(changes, live)
        live = await verda.update_deployment(name, changes) or live
        print(f"deployment {name}: updated ({described})")
        replaced = bool(changes.keys() & REPLICA_RESTARTING_KEYS)
    else:
        print(f"deployment {name}: unchanged")
    scaling = scaling_changes(body["scaling"], await verda.get_scaling_options(name))
    if scaling:
        await verda.update_scaling(name, scaling)
        print(f"scaling: updated ({', '.join(scaling)})")
    else:
        print("scaling: unchanged")
    return live, replaced


async def apply(verda: VerdaClient, spec: DeploymentSpec, environ: Mapping[str, str]) -> None:
    """Create the deployment, or change only what differs from the spec; print what was done."""
    body = build_body(spec)
    name = body["name"]
    live = await verda.find_deployment(name)
    if live is not None:
        check_updatable(body, live)
    if live is None or not _covers(live.get("compute"), body["compute"]):
        await check_compute(verda, spec, environ)
    await check_account_resources(verda, spec, environ)
    await ensure_secrets(verda, spec, environ)
    created = False
    if live is None:
        live, created = await create(verda, body)
    replaced = False
    if not created:
        live, replaced = await update(verda, body, live)
    if endpoint := live.get("endpoint_base_url"):
        print(f"endpoint: {shown(endpoint)}")
    if await print_state(verda, name) and replaced:
        print(REPLACED_REPLICAS)


async def delete(verda: VerdaClient, name: str) -> None:
    if await verda.find_deployment(name) is None:
        print(f"deployment {name}: not found, nothing to delete")
        return
    print(f"deployment {name}: deleting (waiting until Verda no longer lists it)")
    await verda.delete_deployment(name)
    print(f"deployment {name}: deleted (secrets kept)")


HAS_CONSOLE = True  # --console prints the walkthrough values (scaler/deploy/verda_console.py)

# The deploy's own variables; the spec adds its overrides (spec.ENV_OVERRIDES, SHARED_VOLUME_ENVS) and the
# container variables taken from the environment (env_from_environment, [secrets]).
CLIENT_ENV = ("VERDA_CLIENT_ID", "VERDA_CLIENT_SECRET", "VERDA_API_URL")
DEPLOY_VARIABLES = (*SPEC_VARIABLES, *CLIENT_ENV)


def make_client(environ: Mapping[str, str]) -> VerdaClient:
    missing = "set VERDA_CLIENT_ID and VERDA_CLIENT_SECRET (Verda console > API keys)"
    client_secret = credential(environ, "VERDA_CLIENT_SECRET", missing)
    client_id = credential(environ, "VERDA_CLIENT_ID", missing, secret=False)
    base_url = check_api_url("VERDA_API_URL", environ.get("VERDA_API_URL") or DEFAULT_BASE_URL)
    return VerdaClient(client_id, client_secret, base_url=base_url)


async def run(
    args: argparse.Namespace, name: str, spec: DeploymentSpec | None, environ: Mapping[str, str], client: VerdaClient
) -> None:
    async with client as verda:
        if spec is not None:
            await apply(verda, spec, environ)
        elif args.action == "status":
            if await verda.find_deployment(name) is None:
                raise DeployError(f"deployment {name} does not exist; run ./deploy-serverless.sh to create it")
            await print_state(verda, name)
        else:
            await delete(verda, name)


RUN_AGAIN = "run the same command again later: it sends only what is missing"
# Verda refused a step of apply that the checks here cannot foresee (say, an SFS volume id or a registry credential
# the account does not have): the secrets made before it stay, and a run after the fix reuses them.
REFUSED_PART_WAY = (
    "what is printed above was done and stays (a secret created is reused, its value as it is): fix what Verda "
    "names and run the same command again, it sends only what is missing"
)


def _explain(error: VerdaAPIError, applying: bool) -> str:
    if error.retryable:
        return f"{error}; Verda is failing after retries: {RUN_AGAIN}"
    if applying and error.status != 401:
        return f"{error}; {REFUSED_PART_WAY}"
    return str(error)


def short_secret_values(spec: DeploymentSpec, environ: Mapping[str, str]) -> list[str]:
    """A line per [secrets] entry whose value, which a Verda secret is created from, is too short for the logs to
    mask (secret_length_problem): a Verda error quoting it would print it in clear. The value is never quoted."""
    return [f"secrets.{name}: ${name} {problem}" for name in spec.secrets
            if environ.get(name) and (problem := secret_length_problem(environ[name]))]


def mask_secret_values(spec: DeploymentSpec, environ: Mapping[str, str]) -> None:
    """Every value a Verda secret may be created from ([secrets], a URL with credentials moved there) is masked in
    what is printed and logged, as the client secret is: Verda's error may quote what was sent."""
    for env_name in spec.secrets:
        register_secret(environ.get(env_name))


def load(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, DeploymentSpec | None]:
    """(the deployment's name, the spec checked whole); the spec is None for `status` and `delete`, which need
    the name alone. SpecError for each problem found, a misspelt deploy variable too."""
    path = args.spec or DEFAULT_SPEC_PATH
    with refusing_misspelt(environ, DEPLOY_VARIABLES):
        if args.action != "apply":
            return deployment_name(path, environ), None
        spec = load_spec(path, environ)
        problems = unmounted_folders(spec) + queue_url_problems(spec, environ) + short_secret_values(spec, environ)
        if problems:
            raise SpecError(problems)
    mask_secret_values(spec, environ)
    return spec.deployment.name, spec


async def deploy(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        name, spec = load(args, environ)
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    if options_misused(
        args, f"removes deployment {name} and stops its running replicas now, busy ones "
        "included (a worker that gets SIGTERM in time hands its job back)"):
        return EXIT_USAGE
    if args.console and spec is not None:
        print("\n".join(console_lines(spec)))
        return EXIT_OK
    if args.dry_run and spec is not None:
        print(json.dumps(build_body(spec), indent=2))
        for env_name, secret_name in spec.secrets.items():
            print(f"# secret {secret_name} (env {env_name}) is created from ${env_name} if missing", file=sys.stderr)
        return EXIT_OK
    try:
        client = make_client(environ)
    except DeployError as error:  # a deploy variable: as invalid as the spec, and nothing was sent
        print_error(error)
        return EXIT_USAGE
    try:
        await run(args, name, spec, environ, client)
    except (DeployError, AnswerTooLarge) as error:
        print_error(error)
        return EXIT_FAILED
    except VerdaAPIError as error:
        print_error(_explain(error, applying=spec is not None))
        return EXIT_FAILED
    except TimeoutError as error:
        print_error(f"{error}; run `./deploy-serverless.sh status` later")
        return EXIT_FAILED
    except httpx.HTTPError as error:
        print_error(f"{unreachable('Verda', error)}; {RUN_AGAIN}")
        return EXIT_FAILED
    return EXIT_OK

