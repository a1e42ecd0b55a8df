"""A fake RunPod REST API v2 (pods and GPU catalogue) on loopback, for tests and the local demo.

It follows the published OpenAPI document (excerpt and provenance in tests/fixtures/runpod/): bearer key,
RFC 9457 problem bodies, 422 with an `errors` list for a body that breaks the contract (unknown or missing
fields, wrong types), 400 for cross-field rules and for "no capacity", 402 when the balance is spent,
asynchronous provisioning (PROVISIONING -> STARTING -> RUNNING), the `actions` each status allows (409
otherwise), and per-second billing from creation until the pod stops or is terminated (the fake's reading
of "billed per second"; RunPod does not say whether provisioning time is billed, so the fake counts it).

Tests steer it with `fail_next` (fault injection, optionally after the request took effect), `delay_next` (an
answer that comes after the caller gave up), `latency_s` (a slow API), `hold_writes` (pod creations, stops
and terminations wait for one another), `listing_lag_s` (GET /pods lists a new pod only that long after its
creation), `capacity`, `balance_usd`, `exit_pod` (the container stops on its own) and read `requests`,
`most_in_flight` and `billed_usd()`.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from common.urls import host_port
from standins.faults import FakeApi, Fault, fault_headers, proxy_error_page, record

API_PREFIX = "/v2"
PROXY_PREFIX = "/proxy"
DEFAULT_API_KEY = "rpa_fake_key"  # the fake's well-known test credential
PORT_RULE = re.compile(r"([0-9]{1,5})/(http|tcp|udp)")  # fullmatch: no trailing newline, as `$` allows
CUDA_RULE = re.compile(r"[0-9]+\.[0-9]+")  # the schema's ^\d+\.\d+$ in ECMA-262: ASCII digits, no trailing newline
SECRET_REFERENCE = re.compile(r"\{\{\s*RUNPOD_SECRET_([A-Za-z0-9_.-]+)\s*\}\}")
CREATE_FIELDS = {
    "name",
    "image",
    "args",
    "disk",
    "ports",
    "env",
    "registry",
    "cloud",
    "cpu",
    "dataCenterIds",
    "globalNetworking",
    "gpu",
    "mounts",
    "startJupyter",
    "startSsh",
    "templateId",
}
GPU_FIELDS = {"id", "count", "allowedCudaVersions", "minCudaVersion", "minRamPerGpu", "minVcpuCountPerGpu"}
ACTIONS_BY_STATUS = {
    "PROVISIONING": ["stop", "terminate"],
    "STARTING": ["stop", "terminate"],
    "RUNNING": ["stop", "restart", "terminate"],
    "EXITED": ["start", "terminate"],
    "ERROR": ["start", "terminate"],
}
BILLED_STATUSES = {"PROVISIONING", "STARTING", "RUNNING"}
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _gpu_type(gpu_id: str, name: str, pool: str, memory_gb: int, secure: float, community: float) -> dict[str, Any]:
    return {
        "id": gpu_id,
        "name": name,
        "pool": pool,
        "manufacturer": "NVIDIA",
        "memory": memory_gb,
        "secure": True,
        "community": True,
        "price": {"secure": secure, "community": community},
        "maxCount": {"secure": 8, "community": 8},
    }


# Illustrative prices for tests and the demo, not RunPod's current list.
GPU_TYPES = {
    gpu["id"]: gpu
    for gpu in (
        _gpu_type("NVIDIA GeForce RTX 4090", "RTX 4090", "ADA_24", 24, 0.69, 0.34),
        _gpu_type("NVIDIA L40S", "L40S", "ADA_48_PRO", 48, 0.86, 0.79),
        _gpu_type("NVIDIA A100 80GB PCIe", "A100 PCIe", "AMPERE_80", 80, 1.64, 1.19),
        _gpu_type("NVIDIA H100 80GB HBM3", "H100 SXM", "HOPPER_141", 80, 2.69, 2.39),
    )
}


class ApiError(Exception):
    def __init__(self, status: int, detail: str, errors: list[str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors


def _problem(status: int, detail: str, errors: list[str] | None = None, headers: dict | None = None) -> web.Response:
    body: dict[str, Any] = {"title": TITLES.get(status, "Error"), "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return web.json_response(body, status=status, headers=headers, content_type="application/problem+json")


@dataclass
class FakePod:
    id: str
    body: dict[str, Any]
    created_at: datetime
    created_clock: float
    status: str = "NEW"
    phase_since: float = 0.0
    started_at: datetime | None = None
    billed_s: float = 0.0
    billing_since: float | None = None
    history: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.body["name"]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class FakeRunPod(FakeApi):
    api_prefix = API_PREFIX

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        clock: Callable[[], float] = time.monotonic,
        provision_delay_s: float = 0.0,
        start_delay_s: float = 0.0,
        network_volumes: tuple[str, ...] = (),
        data_center: str = "US-TX-3",
        listing_lag_s: float = 0.0,
    ) -> None:
        super().__init__()
        self._api_key = api_key
        self._clock = clock
        self.provision_delay_s = provision_delay_s
        self.start_delay_s = start_delay_s
        # GET /pods lists a pod only this long after its creation (on the fake's clock): RunPod does not promise
        # that a pod is listed as soon as its POST answered. GET /pods/{id} finds it at once.
        self.listing_lag_s = listing_lag_s
        self._answer_delays: list[tuple[str, str | None, float]] = []  # (path, method, seconds), first match first
        self.latency_s = 0.0  # every API request is carried out and answered only this long after it came in
        self.in_flight = 0  # API requests received and not answered yet
        self.most_in_flight = 0  # the most there were at once
        self._writes_gate: asyncio.Event | None = None  # set: held pod writes go on
        self._writes_open_at: int | None = None
        self.data_center = data_center
        self.network_volumes = dict.fromkeys(network_volumes, data_center)  # volume id -> its data center
        self.capacity: dict[str, int] = {}  # GPU id -> most GPUs of that type placeable at once; absent = unlimited
        self.balance_usd: float | None = None  # None = unlimited; creates answer 402 once billing reaches it
        self.pods: dict[str, FakePod] = {}
        # The account's other pods (made by hand, by another tool), listed by GET /pods as given, after its own.
        self.other_pods: list[Any] = []
        self.terminated: dict[str, FakePod] = {}
        self.secrets: dict[str, str] = {}  # RunPod secrets by name, put into a container's env for its references
        # Called at each status change with (pod id, new status, the container's env with secrets resolved):
        # the demo starts a local worker when a pod reaches RUNNING and stops it when the pod leaves.
        self.on_status_change: Callable[[str, str, dict[str, str]], None] | None = None
        self.health_url = ""  # RunPod's proxy to each pod's /health: format with pod_id and port
        self.pod_health: dict[str, tuple[int, dict[str, Any]]] = {}  # pod id -> its /health answer (default ok)
        self.proxy_authorizations: list[str | None] = []  # the Authorization header of each proxied request

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(f"{API_PREFIX}/pods", self._list_pods)
        app.router.add_post(f"{API_PREFIX}/pods", self._create_pod)
        app.router.add_get(f"{API_PREFIX}/pods/{{id}}", self._get_pod)
        app.router.add_delete(f"{API_PREFIX}/pods/{{id}}", self._delete_pod)
        app.router.add_post(f"{API_PREFIX}/pods/{{id}}/action", self._action)
        app.router.add_get(f"{API_PREFIX}/network-volumes/{{id}}", self._get_network_volume)
        app.router.add_get(f"{API_PREFIX}/catalog/gpus", self._list_gpus)
        app.router.add_get(f"{PROXY_PREFIX}/{{target}}/health", self._proxied_health)
        app.router.add_get(f"{API_PREFIX}/catalog/gpus/{{id}}", self._get_gpu)
        bound_port = await self._serve(app, host, port)
        self.health_url = f"http://{host_port(host, bound_port)}{PROXY_PREFIX}/{{pod_id}}-{{port}}/health"
        return self.url

    # --- test controls (also fail_next and requests_to, from FakeApi) ----------------------------

    def set_health(self, pod_id: str, status: int, body: dict[str, Any]) -> None:
        """What the pod's worker answers on /health through the proxy from now on."""
        self.pod_health[pod_id] = (status, body)

    def delay_next(self, path: str, seconds: float, *, method: str | None = None) -> None:
        """The next request to ``path`` is carried out at once and answered only ``seconds`` later: an answer
        that arrives after the caller gave up on it."""
        self._answer_delays.append((path, method.upper() if method else None, seconds))

    def hold_writes(self, until_in_flight: int | None = None) -> None:
        """From now on pod creations, a pod's actions (stop, start, ...) and terminations are held, not carried
        out, until ``until_in_flight`` requests are in flight at once, or until ``release_writes``: a caller that
        sends them one at a time waits for ever."""
        self._writes_gate, self._writes_open_at = asyncio.Event(), until_in_flight

    def release_writes(self) -> None:
        if self._writes_gate is not None:
            self._writes_gate.set()

    async def stop(self) -> None:
        self.release_writes()  # a held request would hold the server's shutdown
        await super().stop()

    def exit_pod(self, pod_id: str, status: str = "EXITED") -> None:
        """The pod's container stops on its own (EXITED) or fails (ERROR): compute billing stops."""
        pod = self.pods[pod_id]
        self._advance(pod)
        self._set_status(pod, status)

    def live_pods(self) -> list[FakePod]:
        for pod in self.pods.values():
            self._advance(pod)
        return [p for p in self.pods.values() if p.status in BILLED_STATUSES]

    def billed_seconds(self, pod_id: str) -> int:
        """Seconds billed for the pod so far, each started second counted (per-second billing)."""
        pod = self.pods.get(pod_id) or self.terminated[pod_id]
        running = self._clock() - pod.billing_since if pod.billing_since is not None else 0.0
        return _ceil(pod.billed_s + running)

    def billed_usd(self) -> float:
        total = 0.0
        for pod in [*self.pods.values(), *self.terminated.values()]:
            total += self.billed_seconds(pod.id) * self._price_per_s(pod)
        return round(total, 6)

    # --- plumbing -------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(PROXY_PREFIX):  # RunPod's public HTTP proxy, not the API: no key
            self.proxy_authorizations.append(request.headers.get("Authorization"))
            return await handler(request)
        path = request.path.removeprefix(API_PREFIX)
        recorded = await record(request, path)
        self.requests.append(recorded)
        body = recorded.json
        if not self._authorized(request):
            return _problem(401, "invalid or missing bearer token")
        if isinstance(body, str):
            return _problem(400, "request body is not valid JSON")
        fault = self._faults.take(path, request.method)
        if fault is not None and not fault.after_effect:
            return self._fault_response(fault)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            response = await handler(request)
        except ApiError as error:
            response = _problem(error.status, error.detail, error.errors)
        except web.HTTPMethodNotAllowed as error:  # the published MethodNotAllowedError names the path's methods
            allow = ", ".join(sorted(error.allowed_methods))
            response = _problem(405, "The requested method is not allowed for this path.", headers={"Allow": allow})
        except web.HTTPException as error:
            response = _problem(error.status, error.reason)
        finally:
            self.in_flight -= 1
        if fault is not None:
            return self._fault_response(fault)
        for delay in self._answer_delays:
            if delay[0] == path and delay[1] in (None, request.method):
                self._answer_delays.remove(delay)
                await asyncio.sleep(delay[2])
                break
        return response

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Bearer" and secrets.compare_digest(key, self._api_key)

    @staticmethod
    def _fault_response(fault: Fault) -> web.Response:
        headers = fault_headers(fault)
        if fault.non_json:
            return proxy_error_page(fault.status, headers)
        if fault.body is not None:
            return web.json_response(fault.body, status=fault.status, headers=headers)
        return _problem(fault.status, f"injected {fault.status}", headers=headers)

    # --- pod state ------------------------------------------------------------------------------

    def _price_per_s(self, pod: FakePod) -> float:
        gpu = pod.body["gpu"]
        cloud = pod.body.get("cloud", "SECURE").lower()
        return GPU_TYPES[gpu["id"]]["price"][cloud] * gpu.get("count", 1) / 3600

    def _set_status(self, pod: FakePod, status: str) -> None:
        now = self._clock()
        was_billed = pod.status in BILLED_STATUSES
        if was_billed and status not in BILLED_STATUSES and pod.billing_since is not None:
            pod.billed_s += now - pod.billing_since
            pod.billing_since = None
        if not was_billed and status in BILLED_STATUSES:
            pod.billing_since = now
        pod.status, pod.phase_since = status, now
        pod.history.append(status)
        if status == "RUNNING":
            pod.started_at = datetime.now(UTC)
        if self.on_status_change is not None:
            self.on_status_change(pod.id, status, self.container_env(pod))

    def container_env(self, pod: FakePod) -> dict[str, str]:
        """The env the container sees: `{{ RUNPOD_SECRET_<name> }}` replaced by the secret's value, as RunPod
        injects it (a reference to a secret that does not exist is left as written)."""
        return {
            name: SECRET_REFERENCE.sub(self._secret_value, value) for name, value in pod.body.get("env", {}).items()
        }

    def _secret_value(self, match: re.Match[str]) -> str:
        return self.secrets.get(match.group(1), match.group(0))

    def _advance(self, pod: FakePod) -> None:
        """Asynchronous provisioning: each phase ends once its delay has passed on the fake's clock."""
        now = self._clock()
        for phase, delay_s, following in (
            ("PROVISIONING", self.provision_delay_s, "STARTING"),
            ("STARTING", self.start_delay_s, "RUNNING"),
        ):
            if pod.status == phase and now - pod.phase_since >= delay_s:
                began = pod.phase_since + delay_s
                self._set_status(pod, following)
                pod.phase_since = began

    def _gpus_in_use(self, gpu_id: str) -> int:
        return sum(p.body["gpu"].get("count", 1) for p in self.live_pods() if p.body["gpu"]["id"] == gpu_id)

    def _pod_json(self, pod: FakePod) -> dict[str, Any]:
        self._advance(pod)
        body = pod.body
        gpu = body["gpu"]
        count = gpu.get("count", 1)
        running = pod.status == "RUNNING"
        return {
            "id": pod.id,
            "name": body["name"],
            "status": pod.status,
            "actions": ACTIONS_BY_STATUS[pod.status],
            "image": body["image"],
            "args": body.get("args", ""),
            "disk": body.get("disk", 50),
            "mounts": body.get("mounts", {}),
            "ports": body.get("ports", []),
            "env": body.get("env", {}),
            "registry": body.get("registry"),
            "gpu": {"id": gpu["id"], "count": count, "vcpuCount": 8 * count, "memory": 32 * count},
            "cloud": body.get("cloud", "SECURE"),
            "dataCenterId": self.data_center,
            "cudaVersion": "12.8",
            "ssh": {"proxy": None, "direct": None},
            "template": None,
            "cost": round(self._price_per_s(pod) * 3600, 4) if pod.status in BILLED_STATUSES else 0.0,
            "locked": False,
            "globalNetworking": {"enabled": False},
            "runtime": {"uptime": int(self._clock() - pod.phase_since)} if running else None,
            "createdAt": pod.created_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "startedAt": pod.started_at.isoformat(timespec="seconds").replace("+00:00", "Z")
            if pod.started_at
            else None,
        }

    def _pod(self, request: web.Request) -> FakePod:
        pod_id = request.match_info["id"]
        if pod_id not in self.pods:
            raise ApiError(404, "pod not found")
        return self.pods[pod_id]

    # --- validation -----------------------------------------------------------------------------

    def _validate_create(self, body: Any) -> None:
        """The contract (422, every violation listed) first, then the cross-field rules (400)."""
        if not isinstance(body, dict):
            raise ApiError(422, "Request validation failed.", ["$: expected object"])
        errors = [f"$: additional properties '{k}' not allowed" for k in sorted(set(body) - CREATE_FIELDS)]
        errors += _contract_errors(body)
        if errors:
            raise ApiError(422, "Request validation failed.", errors)
        if ("gpu" in body) == ("cpu" in body):
            raise ApiError(400, "exactly one of gpu or cpu must be set")
        if "cpu" in body:
            raise ApiError(400, "CPU pods are not offered by this fake")
        if "templateId" in body:
            raise ApiError(404, f"template {body['templateId']} not found")
        bad_ports = [p for p in body.get("ports", []) if not _port(p)]
        if bad_ports:
            raise ApiError(400, f"ports must be formatted as port/protocol, the port 1-65535, got {bad_ports}")
        wanted = body.get("dataCenterIds") or []
        mounts = body.get("mounts") or {}
        if "persistent" in mounts and "network" in mounts:
            raise ApiError(400, "mounts.persistent and mounts.network are mutually exclusive")
        for mount in mounts.get("network", []):
            volume_id = mount["volumeId"]
            if volume_id not in self.network_volumes:
                raise ApiError(400, f"network volume {volume_id} not found")
            if wanted and self.network_volumes[volume_id] not in wanted:
                raise ApiError(
                    400, f"network volume {volume_id} is in {self.network_volumes[volume_id]}, not in {wanted}"
                )
        if wanted and self.data_center not in wanted:  # the fake has hosts in its data center alone
            raise ApiError(400, f"There are no longer any instances available in the requested data centers {wanted}")
        gpu = body["gpu"]
        if gpu.get("allowedCudaVersions") and "minCudaVersion" in gpu:
            raise ApiError(400, "gpu.allowedCudaVersions and gpu.minCudaVersion are mutually exclusive")
        if gpu["id"] not in GPU_TYPES:
            raise ApiError(400, f"unknown GPU type {gpu['id']!r}")
        cloud = body.get("cloud", "SECURE")
        most = GPU_TYPES[gpu["id"]]["maxCount"][cloud.lower()]  # the catalogue's: no host holds more
        if gpu.get("count", 1) > most:
            raise ApiError(400, f"gpu.count {gpu['count']}: a pod has at most {most} {gpu['id']} in {cloud}")

    def _check_capacity_and_balance(self, body: dict[str, Any]) -> None:
        if self.balance_usd is not None and self.billed_usd() >= self.balance_usd:
            raise ApiError(402, "insufficient balance to deploy this pod")
        gpu = body["gpu"]
        limit = self.capacity.get(gpu["id"])
        if limit is not None and self._gpus_in_use(gpu["id"]) + gpu.get("count", 1) > limit:
            raise ApiError(400, f"There are no longer any instances available with the requested {gpu['id']}")

    # --- handlers -------------------------------------------------------------------------------

    async def _list_pods(self, request: web.Request) -> web.Response:
        listed = [p for p in self.pods.values() if self._clock() - p.created_clock >= self.listing_lag_s]
        return web.json_response({"pods": [*(self._pod_json(p) for p in listed), *self.other_pods]})

    async def _get_pod(self, request: web.Request) -> web.Response:
        return web.json_response(self._pod_json(self._pod(request)))

    async def _create_pod(self, request: web.Request) -> web.Response:
        await self._held()
        body = await _body(request)
        self._validate_create(body)
        self._check_capacity_and_balance(body)
        pod_id = secrets.token_hex(7)
        pod = FakePod(pod_id, body, datetime.now(UTC), self._clock(), phase_since=self._clock())
        self.pods[pod_id] = pod
        self._set_status(pod, "PROVISIONING")
        return web.json_response(self._pod_json(pod), status=201)

    async def _delete_pod(self, request: web.Request) -> web.Response:
        await self._held()
        pod = self._pod(request)
        self._terminate(pod)
        return web.Response(status=204)

    def _terminate(self, pod: FakePod) -> None:
        self._advance(pod)
        self._set_status(pod, "TERMINATED")
        self.terminated[pod.id] = self.pods.pop(pod.id)

    async def _held(self) -> None:
        gate = self._writes_gate
        if gate is not None:
            if self._writes_open_at is not None and self.in_flight >= self._writes_open_at:
                gate.set()
            await gate.wait()

    async def _action(self, request: web.Request) -> web.Response:
        await self._held()
        pod = self._pod(request)
        body = await _body(request)
        if not isinstance(body, dict) or set(body) != {"action"}:
            raise ApiError(422, "Request validation failed.", ["$: exactly the property 'action' is required"])
        action = body["action"]
        if action not in ("start", "stop", "restart", "terminate"):
            raise ApiError(
                422,
                "Request validation failed.",
                [f"/action: value must be one of start, stop, restart, terminate, got {action!r}"],
            )
        self._advance(pod)
        if action not in ACTIONS_BY_STATUS[pod.status]:
            raise ApiError(409, f"action {action} is not valid for a pod in {pod.status}")
        if action == "terminate":
            self._terminate(pod)
            return web.Response(status=204)
        if action == "stop":
            self._set_status(pod, "EXITED")
        elif action == "start":
            self._check_capacity_and_balance(pod.body)
            self._set_status(pod, "PROVISIONING")
        else:
            self._set_status(pod, "STARTING")
        return web.json_response(self._pod_json(pod))

    async def _get_network_volume(self, request: web.Request) -> web.Response:
        volume_id = request.match_info["id"]
        if volume_id not in self.network_volumes:
            raise ApiError(404, "network volume not found")
        data_center = self.network_volumes[volume_id]
        return web.json_response(
            {"id": volume_id, "name": volume_id, "size": 100, "dataCenter": data_center, "type": "STANDARD"}
        )

    async def _proxied_health(self, request: web.Request) -> web.Response:
        pod_id, _, port = request.match_info["target"].rpartition("-")
        pod = self.pods.get(pod_id)
        if pod is not None:
            self._advance(pod)
        exposed = pod is not None and f"{port}/http" in pod.body.get("ports", [])
        if pod is None or pod.status != "RUNNING" or not exposed:
            return proxy_error_page(502)
        status, body = self.pod_health.get(pod_id, (200, {"status": "ok", "phase": "idle"}))
        return web.json_response(body, status=status)

    async def _list_gpus(self, request: web.Request) -> web.Response:
        return web.json_response({"gpus": list(GPU_TYPES.values())})

    async def _get_gpu(self, request: web.Request) -> web.Response:
        gpu_id = request.match_info["id"]
        if gpu_id not in GPU_TYPES:
            raise ApiError(404, "GPU type not found")
        return web.json_response(GPU_TYPES[gpu_id])


def _ceil(seconds: float) -> int:
    whole = int(seconds)
    return whole if seconds - whole < 1e-9 else whole + 1


def _port(text: str) -> bool:
    """`<port>/<protocol>`, the port 1-65535."""
    found = PORT_RULE.fullmatch(text)
    return found is not None and 1 <= int(found[1]) <= 65535


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def _body(request: web.Request) -> Any:
    """The JSON body (the middleware refused one that is not JSON); none at all is malformed too."""
    if not request.body_exists:
        raise ApiError(400, "request body is required")
    return await request.json()


def _contract_errors(body: dict[str, Any]) -> list[str]:
    """What the OpenAPI schema of CreatePodRequest rejects, in the wording of the real API's `errors`."""
    errors: list[str] = []

    def need(condition: bool, where: str, message: str) -> None:
        if not condition:
            errors.append(f"{where}: {message}")

    need(isinstance(body.get("name"), str) and body.get("name") != "", "/name", "a non-empty string is required")
    if "templateId" not in body:
        need(isinstance(body.get("image"), str) and body.get("image") != "", "/image", "a string is required")
    if "args" in body:
        need(isinstance(body["args"], str), "/args", "expected string")
    if "disk" in body:
        need(_is_int(body["disk"]) and body["disk"] >= 1, "/disk", "expected integer >= 1")
    if "ports" in body:
        ports = body["ports"]
        need(isinstance(ports, list) and all(isinstance(p, str) for p in ports), "/ports", "expected string[]")
    if "env" in body:
        env = body["env"]
        need(
            isinstance(env, dict) and all(isinstance(v, str) for v in env.values()),
            "/env",
            "expected object of string values",
        )
    if "registry" in body:
        need(body["registry"] is None or isinstance(body["registry"], str), "/registry", "expected string or null")
    if "cloud" in body:
        need(body["cloud"] in ("SECURE", "COMMUNITY"), "/cloud", "value must be one of SECURE, COMMUNITY")
    for flag in ("globalNetworking", "startJupyter", "startSsh"):
        if flag in body:
            need(isinstance(body[flag], bool), f"/{flag}", "expected boolean")
    if "dataCenterIds" in body:
        ids = body["dataCenterIds"]
        need(isinstance(ids, list) and all(isinstance(i, str) for i in ids), "/dataCenterIds", "expected string[]")
    if "templateId" in body:
        template = body["templateId"]
        need(isinstance(template, str) and template != "", "/templateId", "a non-empty string is required")
    if "gpu" in body:
        errors += _gpu_errors(body["gpu"])
    if "cpu" in body:
        errors += _cpu_errors(body["cpu"])
    if "mounts" in body:
        errors += _mount_errors(body["mounts"])
    return errors


def _gpu_errors(gpu: Any) -> list[str]:
    if not isinstance(gpu, dict):
        return ["/gpu: expected object"]
    errors = [f"/gpu: additional properties '{k}' not allowed" for k in sorted(set(gpu) - GPU_FIELDS)]
    if not isinstance(gpu.get("id"), str):
        errors.append("/gpu: missing property 'id'" if "id" not in gpu else "/gpu/id: expected string")
    for key in ("count", "minRamPerGpu", "minVcpuCountPerGpu"):
        if key in gpu and not (_is_int(gpu[key]) and gpu[key] >= 1):
            errors.append(f"/gpu/{key}: expected integer >= 1")
    versions = gpu.get("allowedCudaVersions", [])
    if not (isinstance(versions, list) and all(isinstance(v, str) and CUDA_RULE.fullmatch(v) for v in versions)):
        errors.append("/gpu/allowedCudaVersions: expected major.minor strings")
    floor = gpu.get("minCudaVersion", "0.0")
    if not (isinstance(floor, str) and CUDA_RULE.fullmatch(floor)):
        errors.append("/gpu/minCudaVersion: expected major.minor")
    return errors


def _cpu_errors(cpu: Any) -> list[str]:
    errors = _object_errors(cpu, "/cpu", {"id": str, "vcpuCount": int})
    if isinstance(cpu, dict) and cpu.get("id") == "":
        errors.append("/cpu/id: a non-empty string is required")
    if isinstance(cpu, dict) and _is_int(cpu.get("vcpuCount")) and cpu["vcpuCount"] < 2:
        errors.append("/cpu/vcpuCount: expected integer >= 2")
    return errors


def _mount_errors(mounts: Any) -> list[str]:
    if not isinstance(mounts, dict):
        return ["/mounts: expected object"]
    unknown = sorted(set(mounts) - {"persistent", "network"})
    errors = [f"/mounts: additional properties '{k}' not allowed" for k in unknown]
    if "persistent" in mounts:
        errors += _object_errors(mounts["persistent"], "/mounts/persistent", {"size": int, "path": str})
        size = mounts["persistent"].get("size") if isinstance(mounts["persistent"], dict) else None
        if _is_int(size) and size < 10:
            errors.append("/mounts/persistent/size: expected integer >= 10")
    if "network" in mounts:
        network = mounts["network"]
        if not isinstance(network, list) or len(network) > 1:
            errors.append("/mounts/network: expected an array of at most 1 item")
        else:
            for i, mount in enumerate(network):
                errors += _object_errors(mount, f"/mounts/network/{i}", {"volumeId": str, "path": str})
    return errors


def _object_errors(value: Any, where: str, fields: dict[str, type]) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: expected object"]
    errors = [f"{where}: additional properties '{k}' not allowed" for k in sorted(set(value) - set(fields))]
    for key, kind in fields.items():
        if key not in value:
            errors.append(f"{where}: missing property '{key}'")
        elif not isinstance(value[key], kind) or isinstance(value[key], bool):
            errors.append(f"{where}/{key}: expected {kind.__name__}")
    return errors
