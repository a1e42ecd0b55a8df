"""Several providers in the demo (`--providers local,fake-verda,fake-runpod`), each replica a real local worker.

`fake-verda` and `fake-runpod` are the fake APIs on loopback driven through the real Verda and RunPod backends;
each replica they list is mirrored by a worker process on this machine, so jobs really run wherever the fleet
places them. `--fail NAME` makes one provider unreachable from the start, to show the fallback live.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from demo.replicas import REPLICA_STOP_S
from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.fleet import FleetBackend, Member
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING, BillingRule
from scaler.providers.base import Backend, BackendView
from scaler.providers.local import LocalBackend
from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from scaler.providers.verda.backend import VerdaBackend
from scaler.providers.verda.client import VerdaClient
from standins.runpod import FakeRunPod
from standins.verda import FakeVerda

PROVIDERS = ("local", "fake-verda", "fake-runpod")
PRICES = {"local": 0.0, "fake-verda": 2.30, "fake-runpod": 2.99}  # Verda's H100 and RunPod's secure H100, $/h
DEPLOYMENT = "comfyui-worker-demo"
IMAGE = "ghcr.io/acme/comfyui-worker-serverless:0.1.0"
VERDA_ID, VERDA_SECRET, RUNPOD_KEY = "demo-client", "demo-secret", "rpa_demo_key"
VERDA_BODY = {
    "name": DEPLOYMENT,
    "is_spot": False,
    "compute": {"name": "H100", "size": 1},
    "container_registry_settings": {"is_private": False},
    "containers": [{"image": IMAGE, "exposed_port": 8000}],
    "scaling": {
        "min_replica_count": 0, "max_replica_count": 5,
        "scale_down_policy": {"delay_seconds": 300}, "scale_up_policy": {"delay_seconds": 0},
        "queue_message_ttl_seconds": 300, "concurrent_requests_per_replica": 1,
        "scaling_triggers": {"queue_load": {"threshold": 1}},
    },
}
POD_BODY = {
    "image": IMAGE, "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}, "cloud": "SECURE", "disk": 50,
    "ports": ["8000/http"], "env": {"SERVERLESS_MODE": "true", "HEALTH_PORT": "8000"},
    "mounts": {"network": [{"volumeId": "vol-demo", "path": "/runpod-volume"}]},
}


class Mirrored:
    """A fake provider's control plane, with one local worker per replica it lists."""

    def __init__(self, platform: Backend, workers: LocalBackend) -> None:
        self.platform = platform
        self.workers = workers

    def __repr__(self) -> str:
        return f"Mirrored({self.platform!r})"

    async def observe(self) -> BackendView:
        view = await self.platform.observe()
        await self.workers.apply(len(view.replicas))
        return view

    async def apply(self, desired: int) -> bool:
        return await self.platform.apply(desired)

    async def pause(self) -> None:
        await self.platform.pause()

    async def resume(self) -> None:
        await self.platform.resume()

    async def aclose(self) -> None:
        await self.workers.aclose()
        await self.platform.aclose()


class Unavailable:
    """A provider that cannot be reached (`--fail`): every call fails, as a dead API or machine would."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _fail(self) -> ConnectionError:
        return ConnectionError(f"{self.name} unreachable (demo --fail {self.name})")

    async def observe(self) -> BackendView:
        raise self._fail()

    async def apply(self, desired: int) -> bool:
        raise self._fail()

    async def pause(self) -> None:
        raise self._fail()

    async def resume(self) -> None:
        raise self._fail()

    async def aclose(self) -> None:
        return None


def provider_max(name: str, max_replicas: int) -> int:
    """Verda gets half the fleet, so a run that loses `local` shows both fallbacks taking a share."""
    return math.ceil(max_replicas / 2) if name == "fake-verda" else max_replicas


async def start_fleet(
    stack: AsyncExitStack,
    names: Sequence[str],
    fail: str | None,
    max_replicas: int,
    make_workers: Callable[[str], LocalBackend],
    *,
    interval_s: float,
    ledger_file: Path | None = None,
) -> tuple[FleetBackend, dict[str, LocalBackend]]:
    """The fleet and, per provider, the local processes that do its work (for the demo's report)."""
    members, workers = [], {}
    for name in names:
        billing: BillingRule = {"fake-verda": VERDA_BILLING, "fake-runpod": RUNPOD_BILLING}.get(name, BillingRule())
        spec = ProviderSpec(name, provider_max(name, max_replicas), PRICES[name],
                            commit_s=interval_s if billing.per_second else billing.interval_s)
        local = workers[name] = make_workers(name)
        backend: Backend
        if name == fail:
            backend = Unavailable(name)
            stack.push_async_callback(local.aclose)
        elif name == "local":
            backend = local
        elif name == "fake-verda":
            backend = Mirrored(await _verda(stack), local)
        else:
            backend = Mirrored(await _runpod(stack), local)
        members.append(Member(spec, backend, billing))
    config = AllocatorConfig(
        providers=tuple(m.spec for m in members), error_ticks=2,
        start_deadline_s=30 * interval_s, retry_after_s=20 * interval_s, retry_max_s=60 * interval_s,
    )
    fleet = FleetBackend(members, config, ledger_file=ledger_file)
    return fleet, workers


async def _verda(stack: AsyncExitStack) -> VerdaBackend:
    fake = await stack.enter_async_context(FakeVerda(VERDA_ID, VERDA_SECRET))
    client = VerdaClient(VERDA_ID, VERDA_SECRET, base_url=fake.url)
    await client.create_deployment(dict(VERDA_BODY))
    return VerdaBackend(client, DEPLOYMENT)


async def _runpod(stack: AsyncExitStack) -> RunPodBackend:
    fake = await stack.enter_async_context(FakeRunPod(RUNPOD_KEY, network_volumes=("vol-demo",)))
    # The pods' /health through the fake's proxy: the default is RunPod's real proxy, on the internet.
    health = PodHealthProbe(fake.health_url)
    return RunPodBackend(RunPodClient(RUNPOD_KEY, base_url=fake.url), DEPLOYMENT, POD_BODY, health=health)


def parse_providers(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PROVIDERS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"--providers: a comma list of distinct {', '.join(PROVIDERS)}; got {text!r}")
    return names


def worker_processes(env: Mapping[str, str], command: Sequence[str], replica_env, log_dir: Path,
                     name: str) -> LocalBackend:
    return LocalBackend(env, command=command, replica_env=replica_env, log_dir=log_dir,
                        id_prefix=f"{name}-worker", stop_timeout_s=REPLICA_STOP_S)
