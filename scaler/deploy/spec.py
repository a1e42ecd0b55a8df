"""The deployment spec (verda/deployment.toml): load, apply environment overrides, validate, build Verda's body.

Validation happens here, before any API call, and every message names the spec field at fault.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import tomllib
import unicodedata
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PosixPath, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from common.settings import QUEUE_WORKER_TOKEN_ENV, misspelling_of, quoted
from common.small_files import FileTooLarge, NotARegularFile, read_small_file
from common.text import encodes_as_utf8
from common.timespans import DAY_S
from common.urls import (
    is_secret_parameter,
    queue_token_clash,
    url_has_credentials,
)
from scaler.deploy.container_env import (
    DEFAULT_HEALTH_PORT,
    DEFAULT_OUTPUTS_PATH,
    container_env_problems,
    misspelt_problems,
)
from scaler.policy import MAX_REPLICAS_LIMIT
from scaler.providers.verda.client import check_deployment_name

DEFAULT_SPEC_PATH = Path(__file__).resolve().parents[2] / "verda" / "deployment.toml"
NAME_RULE = re.compile(r"^[a-z0-9-]{1,63}$")  # Verda secret names
ENV_NAME_RULE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# Docker reference without tag/digest: optional registry host[:port], then lowercase path components.
_PATH_COMPONENT = r"[a-z0-9]+([._-][a-z0-9]+)*"
IMAGE_REPOSITORY_RULE = re.compile(rf"^([A-Za-z0-9.-]+(:[0-9]+)?/)?{_PATH_COMPONENT}(/{_PATH_COMPONENT})*$")
IMAGE_TAG_RULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
SHM_PATH = "/dev/shm"  # noqa: S108 - Verda mounts memory volumes here; not a temporary file

# Environment variable -> (section, field) of the spec it overrides.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "VERDA_DEPLOYMENT_NAME": ("deployment", "name"),
    "VERDA_IMAGE": ("deployment", "image"),
    "VERDA_REGISTRY_CREDENTIALS": ("deployment", "registry_credentials"),
    "VERDA_IS_SPOT": ("deployment", "is_spot"),
    "VERDA_COMPUTE": ("compute", "name"),
    "VERDA_COMPUTE_SIZE": ("compute", "size"),
    "VERDA_MIN_REPLICAS": ("scaling", "min_replica_count"),
    "VERDA_MAX_REPLICAS": ("scaling", "max_replica_count"),
}
# The overrides of a whole number, written in the digits 0-9 alone: pydantic reads "1_0" as 10, "5.0" as 5.
INTEGER_OVERRIDES = ("VERDA_COMPUTE_SIZE", "VERDA_MIN_REPLICAS", "VERDA_MAX_REPLICAS")
# Shared (SFS) mounts whose volume id comes from the deploy-time environment: the models, the outputs, which must
# outlive the replica that wrote them (a scratch disk goes with the replica on scale-down), and, when the spec
# mounts one, the files workflows load (COMFYUI_INPUT_DIR).
SHARED_VOLUME_ENVS = {
    "/models": "VERDA_MODELS_VOLUME_ID",
    "/outputs": "VERDA_OUTPUTS_VOLUME_ID",
    "/inputs": "VERDA_INPUTS_VOLUME_ID",
}
# The deploy variables load_spec reads, whichever the provider.
SPEC_VARIABLES = (*ENV_OVERRIDES, *SHARED_VOLUME_ENVS.values())
UNREAD_BY_THE_WORKER = (
    "the worker reads its token from QUEUE_MANAGER_TOKEN only, never from this variable (every replica would poll "
    "with no token, be refused and exit 2): take this entry out and give the queue manager's worker token as "
    "QUEUE_MANAGER_TOKEN, under [secrets]"
)
# Far above any name, id, URL or setting the spec carries: a longer value is a file pasted by mistake.
MAX_VALUE_CHARS = 32 * 1024
MAX_SPEC_BYTES = 1024 * 1024  # the spec file: the shipped one is 5 KB
# Bounds past any real setting (Verda documents none): a value beyond is a typo, refused naming its field before
# Verda sees it. GPUs per replica: Verda offers 1, 2, 4 or 8. A delay of more than a day; /dev/shm of 1 TiB.
MAX_GPUS_PER_REPLICA = 16
MAX_DELAY_S = int(DAY_S)
MAX_MEMORY_MB = 1024 * 1024
_INTEGER = TypeAdapter(int)  # a setting's integer, read as the worker's settings read it


class SpecError(ValueError):
    """The spec is invalid; `problems` lists "field: what is wrong" lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid deployment spec:\n  " + "\n  ".join(problems))
        self.problems = problems


def misspelt_variables(environ: Mapping[str, str], known: Collection[str]) -> list[str]:
    """A line per variable of ``environ`` one typo away from one of ``known``, the variables a deploy reads: it
    would be ignored and the spec's value deployed in its place (VERDA_COMPUTER=A100 deployed the spec's H100,
    exit 0). The deploy reads its variables as written, so a lower-case one is a typo too."""
    near = {variable: variable.upper() if variable.upper() in known else misspelling_of(variable, set(known))
            for variable in environ if variable not in known}
    return [f"{variable}: the deploy reads no variable of this name (the spec's value would be deployed instead):"
            f" did you mean {name}?" for variable, name in sorted(near.items()) if name]


@contextmanager
def refusing_misspelt(environ: Mapping[str, str], known: Collection[str]) -> Iterator[None]:
    """Around a deploy's loading of its spec: SpecError with a line per misspelt variable (misspelt_variables)
    added to the problems the load found, or alone when it found none."""
    misspelt = misspelt_variables(environ, known)
    try:
        yield
    except SpecError as error:
        raise SpecError(error.problems + misspelt) from None
    if misspelt:
        raise SpecError(misspelt)


def check_env_name(name: str) -> str:
    if not ENV_NAME_RULE.fullmatch(name):
        raise ValueError(f"env name {name!r} must match ^[A-Z_][A-Z0-9_]*$")
    return name


def check_pinned_image(image: str) -> str:
    reference, _, digest = image.partition("@")
    if digest:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError("image digest must be sha256:<64 hex>")
        repository, tag = reference, None
    else:
        last = reference.rsplit("/", 1)[-1]
        if ":" not in last:
            raise ValueError(f"image {image!r} has no tag: pin a version tag such as :1.2.3")
        repository, _, tag = reference.rpartition(":")
    if tag is not None and (tag == "latest" or not IMAGE_TAG_RULE.fullmatch(tag)):
        raise ValueError(f"image tag {tag!r} is not a pinned version tag (no :latest)")
    if not IMAGE_REPOSITORY_RULE.fullmatch(repository):
        raise ValueError(f"image repository {repository!r} is not a valid lowercase reference (placeholder OWNER?)")
    return image


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeploymentSection(_Section):
    name: str
    image: str
    registry_credentials: str = ""
    exposed_port: int = Field(ge=1, le=65535)
    healthcheck_port: int = Field(ge=1, le=65535)
    healthcheck_path: str = Field(pattern=r"^/")
    is_spot: bool = False

    @field_validator("name")
    @classmethod
    def _name_rule(cls, value: str) -> str:
        return check_deployment_name(value)

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        return check_pinned_image(value)


def no_blank_ends(value: str, none_such: str) -> str:
    """A provider's name or id (Verda's "General Compute", a RunPod GPU id, volume id or registry credential) may hold
    spaces, never at either end: such a value is a paste. ValueError saying so and ``none_such``."""
    if value != value.strip():
        raise ValueError(f"blank, or a space at either end: {none_such}")
    return value


class ComputeSection(_Section):
    name: str = Field(min_length=1)
    size: int = Field(ge=1, le=MAX_GPUS_PER_REPLICA)

    @field_validator("name")
    @classmethod
    def _no_blank_ends(cls, value: str) -> str:
        return no_blank_ends(value, "Verda has no such compute (its names: GET /serverless-compute-resources)")


class ScalingSection(_Section):
    min_replica_count: int = Field(ge=0)
    max_replica_count: int = Field(ge=1, le=MAX_REPLICAS_LIMIT)  # more than the scaler can ever drive
    scale_down_delay_seconds: int = Field(ge=0, le=MAX_DELAY_S)
    scale_up_delay_seconds: int = Field(ge=0, le=MAX_DELAY_S)
    queue_message_ttl_seconds: int = Field(ge=1)
    concurrent_requests_per_replica: int = Field(ge=1)
    queue_load_threshold: int = Field(ge=1)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ScalingSection:
        if self.min_replica_count > self.max_replica_count:
            raise ValueError("min_replica_count must not exceed max_replica_count")
        return self


class VolumeMount(_Section):
    type: Literal["scratch", "memory", "shared", "secret"]
    mount_path: str = Field(pattern=r"^/")
    volume_id: str | None = None
    size_in_mb: int | None = Field(default=None, ge=1, le=MAX_MEMORY_MB)
    secret_name: str | None = None

    @model_validator(mode="after")
    def _type_rules(self) -> VolumeMount:
        if self.type == "memory" and (self.mount_path != SHM_PATH or self.size_in_mb is None):
            raise ValueError("memory mounts need mount_path /dev/shm and size_in_mb")
        if self.type == "shared" and not self.volume_id:
            variable = SHARED_VOLUME_ENVS.get(self.mount_path)
            hint = f" (set {variable})" if variable else ""
            raise ValueError(f"volume_id is required for the shared mount at {self.mount_path}{hint}")
        if self.type == "secret" and not self.secret_name:
            raise ValueError("secret mounts need secret_name")
        return self


class EnvFromEnvironment(_Section):
    names: list[str] = []

    @field_validator("names")
    @classmethod
    def _names_rule(cls, names: list[str]) -> list[str]:
        return [check_env_name(name) for name in names]


class DeploymentSpec(_Section):
    deployment: DeploymentSection
    compute: ComputeSection
    scaling: ScalingSection
    env: dict[str, str] = {}
    env_from_environment: EnvFromEnvironment = EnvFromEnvironment()
    secrets: dict[str, str] = {}  # container env var name -> Verda secret name
    volume_mounts: list[VolumeMount] = []
    runpod: dict[str, Any] | None = None  # RunPod's own settings, validated by scaler/deploy/runpod.py
    resolved_env: dict[str, str] = {}  # filled from the deploy-time environment by load_spec

    @field_validator("env", "secrets")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            check_env_name(name)
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: dict[str, str]) -> dict[str, str]:
        for env_name, secret_name in value.items():
            if not NAME_RULE.fullmatch(secret_name):
                raise ValueError(f"{env_name}: secret name {secret_name!r} must be 1-63 characters of [a-z0-9-]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentSpec:
        sources = [set(self.env), set(self.env_from_environment.names), set(self.secrets)]
        doubled = (sources[0] & sources[1]) | (sources[0] & sources[2]) | (sources[1] & sources[2])
        if doubled:
            raise ValueError(f"env names defined twice across env/env_from_environment/secrets: {sorted(doubled)}")
        # The worker listens where HEALTH_PORT says, on its default when the container is given none.
        container = {**self.env, **self.resolved_env}
        section = "env_from_environment" if "HEALTH_PORT" in self.resolved_env else "env"
        try:  # as the worker reads it: " 8000" and "8000.0" are 8000
            listens = _INTEGER.validate_python(container.get("HEALTH_PORT", DEFAULT_HEALTH_PORT))
        except ValidationError:  # refused by container_env_problems, as the worker would refuse it
            listens = self.deployment.healthcheck_port
        if listens != self.deployment.healthcheck_port:
            raise ValueError(f"{section}.HEALTH_PORT must equal deployment.healthcheck_port: the worker's health "
                             f"server listens on {listens} (HEALTH_PORT, default {DEFAULT_HEALTH_PORT}), Verda "
                             f"probes {self.deployment.healthcheck_port}: every replica would be unhealthy")
        host = container.get("HEALTH_HOST", "").strip()
        if host == "localhost" or _is_loopback_address(host):
            section = "env_from_environment" if "HEALTH_HOST" in self.resolved_env else "env"
            raise ValueError(f"{section}.HEALTH_HOST: {host} is the container's own loopback, and the health probe "
                             "comes from outside it: every replica would be unhealthy; leave HEALTH_HOST unset "
                             "(every address, 0.0.0.0)")
        return self


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def text_problem(value: str) -> str | None:
    """What makes ``value`` unfit to send, or None. The value itself is never quoted: it may be a secret."""
    if len(value) > MAX_VALUE_CHARS:
        return f"{len(value)} characters, more than {MAX_VALUE_CHARS}"
    if not encodes_as_utf8(value):
        return "not valid UTF-8 (bytes the environment could not decode)"
    control = next((char for char in value if unicodedata.category(char) == "Cc"), None)
    if control is not None:
        hint = " (a line break: a newline pasted with the value?)" if control in "\r\n" else ""
        return f"contains the control character U+{ord(control):04X}{hint}"
    return None


def text_problems(value: Any, where: str) -> list[str]:
    """ "where: problem" for every string in ``value`` (tables and lists walked) that text_problem refuses."""
    if isinstance(value, str):
        problem = text_problem(value)
        return [f"{where}: {problem}"] if problem else []
    if isinstance(value, dict):
        return [line for key, item in value.items() for line in text_problems(item, f"{where}.{key}".lstrip("."))]
    if isinstance(value, list):
        return [line for index, item in enumerate(value) for line in text_problems(item, f"{where}.{index}")]
    return []


def _format_errors(error: ValidationError, environ: Mapping[str, str]) -> list[str]:
    """A line per problem, naming its field, and the variable it came from when one overrode the spec's value: the
    spec file, which the operator reads first, may hold a good one (is_spot = false, VERDA_IS_SPOT=ture)."""
    overridden = {field: variable for variable, field in ENV_OVERRIDES.items() if environ.get(variable)}
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "spec"
        variable = overridden.get(tuple(item["loc"][:2]))
        source = f" (from {variable})" if variable else ""
        problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')}{source}")
    return problems


def _shape_problems(raw: dict[str, Any]) -> list[str]:
    """The sections read before validation, of the wrong kind: `deployment = "x"` where a table belongs, a name or
    a mount path that is not a string (each was a TypeError traceback: not iterable, unhashable)."""
    tables = {section for section, _ in ENV_OVERRIDES.values()} | {"env_from_environment", "env", "secrets"}
    problems = [f"{name}: must be a table" for name in sorted(tables) if not isinstance(raw.get(name, {}), dict)]
    source = raw.get("env_from_environment", {})
    names = source.get("names", []) if isinstance(source, dict) else []
    if not isinstance(names, list):
        problems.append("env_from_environment.names: must be a list")
    else:
        problems += [f"env_from_environment.names.{i}: must be a string" for i, n in enumerate(names)
                     if not isinstance(n, str)]
    mounts = raw.get("volume_mounts", [])
    if not isinstance(mounts, list):
        problems.append("volume_mounts: must be a list of tables")
    else:
        problems += [f"volume_mounts.{i}: must be a table" if not isinstance(m, dict) else
                     f"volume_mounts.{i}.mount_path: must be a string" for i, m in enumerate(mounts)
                     if not isinstance(m, dict) or not isinstance(m.get("mount_path", ""), str)]
    return problems


def _apply_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    # An empty variable is unset, as the scaler reads its own: the spec's value stays (VERDA_REGISTRY_CREDENTIALS=
    # from a shared env file deployed a private image as public).
    for variable, (section, key) in ENV_OVERRIDES.items():
        if environ.get(variable):
            raw.setdefault(section, {})[key] = environ[variable]
    for mount in raw.get("volume_mounts", []):
        variable = SHARED_VOLUME_ENVS.get(mount.get("mount_path", ""))
        if mount.get("type") == "shared" and variable and environ.get(variable):
            mount["volume_id"] = environ[variable]
    return raw


def not_digits(environ: Mapping[str, str], variables: Collection[str]) -> list[str]:
    """A line per variable of ``variables`` set in ``environ`` to anything but the digits 0-9: a whole number
    written otherwise ("1_0", " 5", "5.0", "+5") is a typo, which pydantic would read as another number."""
    return [f"{variable}: must be a whole number in the digits 0-9 alone (no _, sign, point or space)"
            for variable in variables if environ.get(variable) and not re.fullmatch(r"[0-9]+", environ[variable])]


def _credential_urls_to_secrets(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """A URL from the environment that carries a user or password (https://user:pass@…) must not sit in the
    deployment in clear: it becomes a secret env var, in a Verda secret named after the deployment and the
    variable (created from the variable's value when missing, like every [secrets] entry)."""
    source = raw.get("env_from_environment", {})
    deployment = str(raw.get("deployment", {}).get("name", "deployment"))
    names = source.get("names", [])
    moved = [n for n in names if isinstance(n, str) and url_has_credentials(environ.get(n, ""))]
    if moved:
        source["names"] = [n for n in names if n not in moved]
        secrets = raw.setdefault("secrets", {})
        for name in moved:
            secrets.setdefault(name, f"{deployment}-{name.lower().replace('_', '-')}"[:63].rstrip("-"))
    return raw


def _token_clash(raw: dict[str, Any], names: list[Any], environ: Mapping[str, str]) -> list[str]:
    """A worker given both QUEUE_MANAGER_TOKEN and a QUEUE_MANAGER_URL with a user or password refuses to start
    (the URL's would replace the token in the Authorization header): refused here, before anything is sent."""
    given = {*names, *raw.get("secrets", {}), *raw.get("env", {})}
    url = environ.get("QUEUE_MANAGER_URL") or str(raw.get("env", {}).get("QUEUE_MANAGER_URL", ""))
    clash = queue_token_clash(url) if "QUEUE_MANAGER_TOKEN" in given else None
    return [f"QUEUE_MANAGER_URL: {clash} (for the URL's, take QUEUE_MANAGER_TOKEN out of the spec)"] if clash else []


def _worker_token_entries(raw: dict[str, Any], names: list[Any]) -> list[str]:
    """The entries that give a replica QUEUE_MANAGER_WORKER_TOKEN, the queue manager's own variable: the worker
    reads its token from QUEUE_MANAGER_TOKEN alone, so every replica would poll with no token, be refused (401)
    and exit 2 ("QUEUE_MANAGER_TOKEN is unset"), restarted and billed meanwhile."""
    given = [("env", raw.get("env", {})), ("env_from_environment", names), ("secrets", raw.get("secrets", {}))]
    return [f"{section}.{QUEUE_WORKER_TOKEN_ENV}: {UNREAD_BY_THE_WORKER}" for section, entries in given
            if isinstance(entries, dict | list) and QUEUE_WORKER_TOKEN_ENV in entries]


def _secrets_in_plain_env(env: Any) -> list[str]:
    """The `[env]` entries that hold a secret written into the spec: a name like a secret's (HF_TOKEN) or a URL
    with a user, password or token in it. `[env]` is sent in clear (Verda's console shows it to every member of
    the project) and printed by --dry-run and --console; the value itself is never quoted."""
    if not isinstance(env, dict):
        return []
    clear = "its value would sit in the deployment in clear and show in --dry-run and --console"
    problems = [f"env.{name}: is named like a secret: {clear}; move it to [secrets] (a Verda secret made from "
                f"${name})" for name in env if is_secret_parameter(name) and name != QUEUE_WORKER_TOKEN_ENV]
    problems += [f"env.{name}: a URL with a user, password or token in it: {clear}; move {name} to "
                 "env_from_environment.names (the deploy makes it a Verda secret)"
                 for name, value in env.items()
                 if isinstance(value, str) and not is_secret_parameter(name) and url_has_credentials(value)]
    return problems


def _one_secret_two_values(secrets: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """A line per secret name that entries of [secrets] with different values in the environment share: the
    secret is made from the first, and each of them reads that one value (QUEUE_MANAGER_TOKEN got $HF_TOKEN)."""
    by_secret: dict[str, list[str]] = {}
    for env_name, secret_name in secrets.items():
        if isinstance(secret_name, str):
            by_secret.setdefault(secret_name, []).append(env_name)
    return [f"secrets: {' and '.join(sorted(names))} name the one secret {secret!r} and their values differ: each "
            "would read the value it is made from first; give each its own secret name"
            for secret, names in by_secret.items() if len({environ[n] for n in names if n in environ}) > 1]


class GivenSpec(PosixPath):
    """A spec file named by the deploy's --spec: an error about the file names the option."""


def shown_spec(path: Path) -> str:
    """The spec file as an error names it: shortened (a 100,000-character path was echoed twice), after --spec when
    it was named so."""
    return f"--spec {quoted(str(path))}" if isinstance(path, GivenSpec) else quoted(str(path))


def read_spec_file(path: Path) -> dict[str, Any]:
    """The TOML at ``path`` as written, nothing checked; SpecError naming the file when it cannot be read, or holds
    more than MAX_SPEC_BYTES (read whole, a 300 MB file took 674 MB; /dev/zero, memory without end), or is no
    regular file (opened without blocking: a FIFO held the open for good)."""
    try:
        data = read_small_file(path, MAX_SPEC_BYTES)
    except (IsADirectoryError, NotARegularFile):
        raise SpecError([f"{shown_spec(path)}: a directory, a FIFO or a device, not a file: no deployment spec"]
                        ) from None
    except FileTooLarge:
        raise SpecError([f"{shown_spec(path)}: more than {MAX_SPEC_BYTES} bytes: no deployment spec (the shipped one "
                         "is 5 KB)"]) from None
    except OSError as error:  # its text names the file again
        raise SpecError([f"{shown_spec(path)}: {error.strerror or error}"]) from None
    try:
        return tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise SpecError([f"{shown_spec(path)}: {error}"]) from None
    except RecursionError:
        raise SpecError([f"{shown_spec(path)}: nested deeper than the TOML parser reads"]) from None


def given_deployment_name(path: Path, environ: Mapping[str, str]) -> tuple[Any, str]:
    """The deployment's name as given, unchecked (VERDA_DEPLOYMENT_NAME, else the spec's deployment.name; None when
    neither), and where it was given; nothing else of the spec read or checked."""
    if environ.get("VERDA_DEPLOYMENT_NAME"):
        return environ["VERDA_DEPLOYMENT_NAME"], "VERDA_DEPLOYMENT_NAME"
    try:
        deployment = read_spec_file(path).get("deployment", {})
    except SpecError as error:
        raise SpecError([f"{problem}; or set VERDA_DEPLOYMENT_NAME to the deployment's name, which is read in place "
                         "of the file" for problem in error.problems]) from None
    if not isinstance(deployment, dict):
        raise SpecError([f"deployment: must be a table ({shown_spec(path)})"])
    return deployment.get("name"), f"deployment.name ({shown_spec(path)})"


def deployment_name(path: Path, environ: Mapping[str, str]) -> str:
    """The deployment's name as load_spec reads it, checked by Verda's rule: all `status` and `delete` need (they
    refused to run until the image, the volume ids and the queue's URL were set, none of which they send)."""
    name, where = given_deployment_name(path, environ)
    if not isinstance(name, str):
        raise SpecError([f"{where}: required, a string (or set VERDA_DEPLOYMENT_NAME)"])
    try:
        return check_deployment_name(name)
    except ValueError as error:
        raise SpecError([f"{where}: {error}"]) from None


def load_spec(path: Path, environ: Mapping[str, str]) -> DeploymentSpec:
    """Read the TOML spec, apply environment overrides and validate; raises SpecError naming each field."""
    raw = read_spec_file(path)
    shape = _shape_problems(raw)
    if shape:
        raise SpecError(shape)
    raw = _credential_urls_to_secrets(_apply_overrides(raw, environ), environ)
    names = raw.get("env_from_environment", {}).get("names", [])
    missing = [f"env_from_environment.{n}: required; set {n} in the environment" for n in names
               if not environ.get(n) and n != QUEUE_WORKER_TOKEN_ENV]
    # Checked before anything is sent: the spec's values, those read from the environment, and the values the
    # deploy may create secrets from (a newline pasted with a token would reach every worker's requests).
    secrets = raw.get("secrets", {})
    from_environment = {
        "env_from_environment": {n: environ[n] for n in names if isinstance(n, str) and n in environ},
        "secrets": {n: environ[n] for n in secrets if n in environ} if isinstance(secrets, dict) else {},
    }
    missing += text_problems(raw, "") + text_problems(from_environment, "") + _token_clash(raw, names, environ)
    missing += [f"env_from_environment.names: {n} is named like a secret: its value would sit in the deployment in "
                f"clear and show in --dry-run; list it under [secrets] instead (a Verda secret made from ${n})"
                for n in names if isinstance(n, str) and is_secret_parameter(n) and n != QUEUE_WORKER_TOKEN_ENV]
    missing += _secrets_in_plain_env(raw.get("env", {})) + _worker_token_entries(raw, names)
    missing += _one_secret_two_values(secrets, environ) + not_digits(environ, INTEGER_OVERRIDES)
    raw["resolved_env"] = {n: environ[n] for n in names if environ.get(n)}
    try:
        spec = DeploymentSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(_format_errors(error, environ) + missing) from None
    if missing:
        raise SpecError(missing)
    known_secrets = from_environment["secrets"]
    refused = misspelt_problems(
        {"env": spec.env, "env_from_environment": spec.env_from_environment.names, "secrets": spec.secrets})
    refused += container_env_problems({**spec.env, **spec.resolved_env, **known_secrets},
                                      unknown=set(spec.secrets) - set(known_secrets))
    if refused:
        raise SpecError(refused)
    return spec


def _on_shared_volume(spec: DeploymentSpec, folder: str) -> bool:
    path = PurePosixPath(posixpath.normpath(folder))  # the container's: "/outputs/../data" is /data
    return any(mount.type == "shared" and path.is_relative_to(mount.mount_path) for mount in spec.volume_mounts)


def env_section(spec: DeploymentSpec, variable: str) -> str:
    """The spec table that gives the container ``variable``: env_from_environment or env."""
    return "env_from_environment" if variable in spec.resolved_env else "env"


def unmounted_folders(spec: DeploymentSpec) -> list[str]:
    """On Verda, the container's folders that must lie on a shared volume the spec mounts: COMFYUI_INPUT_DIR (the
    replicas would exit 2 at start, nothing there) and OUTPUTS_PATH (elsewhere, the scratch disk or the image's own
    folder, every result is written, reported completed, and lost with its replica). A RunPod pod has both on its
    own network volume instead (build_pod_body)."""
    problems = []
    container = {**spec.env, **spec.resolved_env}
    inputs = container.get("COMFYUI_INPUT_DIR")
    if inputs and not _on_shared_volume(spec, inputs):
        problems.append(f"{env_section(spec, 'COMFYUI_INPUT_DIR')}.COMFYUI_INPUT_DIR: no shared volume is mounted at "
                        f"{inputs}: every replica would exit 2 at start; uncomment the [[volume_mounts]] for /inputs "
                        "(its id in VERDA_INPUTS_VOLUME_ID), or remove the setting")
    outputs = container.get("OUTPUTS_PATH", str(DEFAULT_OUTPUTS_PATH))
    if not _on_shared_volume(spec, outputs):
        problems.append(f"{env_section(spec, 'OUTPUTS_PATH')}.OUTPUTS_PATH: no shared volume is mounted at {outputs} "
                        f"(OUTPUTS_PATH, default {DEFAULT_OUTPUTS_PATH}): every result would be written to the "
                        "replica's own disk, reported completed, and lost with the replica; mount the outputs SFS "
                        "volume there (its id in VERDA_OUTPUTS_VOLUME_ID), or set OUTPUTS_PATH to a folder on it")
    return problems


def _env_entries(spec: DeploymentSpec) -> list[dict[str, str]]:
    plain = {**spec.env, **spec.resolved_env}
    entries = [{"name": n, "value_or_reference_to_secret": v, "type": "plain"} for n, v in plain.items()]
    entries += [{"name": n, "value_or_reference_to_secret": s, "type": "secret"} for n, s in spec.secrets.items()]
    return entries


def build_scaling(scaling: ScalingSection) -> dict[str, Any]:
    return {
        "min_replica_count": scaling.min_replica_count,
        "max_replica_count": scaling.max_replica_count,
        "scale_down_policy": {"delay_seconds": scaling.scale_down_delay_seconds},
        "scale_up_policy": {"delay_seconds": scaling.scale_up_delay_seconds},
        "queue_message_ttl_seconds": scaling.queue_message_ttl_seconds,
        "concurrent_requests_per_replica": scaling.concurrent_requests_per_replica,
        "scaling_triggers": {
            "queue_load": {"threshold": scaling.queue_load_threshold},
            "cpu_utilization": {"enabled": False},
            "gpu_utilization": {"enabled": False},
        },
    }


def build_body(spec: DeploymentSpec) -> dict[str, Any]:
    """The exact JSON body of POST /container-deployments for this spec."""
    deployment = spec.deployment
    registry: dict[str, Any] = {"is_private": bool(deployment.registry_credentials)}
    if deployment.registry_credentials:
        registry["credentials"] = {"name": deployment.registry_credentials}
    return {
        "name": deployment.name,
        "is_spot": deployment.is_spot,
        "compute": {"name": spec.compute.name, "size": spec.compute.size},
        "container_registry_settings": registry,
        "containers": [
            {
                "image": deployment.image,
                "exposed_port": deployment.exposed_port,
                "healthcheck": {
                    "enabled": True,
                    "port": deployment.healthcheck_port,
                    "path": deployment.healthcheck_path,
                },
                "entrypoint_overrides": {"enabled": False},
                "env": _env_entries(spec),
                "volume_mounts": [m.model_dump(exclude_none=True) for m in spec.volume_mounts],
            }
        ],
        "scaling": build_scaling(spec.scaling),
    }
