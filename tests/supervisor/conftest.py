"""Run comfy-supervisor as a real process: the ComfyUI simulator as its child, the queue manager on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from queue_manager import QueueManagerServer

SIMULATOR_COMMAND = f"{sys.executable} -m standins.comfyui"
WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "workflows"


def free_ports(count: int) -> list[int]:
    """Distinct free ports: each socket stays bound until all are chosen (one at a time, the kernel may hand
    the same port out twice, and ComfyUI and the health server then fight over it)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def workflow(name: str) -> dict[str, Any]:
    path = WORKFLOWS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"test workflow missing: {path}")
    return json.loads(path.read_text())


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class SupervisorProcess:
    """One `python -m supervisor` with its output captured; its health server on a known port."""

    def __init__(
        self, env: dict[str, str], cwd: Path, health_port: int, preexec_fn: Callable[[], None] | None = None
    ) -> None:
        self.env = env
        self.preexec_fn = preexec_fn
        self.cwd = cwd
        self.health_url = f"http://127.0.0.1:{health_port}"
        self.process: asyncio.subprocess.Process | None = None
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.started_at = 0.0
        self._readers: list[asyncio.Task[None]] = []
        self.http = httpx.AsyncClient(base_url=self.health_url, timeout=2.0)

    async def start(self) -> None:
        self.started_at = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "supervisor",
            env=self.env, cwd=self.cwd, preexec_fn=self.preexec_fn,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        self._readers = [
            asyncio.create_task(_collect(self.process.stdout, self.stdout)),
            asyncio.create_task(_collect(self.process.stderr, self.stderr)),
        ]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def output(self) -> str:
        return self.stdout.decode(errors="replace") + self.stderr.decode(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.output.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and "event" in event:
                    events.append(event)
        return events

    async def get(self, path: str) -> httpx.Response | None:
        """None while nothing listens yet."""
        try:
            return await self.http.get(path)
        except httpx.TransportError:
            return None

    async def wait_until(self, predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            if self.process is not None and self.process.returncode is not None:
                code = self.process.returncode
                raise AssertionError(f"supervisor exited ({code}) waiting for {what}:\n{self.output}")
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output}")

    async def status_of(self, path: str) -> int | None:
        response = await self.get(path)
        return response.status_code if response is not None else None

    async def comfyui_pid(self) -> int:
        pids = await self.wait_until(lambda: child_pids(self.pid), what="the ComfyUI child process")
        assert len(pids) == 1, pids
        return pids[0]

    @staticmethod
    def is_running(pid: int) -> bool:
        return is_running(pid)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, timeout_s: float = 15.0) -> int:
        assert self.process is not None
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"supervisor still running after {timeout_s} s:\n{self.output}") from None
        await asyncio.gather(*self._readers)
        return code

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await self.http.aclose()


async def _collect(stream: asyncio.StreamReader | None, into: bytearray) -> None:
    assert stream is not None
    while chunk := await stream.read(65536):
        into.extend(chunk)


@pytest.fixture
def load_workflow() -> Callable[[str], dict[str, Any]]:
    return workflow


@pytest.fixture
async def queue_manager() -> AsyncIterator[QueueManagerServer]:
    async with QueueManagerServer(test_hooks=True, extensions=False) as qm:  # comfy-multi: the fallback paths
        yield qm


@pytest.fixture
def base_env(tmp_path: Path, queue_manager: QueueManagerServer) -> dict[str, str]:
    """A complete, valid environment: nothing inherited but PATH, so no stray variable changes a test."""
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    assert queue_manager.url is not None
    comfyui_port, health_port = free_ports(2)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONUNBUFFERED": "1",
        "QUEUE_MANAGER_URL": queue_manager.url,
        "COMFYUI_COMMAND": SIMULATOR_COMMAND,
        "COMFYUI_URL": f"http://127.0.0.1:{comfyui_port}",
        "HEALTH_HOST": "127.0.0.1",
        "HEALTH_PORT": str(health_port),
        "SCRATCH_DIR": str(tmp_path / "data"),
        "MODELS_DIR": str(tmp_path / "models"),
        "OUTPUTS_PATH": str(tmp_path / "outputs"),
        "WORKER_ID": "supervised-worker",
        "WORKER_POLL_INTERVAL": "0.05",
        "SHUTDOWN_GRACE_S": "10",
        "COMFYUI_STOP_TIMEOUT_S": "2",
        "COMFYUI_STARTUP_TIMEOUT_S": "20",
        "LOG_FORMAT": "json",
    }


@pytest.fixture
async def run_supervisor(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, str]], Any]]:
    started: list[SupervisorProcess] = []

    async def run(env: dict[str, str], preexec_fn: Callable[[], None] | None = None) -> SupervisorProcess:
        supervisor = SupervisorProcess(env, tmp_path, int(env.get("HEALTH_PORT", "8000")), preexec_fn)
        started.append(supervisor)
        await supervisor.start()
        return supervisor

    yield run
    for supervisor in started:
        await supervisor.close()
