"""Deploy the worker to RunPod pods (`python -m scaler.deploy --provider runpod`).

RunPod has no deployment object to create for pods: the scaler creates and terminates one pod per replica
from the body built here, out of the same spec as Verda (image, env, secrets) plus its `[runpod]` table.
So `apply` checks what a pod needs before the scaler asks for one (the API key, the GPU type and its
price, the network volume and its data centre) and shows the pods running; `--dry-run` prints the exact
POST /v2/pods body; `status` lists the pods; `delete --yes` terminates them all (the volume is kept).
Secrets are never sent: the pod env refers to a RunPod secret of the spec's name, `{{ RUNPOD_SECRET_<name> }}`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.http_answers import AnswerTooLarge
from common.logs import error_text
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
    given_deployment_name,
    load_spec,
    no_blank_ends,
    not_digits,
    refusing_misspelt,
    text_problems,
)
from scaler.providers.runpod.backend import NAME_RULE, RunPodBackend
from scaler.providers.runpod.client import DEFAULT_BASE_URL, RunPodAPIError, RunPodClient
from scaler.providers.runpod.health import PROXY_HEALTH_URL, PodHealthProbe

INFERENCE_PROVIDER = "runpod-pod"
# Environment variable -> field of the [runpod] table it overrides.
ENV_OVERRIDES = {
    "RUNPOD_GPU": "gpu",
    "RUNPOD_GPU_COUNT": "gpu_count",
    "RUNPOD_CLOUD": "cloud",
    "RUNPOD_VOLUME_ID": "volume_id",
    "RUNPOD_DATA_CENTER_IDS": "data_center_ids",
    "RUNPOD_REGISTRY": "registry",
}
# Variables read besides the overrides: the key, and where the API and the pods' proxied /health are.
CLIENT_ENV = ("RUNPOD_API_KEY", "RUNPOD_API_URL", "RUNPOD_HEALTH_URL")
# Every variable the deploy reads: the spec's (VERDA_IMAGE and the others load_spec reads), then RunPod's.
DEPLOY_VARIABLES = (*SPEC_VARIABLES, *ENV_OVERRIDES, *CLIENT_ENV)
UNUSED_ON_RUNPOD = "unused-on-runpod"
# GPUs per pod: RunPod's hosts hold a handful (8 at most as offered); twice that leaves room, and a count past it is
# a typo (100000 was "ready" at $69000.00/h per pod; 1e400 an OverflowError traceback, the price per pod).
MAX_GPUS_PER_POD = 16
# The container disk, wiped with the pod (models are on the network volume): 50 GB by default; past 2000 GB a typo,
# which RunPod either refuses (a 400, read as a capacity refusal) or bills.
MAX_DISK_GB = 2000


class RunPodSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str = Field(min_length=1)
    gpu_count: int = Field(default=1, ge=1, le=MAX_GPUS_PER_POD)
    cloud: Literal["SECURE", "COMMUNITY"] = "SECURE"
    disk_gb: int = Field(default=50, ge=1, le=MAX_DISK_GB)
    volume_id: str = Field(default="", validate_default=True)
    volume_path: str = Field(default="/runpod-volume", pattern=r"^/[^\s]*$")
    data_center_ids: list[str] = Field(default=[], validate_default=True)
    registry: str = ""

    @field_validator("gpu")
    @classmethod
    def _no_blank_ends(cls, value: str) -> str:
        return no_blank_ends(value, "RunPod has no such GPU type (its ids: GET /v2/catalog/gpus)")

    @field_validator("volume_id")
    @classmethod
    def _volume_given(cls, value: str) -> str:
        if not value:
            raise ValueError("required: the network volume with models/ and outputs/ (RUNPOD_VOLUME_ID)")
        return no_blank_ends(value, "RunPod has no such network volume (its ids: console > Storage)")

    @field_validator("registry")
    @classmethod
    def _registry_no_blank_ends(cls, value: str) -> str:
        if not value:  # a public image
            return value
        return no_blank_ends(
            value, "RunPod has no such registry credential (its ids: console > Settings > Container Registry Auth)")

    @field_validator("data_center_ids")
    @classmethod
    def _place_given(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("required: the data centre of the volume (RUNPOD_DATA_CENTER_IDS)")
        return value


def load_runpod_spec(path: Path, environ: Mapping[str, str]) -> tuple[DeploymentSpec, RunPodSettings]:
    """The shared spec and its validated [runpod] table; SpecError names each field at fault."""
    # The Verda volume mounts are not used on RunPod (one network volume instead): do not demand their ids.
    # Empty, as unset (an env file shared with a Verda deploy): it replaced the placeholder, and was asked for.
    verda_volumes = {
        variable: UNUSED_ON_RUNPOD for variable in SHARED_VOLUME_ENVS.values() if not environ.get(variable)
    }
    spec = load_spec(path, {**environ, **verda_volumes})
    if spec.runpod is None:
        raise SpecError([f"runpod: {path} has no [runpod] table (see docs/providers.md)"])
    raw = dict(spec.runpod)
    # An empty variable is unset, as on Verda: RUNPOD_REGISTRY= made a private image public.
    overridden = {key: variable for variable, key in ENV_OVERRIDES.items() if environ.get(variable)}
    for key, variable in overridden.items():
        value = environ[variable]
        raw[key] = [part.strip() for part in value.split(",") if part.strip()] if key == "data_center_ids" else value
    problems = text_problems(raw, "runpod") + not_digits(environ, ("RUNPOD_GPU_COUNT",))
    if not NAME_RULE.fullmatch(spec.deployment.name):
        problems.append("deployment.name: pod names on RunPod take at most 54 characters of [a-z0-9-]")
    try:
        settings = RunPodSettings.model_validate(raw)
    except ValidationError as error:
        named = {problem.split(":")[0] for problem in problems}  # a line break ends in a space too: said once
        for item in error.errors():
            where = f"runpod{''.join('.' + str(part) for part in item['loc'])}"
            source = f" (from {overridden[item['loc'][0]]})" if item["loc"] and item["loc"][0] in overridden else ""
            if where not in named:
                problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')}{source}")
    if problems:
        raise SpecError(problems)
    return spec, settings


def secret_reference(secret_name: str) -> str:
    return f"{{{{ RUNPOD_SECRET_{secret_name} }}}}"


def build_pod_body(spec: DeploymentSpec, settings: RunPodSettings) -> dict[str, Any]:
    """The POST /v2/pods body for one replica, without its `name` (the backend names each pod)."""
    env = {**spec.env, **spec.resolved_env}
    env.update({env_name: secret_reference(secret) for env_name, secret in spec.secrets.items()})
    env.update(
        {
            "MODELS_DIR": f"{settings.volume_path}/models",
            "OUTPUTS_PATH": f"{settings.volume_path}/outputs",
            "INFERENCE_PROVIDER": INFERENCE_PROVIDER,
        }
    )
    if spec.env.get("COMFYUI_INPUT_DIR"):  # the uploads Verda mounts on a volume of their own
        env["COMFYUI_INPUT_DIR"] = f"{settings.volume_path}/inputs"
    ports = sorted({spec.deployment.exposed_port, spec.deployment.healthcheck_port})
    body: dict[str, Any] = {
        "image": spec.deployment.image,
        "gpu": {"id": settings.gpu, "count": settings.gpu_count},
        "cloud": settings.cloud,
        "disk": settings.disk_gb,
        "ports": [f"{port}/http" for port in ports],
        "env": env,
        "mounts": {"network": [{"volumeId": settings.volume_id, "path": settings.volume_path}]},
        "dataCenterIds": list(settings.data_center_ids),
    }
    if settings.registry:
        body["registry"] = settings.registry
    return body


# RunPod sets these in every pod, about that pod (docs.runpod.io, Pods > Environment variables, "Runpod-provided
# variables"), and the deploy reads the same names as its own settings.
POD_PRESETS = ("RUNPOD_API_KEY", "RUNPOD_GPU_COUNT", "RUNPOD_VOLUME_ID")
INSIDE_A_POD = (
    "RUNPOD_POD_ID is set: this runs inside a RunPod pod, where RunPod sets " + ", ".join(POD_PRESETS) + " (a key "
    "scoped to that pod, its GPU count, its volume), names the deploy reads as its own: it would create pods with "
    "that pod's values. Run the RunPod deploy and the scaler on another machine (a small VM, your own)"
)


def refuse_inside_a_pod(environ: Mapping[str, str]) -> None:
    """DeployError inside a RunPod pod (RUNPOD_POD_ID set): its preset variables would be taken as the deploy's."""
    if "RUNPOD_POD_ID" in environ:
        raise DeployError(INSIDE_A_POD)


def make_client(environ: Mapping[str, str]) -> RunPodClient:
    api_key = credential(environ, "RUNPOD_API_KEY", "set RUNPOD_API_KEY (RunPod console > Settings > API Keys)")
    base_url = check_api_url("RUNPOD_API_URL", environ.get("RUNPOD_API_URL", DEFAULT_BASE_URL))
    return RunPodClient(api_key, base_url=base_url)


def health_url(environ: Mapping[str, str]) -> str:
    """RUNPOD_HEALTH_URL (RunPod's proxy when unset): a template the probe fills with each pod's {pod_id} and {port}.
    DeployError naming it otherwise: any other brace made every observe a traceback (KeyError, IndexError), and
    without {pod_id} every pod's /health was asked at the one address."""
    url = environ.get("RUNPOD_HEALTH_URL", PROXY_HEALTH_URL)
    try:
        url.format(pod_id="pod", port=8000)
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        raise DeployError(f"RUNPOD_HEALTH_URL: {type(error).__name__} {error}: only {{pod_id}} and {{port}} may "
                          f"stand in braces (as in {PROXY_HEALTH_URL})") from None
    if "{pod_id}" not in url:
        raise DeployError(f"RUNPOD_HEALTH_URL: names no {{pod_id}}: every pod's /health would be asked at one "
                          f"address (as in {PROXY_HEALTH_URL})")
    return url


def make_backend(
    runpod: RunPodClient, spec: DeploymentSpec, settings: RunPodSettings, environ: Mapping[str, str]
) -> RunPodBackend:
    health = PodHealthProbe(health_url(environ), port=spec.deployment.healthcheck_port)
    return RunPodBackend(runpod, spec.deployment.name, build_pod_body(spec, settings), health=health)


def backend_from_spec(path: Path, environ: Mapping[str, str]) -> RunPodBackend:
    """The scaler's RunPod backend for the deployment in the spec at ``path`` (close it with ``aclose``). A
    misspelt variable is refused, as by the deploy: the scaler would create pods with the spec's value instead;
    so is a run inside a RunPod pod (refuse_inside_a_pod)."""
    refuse_inside_a_pod(environ)
    with refusing_misspelt(environ, DEPLOY_VARIABLES):
        spec, settings = load_runpod_spec(path, environ)
    health_url(environ)  # before the client, which make_backend would otherwise leave open
    return make_backend(make_client(environ), spec, settings, environ)


def pod_name_prefix(path: Path, environ: Mapping[str, str]) -> str:
    """The name this deployment's pods carry (``<name>-<8 hex>``), as load_runpod_spec reads it:
    VERDA_DEPLOYMENT_NAME, else the spec's deployment.name. Nothing else of the spec is read or checked."""
    name, where = given_deployment_name(path, environ)
    if name is None:
        raise SpecError([f"{where}: required: RunPod's pods are named after it (or set VERDA_DEPLOYMENT_NAME)"])
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise SpecError([f"{where}: {name!r} is no pod name: at most 54 characters of [a-z0-9-]"])
    return name


def stop_backend_from_spec(path: Path, environ: Mapping[str, str]) -> RunPodBackend:
    """A backend for the kill switch only (apply(0), pause, observe): it needs the API key and the pods' name,
    so a spec whose image, env or [runpod] table is unset or broken cannot keep the pods running. Its pod body
    is empty: it cannot create a pod (RunPod would refuse the body)."""
    name = pod_name_prefix(path, environ)
    try:
        url = health_url(environ)
    except DeployError:  # pods are stopped whatever their /health: a broken template must not keep them running
        url = PROXY_HEALTH_URL
    return RunPodBackend(make_client(environ), name, {}, health=PodHealthProbe(url))


async def check_placement(runpod: RunPodClient, settings: RunPodSettings) -> None:
    """What a create needs and the API can tell beforehand: the GPU type, its price, the volume's data centre."""
    try:
        price = await runpod.gpu_price_per_hour(settings.gpu, cloud=settings.cloud)
    except RunPodAPIError as error:
        if error.status == 404:
            raise DeployError(f"runpod.gpu: RunPod has no GPU type {settings.gpu!r} (GET /v2/catalog/gpus)") from None
        raise
    except LookupError as error:
        raise DeployError(f"runpod.cloud: {error}") from None
    print(f"gpu: {settings.gpu} x{settings.gpu_count}, {settings.cloud}: ${price * settings.gpu_count:.2f}/h per pod")
    try:
        volume = await runpod.get_network_volume(settings.volume_id)
    except RunPodAPIError as error:
        if error.status == 404:
            raise DeployError(f"runpod.volume_id: network volume {settings.volume_id!r} not found") from None
        raise
    data_center = volume.get("dataCenter")
    if data_center not in settings.data_center_ids:
        raise DeployError(
            f"runpod.data_center_ids: volume {settings.volume_id} is in {shown(data_center)}, not in"
            f" {settings.data_center_ids}; pods must start where their volume is"
        )
    print(f"volume: {settings.volume_id} ({shown(volume.get('size'))} GB) in {shown(data_center)},"
          f" mounted at {settings.volume_path}")


async def print_pods(backend: RunPodBackend) -> None:
    # The listing alone: observed, every RUNNING pod's /health was asked too, on port 8000 whatever the spec's.
    pods = await backend.client.list_pods(backend.own)
    print(f"pods: {sum(pod.live for pod in pods)} live (the scaler creates and terminates them)")
    for pod in pods:
        since = pod.created_at.isoformat() if pod.created_at else "?"
        print(f"  {shown(pod.id)} {shown(pod.name)} {shown(pod.status)} ${pod.cost_per_hour:.2f}/h since {since}")


Loaded = tuple[DeploymentSpec, RunPodSettings]


async def run(
    args: argparse.Namespace, name: str, loaded: Loaded | None,
    environ: Mapping[str, str], client: RunPodClient,
) -> None:
    if loaded is None:  # status, delete: the pods are found by their name; none is created
        backend = RunPodBackend(client, name, {}, health=PodHealthProbe(health_url(environ)))
    else:
        backend = make_backend(client, *loaded, environ)
    try:
        if loaded is not None:
            spec, settings = loaded
            await check_placement(backend.client, settings)
            for env_name, secret in spec.secrets.items():
                print(f"secret {secret}: pods read {env_name} from it; create it in the RunPod console if missing")
            print(f"deployment {spec.deployment.name}: ready for the scaler (no pod is created here)")
            await print_pods(backend)
        elif args.action == "status":
            await print_pods(backend)
        else:
            try:
                await backend.apply(0)  # a stop first: each worker gets its SIGTERM and hands its job back
            except (RunPodAPIError, AnswerTooLarge, httpx.HTTPError) as error:
                # A stop refused must not keep the pod from its DELETE below: the delete failed there at every run.
                print_error(f"{error_text(error)}: the pods left live are terminated without their stop")
            # A stop RunPod accepted but did not carry out leaves the pod live, stopped again at every run: terminated,
            # every one tried whichever fails.
            await backend.observe()
            await backend.terminate_live()
            left = (await backend.observe()).replicas
            if left:
                raise DeployError(f"{len(left)} pods still live after terminating: {[r.id for r in left]}")
            print(f"deployment {name}: every pod terminated (volume and secrets kept)")
    finally:
        await backend.aclose()


def load(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, Loaded | None]:
    """(the pods' name, the spec and its [runpod] table checked whole); None for `status` and `delete`, which need
    the name alone (they refused to run until the image, the volume, its data centre and the queue's URL were set).
    SpecError for each problem found, a misspelt deploy variable too, and a queue URL no pod can use (the scaler's
    backend_from_spec does not check it: its tests run pods against a queue on loopback)."""
    path = args.spec or DEFAULT_SPEC_PATH
    with refusing_misspelt(environ, DEPLOY_VARIABLES):
        if args.action != "apply":
            return pod_name_prefix(path, environ), None
        spec, settings = load_runpod_spec(path, environ)
        problems = queue_url_problems(spec, environ)
        if problems:
            raise SpecError(problems)
    return spec.deployment.name, (spec, settings)


async def deploy(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        refuse_inside_a_pod(environ)
        name, loaded = load(args, environ)
    except SpecError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except DeployError as error:  # inside a RunPod pod
        print_error(str(error))
        return EXIT_USAGE
    if options_misused(
        args, f"terminates every pod of {name} now, busy ones included (the network volume is kept)"):
        return EXIT_USAGE
    if args.dry_run and loaded is not None:
        spec, settings = loaded
        body = {"name": f"{spec.deployment.name}-<8 hex digits, one per pod>", **build_pod_body(spec, settings)}
        print(json.dumps(body, indent=2))
        for env_name, secret in spec.secrets.items():
            print(f"# {env_name} is read from the RunPod secret {secret!r}; create it in the console", file=sys.stderr)
        return EXIT_OK
    try:
        health_url(environ)
        client = make_client(environ)
    except DeployError as error:  # a deploy variable: as invalid as the spec, and nothing was sent
        print_error(error)
        return EXIT_USAGE
    try:
        await run(args, name, loaded, environ, client)
    except (DeployError, RunPodAPIError, AnswerTooLarge) as error:
        print_error(error)
        return EXIT_FAILED
    except httpx.HTTPError as error:
        print_error(unreachable("RunPod", error))
        return EXIT_FAILED
    return EXIT_OK
