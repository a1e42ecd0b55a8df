"""Fixtures for the live scaler: a hand-moved clock, stub inputs, and the real stand-ins on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog
from aiohttp import web

from common.timespans import DAY_S
from demo.providers import POD_BODY
from queue_manager.server import QueueManagerServer
from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.fleet import FleetBackend, Member
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING
from scaler.loop import ScalerLoop
from scaler.policy import Replica
from scaler.providers import BackendView, VerdaBackend
from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from scaler.providers.verda.client import VerdaClient
from scaler.queue_status import QueueStatus, QueueStatusError
from standins.runpod import FakeRunPod
from standins.verda import FakeVerda

from ..conftest import LoopbackPeer, ManualClock, wait_for

DEPLOYMENT = "comfyui-worker-serverless"
VERDA_ID, VERDA_SECRET = "scaler-test-id", "scaler-test-secret-do-not-log"
RUNPOD_KEY = "rpa_fleet_test_key_do_not_log"
# A provider call the fleet cuts off (member_timeout_s), a stop's confirmation or a tick's deadline, in tests where
# the healthy calls must answer in time: long enough that a loaded CI machine answers a loopback read within it (0.5 s
# did not, once in 2,100 tests).
CALL_CUT_OFF_S = 2.0

DEPLOYMENT_BODY = {
    "name": DEPLOYMENT,
    "is_spot": False,
    "compute": {"name": "H100", "size": 1},
    "container_registry_settings": {"is_private": False},
    "containers": [{"image": "ghcr.io/acme/comfyui-worker-serverless:0.1.0", "exposed_port": 8000}],
    "scaling": {
        "min_replica_count": 0,
        "max_replica_count": 5,
        "scale_down_policy": {"delay_seconds": 300},
        "scale_up_policy": {"delay_seconds": 0},
        "queue_message_ttl_seconds": 300,
        "concurrent_requests_per_replica": 1,
        "scaling_triggers": {"queue_load": {"threshold": 1}},
    },
}


@contextlib.asynccontextmanager
async def running_scaler(
    env: dict[str, str], preexec_fn: Callable[[], None] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m scaler.cli run` as a child process (stderr piped); killed on the way out if still running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scaler.cli",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec_fn,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def sigterm_and_wait(process: asyncio.subprocess.Process, timeout: float = 10.0) -> bytes:
    """Send SIGTERM, wait for the exit and return what the process wrote to stderr."""
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(timeout):
        _, err = await process.communicate()
    return err


class StubQueue:
    """Answers what the test sets; ``error`` makes the next reads fail."""

    def __init__(self) -> None:
        self.pending = 0
        self.running = 0
        self.error: Exception | None = None
        self.reads = 0
        self.health: bool | None = True

    async def read(self) -> QueueStatus:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return QueueStatus(pending_jobs=self.pending, running_jobs=self.running)

    async def read_with_timings(self, now: float, lists_by: float | None = None) -> QueueStatus:
        return await self.read()

    async def healthy(self) -> bool | None:
        return self.health


class StubBackend:
    """Behaves like a pinned platform: replicas follow the applied count at once; records every call."""

    def __init__(self, clock: ManualClock, replicas: int = 0) -> None:
        self.clock = clock
        self.status = "healthy"
        self.replicas = tuple(Replica(f"r{n}", clock()) for n in range(replicas))
        self.applied: list[int] = []
        self.observe_error: Exception | None = None
        self.apply_error: Exception | None = None
        self.paused = False
        self.closed = False

    async def observe(self) -> BackendView:
        if self.observe_error is not None:
            raise self.observe_error
        return BackendView(self.replicas, self.status)

    async def apply(self, desired: int) -> bool:
        if self.apply_error is not None:
            raise self.apply_error
        self.applied.append(desired)
        kept = self.replicas[:desired]
        self.replicas = kept + tuple(Replica(f"r{n}", self.clock()) for n in range(len(kept), desired))
        return True

    async def pause(self) -> None:
        self.paused = True

    async def resume(self) -> None:
        self.paused = False

    async def aclose(self) -> None:
        self.closed = True


class SlowWrite(StubBackend):
    """A platform that answers a write after ``seconds``; ``writing`` is set when one starts."""

    def __init__(self, clock: ManualClock, seconds: float) -> None:
        super().__init__(clock)
        self.seconds = seconds
        self.writing = asyncio.Event()

    async def apply(self, desired: int) -> bool:
        self.writing.set()
        await asyncio.sleep(self.seconds)
        return await super().apply(desired)


class Wrapped:
    """A backend wrapping another, as a recorder or a health record would: it has what the backend it wraps has."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_000_000.0)


@pytest.fixture
def queue() -> StubQueue:
    return StubQueue()


@pytest.fixture
def backend(clock: ManualClock) -> StubBackend:
    return StubBackend(clock)


@pytest.fixture
def queue_failure() -> Exception:
    return QueueStatusError("cannot reach the queue manager: ConnectError")


@pytest.fixture
async def qm() -> AsyncIterator[QueueManagerServer]:
    async with QueueManagerServer(test_hooks=True) as server:
        yield server


@pytest.fixture
async def fake_verda() -> AsyncIterator[FakeVerda]:
    """A fake Verda API holding the worker deployment (min 0, max 5, as deploy creates it)."""
    async with FakeVerda(VERDA_ID, VERDA_SECRET) as server:
        async with VerdaClient(VERDA_ID, VERDA_SECRET, base_url=server.url, max_attempts=1) as client:
            await client.create_deployment(copy.deepcopy(DEPLOYMENT_BODY))
        yield server


@pytest.fixture
def verda_credentials() -> tuple[str, str]:
    return VERDA_ID, VERDA_SECRET


@pytest.fixture
def make_verda_client(fake_verda: FakeVerda) -> Callable[[], VerdaClient]:
    def build() -> VerdaClient:
        return VerdaClient(VERDA_ID, VERDA_SECRET, base_url=fake_verda.url, max_attempts=2, backoff_initial_s=0.01)

    return build


@pytest.fixture
async def fake_runpod() -> AsyncIterator[FakeRunPod]:
    """A fake RunPod API holding the demo's network volume."""
    async with FakeRunPod(RUNPOD_KEY, network_volumes=("vol-demo",)) as server:
        yield server


@pytest.fixture
def make_fleet(make_verda_client: Callable[[], VerdaClient], wall: ManualClock) -> Callable[..., FleetBackend]:
    """``make_fleet(fake_runpod, verda_price=..., runpod_price=...)``: Verda and RunPod (at most 3 each) as a fleet
    on the wall clock; what is not named is FleetBackend's default. The caller closes it."""

    def build(
        fake_runpod: FakeRunPod, *, verda_price: float, runpod_price: float, runpod_commit_s: float = 15.0,
        retry_after_s: float = 60.0, **fleet_options: Any,
    ) -> FleetBackend:
        config = AllocatorConfig(
            providers=(
                ProviderSpec("verda", max_replicas=3, price_per_hour=verda_price),
                ProviderSpec("runpod", max_replicas=3, price_per_hour=runpod_price, commit_s=runpod_commit_s),
            ),
            error_ticks=2, start_deadline_s=120.0, retry_after_s=retry_after_s,
        )
        runpod = RunPodBackend(RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url), DEPLOYMENT, POD_BODY, clock=wall,
                               health=PodHealthProbe(fake_runpod.health_url))
        members = [
            Member(config.providers[0], VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall), VERDA_BILLING),
            Member(config.providers[1], runpod, RUNPOD_BILLING),
        ]
        return FleetBackend(members, config, clock=wall, **fleet_options)

    return build


@pytest.fixture
def restore_logging() -> AsyncIterator[None]:
    """The CLI configures structlog globally; put the defaults back for the tests that follow."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def wait() -> Callable[..., object]:
    """``await wait(predicate, timeout=...)``: poll until true, fail the test on timeout."""
    return wait_for


@pytest.fixture
def verda_scaling(fake_verda: FakeVerda) -> Callable[[], tuple[int, int]]:
    """(min_replica_count, max_replica_count) as the fake Verda holds them now."""

    def read() -> tuple[int, int]:
        scaling = fake_verda.deployments[DEPLOYMENT].body["scaling"]
        return scaling["min_replica_count"], scaling["max_replica_count"]

    return read


@pytest.fixture
def scaling_patches(fake_verda: FakeVerda) -> Callable[[], list]:
    return lambda: fake_verda.requests_to(f"/container-deployments/{DEPLOYMENT}/scaling", "PATCH")


@pytest.fixture
def cli_env(monkeypatch, qm, fake_verda: FakeVerda, verda_credentials, tmp_path, restore_logging) -> dict[str, str]:
    """The environment an operator sets, pointed at the stand-ins; also applied to this process."""
    client_id, client_secret = verda_credentials
    env = {
        "QUEUE_MANAGER_URL": qm.url,
        "VERDA_CLIENT_ID": client_id,
        "VERDA_CLIENT_SECRET": client_secret,
        "VERDA_API_URL": fake_verda.url,
        "SCALER_METRICS_PORT": "0",
        "SCALER_BILLING_AWARE": "false",
        "LOG_FORMAT": "json",
    }
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def operator_env_with(cli_env: dict[str, str], monkeypatch, extra: dict[str, str]) -> dict[str, str]:
    """cli_env with ``extra`` set as well, in this process and in what is returned (for a child process)."""
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    return {**cli_env, **extra}


@pytest.fixture
def fleet_env(cli_env, monkeypatch, tmp_path):
    """The operator's environment (cli_env) with Verda as a fleet of one."""
    return operator_env_with(cli_env, monkeypatch, {
        "SCALER_PROVIDERS": "verda",
        "SCALER_VERDA_PRICE_PER_HOUR": "2.30",
        "SCALER_LEDGER_FILE": str(tmp_path / "ledger.json"),
        "SCALER_ALERT_DRY_RUN": "true",
    })


@pytest.fixture
async def silent_peer() -> AsyncIterator[str]:
    """The URL of a server on loopback that accepts connections, reads what is sent and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    for writer in held:
        writer.close()
    await server.wait_closed()


@pytest.fixture
def wall(clock: ManualClock) -> ManualClock:
    """The hand-moved clock, set to now: Verda stamps its replicas with the real time."""
    clock.now = time.time()
    return clock


class FloodingPeer(LoopbackPeer):
    """A loopback HTTP server, broken or hostile: each path in ``answers`` gets that JSON; any other path a 200
    of ``flood_bytes`` of JSON-looking bytes, streamed without a Content-Length (or announcing it, with
    ``announce``). ``sent`` counts what it managed to write before the client hung up."""

    CHUNK = b"[" + b"0," * 32767 + b"0]"

    def __init__(self, answers: dict[str, Any] | None = None, flood_bytes: int = 128 * 1024 * 1024) -> None:
        self.answers = answers or {}
        self.flood_bytes = flood_bytes
        self.announce: int | None = None
        self.sent = 0
        super().__init__()

    async def answer(self, request: web.Request) -> web.StreamResponse:
        if request.path in self.answers:
            return web.json_response(self.answers[request.path])
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if self.announce is not None:
            response.content_length = self.announce
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while self.sent < self.flood_bytes:
                await response.write(self.CHUNK)
                self.sent += len(self.CHUNK)
        return response


@pytest.fixture
async def flooding_peer() -> AsyncIterator[FloodingPeer]:
    async with FloodingPeer() as peer:
        yield peer


async def tick_with_the_clock_two_days_ahead_and_back(loop: ScalerLoop, wall: ManualClock, monotonic: ManualClock):
    """5 ticks 15 s apart (on ``monotonic``, a clock never stepped); after the second the wall clock is 2 days
    ahead, and NTP sets it back before the fifth."""
    for wall_step in (0.0, 15.0, 2 * DAY_S + 15.0, 15.0, 15.0 - 2 * DAY_S):
        wall.advance(wall_step)
        monotonic.advance(15.0)
        await loop.tick()
