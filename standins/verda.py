"""A fake Verda API on loopback for tests and the local demo.

It is as strict as the real API in the ways that matter to the scaler and the deploy (every fact and its
source: docs/verda-api.md): OAuth2 tokens that expire, Verda's error body, the validation rules Verda applies
to deployment bodies, assigned container names; a deployment read (GET, POST and PATCH answers, the list)
carries no `scaling` and gives `containers[].image` as an object; `/scaling` PATCHes may be partial; a DELETE
only starts the deletion (the deployment stays visible for a while); replicas follow `min_replica_count`.
A create or update may mount only the shared (SFS) `volumes` and name only the `registry_credentials` the
tests seed, as on a real account. Tests steer it with `fail_next` (fault injection, also "500 after the work
was done"), `set_status`, `expire_tokens`, `latency_s` (a slow API), `hold_creates` (creates wait for one
another: two deploys at once) and read `requests` to assert what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from standins.faults import FakeApi, Fault, fault_headers, proxy_error_page, record

API_PREFIX = "/v1"
NAME_RULE = re.compile(r"^[a-z0-9-]{1,63}$")  # secrets
DEPLOYMENT_NAME_RULE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # Verda's CLI; at most 63 characters
DELETE_TIMEOUT_MAX_MS = 300_000
DELETE_TIMEOUT_RULE = re.compile(r"[0-9]{1,6}\Z")  # not "²" (str.isdigit's), nor more digits than int() reads
ENV_NAME_RULE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
VOLUME_MOUNT_TYPES = {"scratch", "memory", "secret", "shared"}
BLOCK_VOLUME_TYPES = {"NVMe", "HDD"}  # an instance's disks, which a shared mount refuses
SHM_PATH = "/dev/shm"  # noqa: S108 - Verda mounts memory volumes here; not a temporary file
SCALING_KEYS = (
    "min_replica_count",
    "max_replica_count",
    "scale_down_policy",
    "scale_up_policy",
    "queue_message_ttl_seconds",
    "concurrent_requests_per_replica",
    "scaling_triggers",
)

COMPUTE_RESOURCES = [
    {"name": "H100", "size": 1, "is_available": True},
    {"name": "H200", "size": 1, "is_available": True},
    {"name": "A100", "size": 1, "is_available": True},
    {"name": "L40S", "size": 1, "is_available": True},
    {"name": "General Compute", "size": 1, "is_available": True},
]


def _container_type(model: str, name: str, gpu_memory_gb: int, price: str, spot_price: str) -> dict[str, Any]:
    return {
        "id": f"fake-{model.lower()}",
        "model": model,
        "name": name,
        "instance_type": f"1{model}.serverless",
        "cpu": {"description": "", "number_of_cores": 0},
        "gpu": {"description": f"1x {name}", "number_of_gpus": 1},
        "gpu_memory": {"description": f"{gpu_memory_gb}GB", "size_in_gigabytes": gpu_memory_gb},
        "memory": {"description": "", "size_in_gigabytes": 0},
        "serverless_price": price,
        "serverless_spot_price": spot_price,
        "currency": "usd",
        "manufacturer": "NVIDIA",
    }


# Only the H100 on-demand price ($2.30/h) is documented; the other numbers are illustrative, for tests.
CONTAINER_TYPES = [
    _container_type("H100", "H100 SXM5 80GB", 80, "2.30", "0.92"),
    _container_type("H200", "H200 SXM5 141GB", 141, "3.00", "1.20"),
    _container_type("A100", "A100 SXM4 80GB", 80, "1.40", "0.56"),
    _container_type("L40S", "L40S 48GB", 48, "1.00", "0.40"),
]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


@dataclass
class FakeReplica:
    id: str
    started_at: datetime
    started_clock: float


@dataclass
class FakeDeployment:
    body: dict[str, Any]
    created_at: datetime
    status: str = "healthy"
    status_override: str | None = None
    replicas: list[FakeReplica] = field(default_factory=list)
    # Reads left before a deployment being deleted is gone (None: not being deleted).
    reads_until_gone: int | None = None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _invalid(message)


def _object(value: Any, what: str) -> dict[str, Any]:
    """Verda answers a body or field of the wrong JSON type with its 400, never a 500."""
    _require(isinstance(value, dict), f"{what} must be an object")
    return value


async def _body(request: web.Request) -> Any:
    """The JSON body (the middleware refused one that is not JSON); none at all is Verda's 400 too."""
    _require(request.body_exists, "body is required")
    return await request.json()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_port(value: Any) -> bool:
    return _is_int(value) and 1 <= value <= 65535


def _is_number(value: Any) -> bool:
    """A JSON number: not true/false, nor Infinity or NaN (which Python's json reads, and JSON has not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


# The types the official `verda` SDK sends (verda.containers): each check accepts null where the SDK's field is
# optional, since the SDK sends null for an optional field left unset.
BOOLEAN = (lambda value: isinstance(value, bool), "a boolean")
HEALTHCHECK_TYPES = {
    "enabled": BOOLEAN,
    "port": (_or_null(_is_port), "an integer 1-65535"),
    "path": (_or_null(lambda value: isinstance(value, str)), "a string"),
}
ENTRYPOINT_TYPES = {
    "enabled": BOOLEAN,
    "entrypoint": (_or_null(_strings), "a list of strings"),
    "cmd": (_or_null(_strings), "a list of strings"),
}
CREDENTIALS = (
    _or_null(lambda value: isinstance(value, dict) and isinstance(value.get("name"), str)),
    "an object with a name",
)
REGISTRY_TYPES = {"is_private": BOOLEAN, "credentials": CREDENTIALS}


def _validate_types(value: Any, what: str, types: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    """Each key `value` carries has its SDK type, else Verda's 400 naming the field."""
    fields = _object(value, what)
    for key, (check, expected) in types.items():
        _require(key not in fields or check(fields[key]), f"{what}.{key} must be {expected}")


def validate_scaling(scaling: Any) -> None:
    _object(scaling, "scaling")
    missing = [key for key in SCALING_KEYS if key not in scaling]
    _require(not missing, f"scaling is missing {', '.join(missing)}")
    low, high = scaling["min_replica_count"], scaling["max_replica_count"]
    _require(_is_int(low) and _is_int(high), "replica counts must be integers")
    _require(0 <= low <= high, "scaling needs 0 <= min_replica_count <= max_replica_count")
    for policy in ("scale_down_policy", "scale_up_policy"):
        delay = _object(scaling[policy], policy).get("delay_seconds")
        _require(_is_int(delay) and delay >= 0, f"{policy}.delay_seconds must be an integer >= 0")
    for key in ("queue_message_ttl_seconds", "concurrent_requests_per_replica"):
        _require(_is_int(scaling[key]) and scaling[key] >= 0, f"{key} must be an integer >= 0")
    triggers = _object(scaling["scaling_triggers"], "scaling_triggers")  # the SDK's field is not optional
    queue_load = triggers.get("queue_load")
    if queue_load is not None:
        threshold = _object(queue_load, "queue_load").get("threshold")
        _require(_is_number(threshold) and threshold >= 1, "queue_load.threshold must be a number >= 1")
    for utilization in ("cpu_utilization", "gpu_utilization"):
        if triggers.get(utilization) is not None:
            enabled = _object(triggers[utilization], utilization).get("enabled")
            _require(isinstance(enabled, bool), f"{utilization}.enabled must be a boolean")


def _validate_volume_mount(mount: Any, volumes: dict[str, str]) -> None:
    _object(mount, "volume_mounts entries")
    kind = mount.get("type")
    _require(isinstance(kind, str) and kind in VOLUME_MOUNT_TYPES,
             f"volume mount type must be one of {sorted(VOLUME_MOUNT_TYPES)}")
    _require(isinstance(mount.get("mount_path"), str) and mount["mount_path"].startswith("/"), "bad mount_path")
    if kind == "memory":
        _require(mount["mount_path"] == SHM_PATH, "memory mounts must use /dev/shm")
        _require(_is_int(mount.get("size_in_mb")) and mount["size_in_mb"] > 0, "memory needs size_in_mb")
    if kind == "shared":
        _require(_text(mount.get("volume_id")), "shared mounts need a volume_id (a string)")
        volume_id = mount["volume_id"]
        _require(volume_id in volumes, f"volume {volume_id!r} does not exist")
        _require(volumes[volume_id] not in BLOCK_VOLUME_TYPES,
                 f"volume {volume_id!r} is of type {volumes[volume_id]}, not a shared filesystem")
    if kind == "secret":
        _require(_text(mount.get("secret_name")), "secret mounts need a secret_name (a string)")


class FakeVerda(FakeApi):
    api_prefix = API_PREFIX

    def __init__(
        self,
        client_id: str = "test-id",
        client_secret: str = "test-secret",  # noqa: S107 - the fake's well-known test credential
        *,
        token_ttl_s: float = 3600,
        clock: Callable[[], float] = time.monotonic,
        replica_start_delay_s: float = 0.0,
        delete_reads: int = 2,
    ) -> None:
        super().__init__()
        self.client_id = client_id
        self._client_secret = client_secret
        self.token_ttl_s = token_ttl_s
        self.replica_start_delay_s = replica_start_delay_s
        self.delete_reads = delete_reads
        self._clock = clock
        self._access_tokens: dict[str, float] = {}  # the live ones, with when each expires
        self.tokens_issued: list[str] = []  # every access token issued, for tests' asserts
        self._refresh_tokens: set[str] = set()
        self.deployments: dict[str, FakeDeployment] = {}
        self.secrets: dict[str, str] = {}
        self.volumes: dict[str, str] = {}  # the account's volumes, id -> type ("NVMe_Shared": an SFS)
        self.registry_credentials: set[str] = set()  # the names of the account's registry credentials
        self.latency_s = 0.0  # each API request, the token too, is answered this long after it came in
        self._creates_held: asyncio.Barrier | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(f"{API_PREFIX}/oauth2/token", self._token)
        deployments = f"{API_PREFIX}/container-deployments"
        one = deployments + "/{name}"
        app.router.add_get(deployments, self._list_deployments)
        app.router.add_post(deployments, self._create_deployment)
        app.router.add_get(one, self._get_deployment)
        app.router.add_patch(one, self._update_deployment)
        app.router.add_delete(one, self._delete_deployment)
        app.router.add_get(one + "/status", self._get_status)
        app.router.add_get(one + "/scaling", self._get_scaling)
        app.router.add_patch(one + "/scaling", self._update_scaling)
        app.router.add_get(one + "/replicas", self._get_replicas)
        for action in ("pause", "resume", "restart", "purge-queue"):
            app.router.add_post(one + f"/{action}", self._action)
        app.router.add_get(f"{API_PREFIX}/secrets", self._list_secrets)
        app.router.add_post(f"{API_PREFIX}/secrets", self._create_secret)
        app.router.add_delete(f"{API_PREFIX}/secrets/{{name}}", self._delete_secret)
        app.router.add_get(f"{API_PREFIX}/volumes", self._list_volumes)
        app.router.add_get(f"{API_PREFIX}/container-registry-credentials", self._list_registry_credentials)
        app.router.add_get(f"{API_PREFIX}/serverless-compute-resources", self._compute_resources)
        app.router.add_get(f"{API_PREFIX}/container-types", self._container_types)
        await self._serve(app, host, port)
        return self.url

    # --- test controls (also fail_next and requests_to, from FakeApi) ----------------------------

    def expire_tokens(self) -> None:
        """Every access token issued so far becomes expired (refresh tokens stay valid)."""
        self._access_tokens = dict.fromkeys(self._access_tokens, float("-inf"))

    def revoke_refresh_tokens(self) -> None:
        self._refresh_tokens.clear()

    def hold_creates(self, together: int = 2) -> None:
        """From now on each create (a deployment's, a secret's) is held until ``together`` of them are held, then
        they go on at once, in turn: two deploys that both looked before either created. Until
        ``release_creates``."""
        self._creates_held = asyncio.Barrier(together)

    async def release_creates(self) -> None:
        """Held creates go on, and no more is held (a deploy that ended leaves the other nothing to wait for)."""
        held, self._creates_held = self._creates_held, None
        if held is not None:
            await held.abort()

    async def stop(self) -> None:
        await self.release_creates()  # a held request would hold the server's shutdown
        await super().stop()

    def set_status(self, name: str, status: str | None) -> None:
        """Force the status the API reports (e.g. "quota_reached"); None goes back to the natural one."""
        self.deployments[name].status_override = status

    # --- plumbing -------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path.removeprefix(API_PREFIX)
        recorded = await record(request, path)
        self.requests.append(recorded)
        if isinstance(recorded.json, str):
            return web.json_response({"code": "invalid_request", "message": "body is not JSON"}, status=400)
        fault = self._faults.take(path, request.method)
        if fault is not None and not fault.after_effect:
            return self._fault_response(fault)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        try:
            if path != "/oauth2/token":
                self._check_bearer(request)
            response = await handler(request)
        except ApiError as error:
            response = web.json_response({"code": error.code, "message": error.message}, status=error.status)
        return self._fault_response(fault) if fault is not None else response

    @staticmethod
    def _fault_response(fault: Fault) -> web.Response:
        headers = fault_headers(fault)
        if fault.non_json:
            return proxy_error_page(fault.status, headers)
        if fault.body is not None:
            return web.json_response(fault.body, status=fault.status, headers=headers)
        code = {401: "unauthorized_request", 429: "too_many_requests", 503: "service_unavailable"}.get(
            fault.status, "server_error" if fault.status >= 500 else "invalid_request"
        )
        body = {"code": code, "message": f"injected {fault.status}"}
        return web.json_response(body, status=fault.status, headers=headers)

    async def _held(self) -> None:
        if self._creates_held is not None:
            with contextlib.suppress(asyncio.BrokenBarrierError):  # released
                await self._creates_held.wait()

    def _check_bearer(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self._access_tokens:
            raise ApiError(401, "unauthorized_request", "Invalid or missing access token")
        if self._clock() >= self._access_tokens[token]:
            raise ApiError(401, "unauthorized_request", "Access token expired")

    def _issue_tokens(self) -> web.Response:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        now = self._clock()
        # Those expired are forgotten: a client refreshing every hour for weeks (bench/scaler_soak.py) piled them up.
        self._access_tokens = {token: until for token, until in self._access_tokens.items() if until > now}
        self._access_tokens[access] = now + self.token_ttl_s
        self.tokens_issued.append(access)
        self._refresh_tokens.add(refresh)
        return web.json_response(
            {
                "access_token": access,
                "refresh_token": refresh,
                "scope": "cloud-api-v1",
                "token_type": "Bearer",
                "expires_in": self.token_ttl_s,
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        body = _object(await _body(request), "body")
        grant = body.get("grant_type")
        if grant == "client_credentials":
            if (body.get("client_id"), body.get("client_secret")) != (self.client_id, self._client_secret):
                raise ApiError(401, "unauthorized_request", "Invalid client credentials")
            return self._issue_tokens()
        if grant == "refresh_token":
            token = body.get("refresh_token")
            if not isinstance(token, str) or token not in self._refresh_tokens:
                raise ApiError(400, "invalid_request", "Invalid refresh token")
            self._refresh_tokens.discard(token)
            return self._issue_tokens()
        raise _invalid(f"unsupported grant_type {grant!r}")

    def _deployment(self, request: web.Request) -> FakeDeployment:
        name = request.match_info["name"]
        deployment = self.deployments.get(name)
        if deployment is not None and deployment.reads_until_gone is not None:
            if deployment.reads_until_gone <= 0:
                del self.deployments[name]
                deployment = None
            else:
                deployment.reads_until_gone -= 1
        if deployment is None:
            raise ApiError(404, "not_found", f"Deployment {name} not found")
        return deployment

    @staticmethod
    def _read_shape(deployment: FakeDeployment) -> dict[str, Any]:
        """A deployment as Verda answers it: no scaling (that is GET …/scaling), each image an object."""
        body = {key: value for key, value in deployment.body.items() if key != "scaling"}
        updated_at = deployment.created_at.isoformat().replace("+00:00", "Z")
        body["containers"] = [
            {**c, "image": {"image": c["image"], "last_updated_at": updated_at}} for c in body["containers"]
        ]
        return body

    # --- validation -----------------------------------------------------------------------------

    def _validate_settings(self, body: dict[str, Any]) -> None:
        """The deployment-wide settings a create or an update may carry."""
        _require(isinstance(body.get("is_spot", False), bool), "is_spot must be a boolean")
        if "container_registry_settings" in body:
            registry = body["container_registry_settings"]
            _validate_types(registry, "container_registry_settings", REGISTRY_TYPES)
            credential = (registry.get("credentials") or {}).get("name")
            _require(credential is None or credential in self.registry_credentials,
                     f"registry credential {credential!r} does not exist")

    def _validate_containers(self, containers: Any, assigned: list[str] | None) -> None:
        _require(isinstance(containers, list) and len(containers) > 0, "containers must be a non-empty list")
        for container in containers:
            _object(container, "containers entries")
            _require(isinstance(container.get("image"), str) and container["image"] != "", "containers need image")
            _require(_is_port(container.get("exposed_port")), "containers need an exposed_port 1-65535")
            if assigned is not None:
                _require(container.get("name") in assigned, "containers in an update must carry their name")
            _require(isinstance(container.get("env") or [], list), "env must be a list")
            _require(isinstance(container.get("volume_mounts") or [], list), "volume_mounts must be a list")
            if container.get("healthcheck") is not None:
                _validate_types(container["healthcheck"], "healthcheck", HEALTHCHECK_TYPES)
            if container.get("entrypoint_overrides") is not None:
                _validate_types(container["entrypoint_overrides"], "entrypoint_overrides", ENTRYPOINT_TYPES)
            for env in container.get("env") or []:
                _object(env, "env entries")
                _require(bool(ENV_NAME_RULE.match(str(env.get("name", "")))), f"invalid env name {env.get('name')!r}")
                _require(env.get("type") in ("plain", "secret"), "env type must be plain or secret")
                ref = env.get("value_or_reference_to_secret")
                _require(isinstance(ref, str), "env value_or_reference_to_secret must be a string")
                _require(env["type"] == "plain" or ref in self.secrets, f"secret {ref!r} does not exist")
            for mount in container.get("volume_mounts") or []:
                _validate_volume_mount(mount, self.volumes)

    def _validate_compute(self, compute: Any) -> None:
        known = [(r["name"], r["size"]) for r in COMPUTE_RESOURCES]
        _object(compute, "compute")
        name, size = compute.get("name"), compute.get("size")
        _require(_is_int(size) and (name, size) in known, f"unknown compute {compute}")

    # --- replicas -------------------------------------------------------------------------------

    def _reconcile_replicas(self, deployment: FakeDeployment) -> None:
        wanted = 0 if deployment.status == "paused" else deployment.body["scaling"]["min_replica_count"]
        while len(deployment.replicas) > wanted:
            deployment.replicas.pop()
        while len(deployment.replicas) < wanted:
            replica_id = f"replica-{secrets.token_hex(4)}"
            deployment.replicas.append(FakeReplica(replica_id, datetime.now(UTC), self._clock()))

    def _replica_json(self, replica: FakeReplica) -> dict[str, Any]:
        running = self._clock() - replica.started_clock >= self.replica_start_delay_s
        return {
            "id": replica.id,
            "status": "running" if running else "provisioning",
            "started_at": replica.started_at.isoformat().replace("+00:00", "Z"),
        }

    # --- handlers -------------------------------------------------------------------------------

    async def _list_deployments(self, request: web.Request) -> web.Response:
        return web.json_response([self._read_shape(d) for d in self.deployments.values()])

    async def _create_deployment(self, request: web.Request) -> web.Response:
        await self._held()
        body = _object(await _body(request), "body")
        name = body.get("name")
        _require(
            isinstance(name, str) and len(name) <= 63 and bool(DEPLOYMENT_NAME_RULE.match(name)),
            "name must match ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ and be at most 63 characters",
        )
        if name in self.deployments:
            raise ApiError(409, "invalid_request", f"Deployment {name} already exists")
        self._validate_settings(body)
        self._validate_compute(body.get("compute"))
        self._validate_containers(body.get("containers"), assigned=None)
        validate_scaling(body.get("scaling"))
        stored = {
            **body,
            "containers": [{**c, "name": f"{name}-{secrets.token_hex(4)}"} for c in body["containers"]],
            "endpoint_base_url": f"https://containers.datacrunch.io/{name}",
            "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        deployment = FakeDeployment(body=stored, created_at=datetime.now(UTC))
        self.deployments[name] = deployment
        self._reconcile_replicas(deployment)
        return web.json_response(self._read_shape(deployment), status=201)

    async def _get_deployment(self, request: web.Request) -> web.Response:
        return web.json_response(self._read_shape(self._deployment(request)))

    async def _update_deployment(self, request: web.Request) -> web.Response:
        deployment = self._deployment(request)
        body = _object(await _body(request), "body")
        _require(body.get("name", deployment.body["name"]) == deployment.body["name"], "name is immutable")
        self._validate_settings(body)
        if "compute" in body:
            self._validate_compute(body["compute"])
        if "containers" in body:
            assigned = [c["name"] for c in deployment.body["containers"]]
            self._validate_containers(body["containers"], assigned=assigned)
        if "scaling" in body:
            validate_scaling(body["scaling"])
        deployment.body = {**deployment.body, **body}
        self._reconcile_replicas(deployment)
        return web.json_response(self._read_shape(deployment))

    async def _delete_deployment(self, request: web.Request) -> web.Response:
        """Starts the deletion: the deployment stays readable for `delete_reads` more reads, then it is 404."""
        deployment = self._deployment(request)
        timeout = request.query.get("timeout", "60000")
        _require(
            bool(DELETE_TIMEOUT_RULE.match(timeout)) and int(timeout) <= DELETE_TIMEOUT_MAX_MS,
            "timeout must be 0-300000 (ms)",
        )
        if deployment.reads_until_gone is not None:
            raise ApiError(409, "invalid_request", f"Deployment {deployment.body['name']} is being deleted")
        deployment.reads_until_gone = self.delete_reads
        deployment.replicas.clear()
        return web.Response(status=204)

    async def _get_status(self, request: web.Request) -> web.Response:
        deployment = self._deployment(request)
        return web.json_response({"status": deployment.status_override or deployment.status})

    async def _get_scaling(self, request: web.Request) -> web.Response:
        return web.json_response(self._deployment(request).body["scaling"])

    async def _update_scaling(self, request: web.Request) -> web.Response:
        """A partial object changes only the keys it carries."""
        deployment = self._deployment(request)
        update = await _body(request)
        _require(isinstance(update, dict), "scaling must be an object")
        unknown = sorted(set(update) - set(SCALING_KEYS))
        _require(not unknown, f"unknown scaling keys {unknown}")
        scaling = {**deployment.body["scaling"], **update}
        validate_scaling(scaling)
        deployment.body["scaling"] = scaling
        self._reconcile_replicas(deployment)
        return web.json_response(scaling)

    async def _get_replicas(self, request: web.Request) -> web.Response:
        deployment = self._deployment(request)
        return web.json_response({"list": [self._replica_json(r) for r in deployment.replicas]})

    async def _action(self, request: web.Request) -> web.Response:
        deployment = self._deployment(request)
        action = request.path.rsplit("/", 1)[-1]
        if action == "pause":
            deployment.status = "paused"
        elif action == "resume":
            deployment.status = "healthy"
        elif action == "restart":
            deployment.replicas.clear()
        self._reconcile_replicas(deployment)
        return web.Response(status=204)

    async def _list_secrets(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"name": name, "created_at": "2025-01-01T00:00:00Z", "secret_type": "generic"} for name in self.secrets]
        )

    async def _list_volumes(self, request: web.Request) -> web.Response:
        return web.json_response([
            {"id": volume_id, "name": volume_id, "type": kind, "status": "detached", "size": 100,
             "is_os_volume": False, "created_at": "2025-01-01T00:00:00Z", "location": "FIN-01"}
            for volume_id, kind in self.volumes.items()
        ])

    async def _list_registry_credentials(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"name": name, "created_at": "2025-01-01T00:00:00Z"} for name in sorted(self.registry_credentials)]
        )

    async def _create_secret(self, request: web.Request) -> web.Response:
        await self._held()
        body = _object(await _body(request), "body")
        name, value = body.get("name"), body.get("value")
        _require(isinstance(name, str) and bool(NAME_RULE.match(name)), "secret name must match [a-z0-9-]")
        _require(isinstance(value, str) and value != "", "secret value must be a non-empty string")
        if name in self.secrets:
            raise ApiError(409, "invalid_request", f"Secret {name} already exists")
        self.secrets[name] = value
        return web.Response(status=201)

    def _secret_in_use(self, name: str) -> bool:
        return any(
            env.get("type") == "secret" and env.get("value_or_reference_to_secret") == name
            for deployment in self.deployments.values()
            for container in deployment.body["containers"]
            for env in container.get("env") or []
        )

    async def _delete_secret(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.secrets:
            raise ApiError(404, "not_found", f"Secret {name} not found")
        if self._secret_in_use(name) and request.query.get("force") != "true":
            raise ApiError(400, "forbidden_action", f"Secret {name} is used by a deployment")
        del self.secrets[name]
        return web.Response(status=204)

    async def _compute_resources(self, request: web.Request) -> web.Response:
        return web.json_response(COMPUTE_RESOURCES)

    async def _container_types(self, request: web.Request) -> web.Response:
        return web.json_response(CONTAINER_TYPES)
