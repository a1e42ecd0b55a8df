"""The image's HEALTHCHECK, run as Docker runs it: the exact command of Dockerfile.serverless, against a health
server that bound the port the OS picked (HEALTH_PORT=0, what the demo uses). No image is built."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

from health.server import HealthServer
from worker.state import WorkerState

from .conftest import make_state

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile.serverless").read_text().replace("\\\n", "\n")


def healthcheck_command() -> list[str]:
    [command] = re.findall(r"^HEALTHCHECK [^\n]*?\n?\s*CMD (\[.*\])$", DOCKERFILE, flags=re.MULTILINE)
    return json.loads(command)


def image_env(name: str) -> str:
    [value] = re.findall(rf"^\s+(?:ENV )?{name}=(\S+)", DOCKERFILE, flags=re.MULTILINE)
    return value


async def run_healthcheck(port_file: Path, health_port: str = "0") -> tuple[int, str]:
    """The command with the image's variables (the port file moved into the test's folder), `python` first on
    PATH as in the image's venv."""
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HEALTH_PORT": health_port, "HEALTH_PORT_FILE": str(port_file),
    }  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *healthcheck_command(), env=env, cwd=port_file.parent, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    return process.returncode or 0, stderr.decode()


@pytest.fixture
async def server_on_port_0(tmp_path: Path):
    state = make_state()
    server = HealthServer(state, host="127.0.0.1", port=0, heartbeat_timeout_s=60, port_file=tmp_path / "port")
    await server.start()
    yield server, state
    await server.stop()


def test_the_image_tells_the_healthcheck_where_the_port_is() -> None:
    assert healthcheck_command() == ["python", "-m", "health.probe"]
    assert image_env("HEALTH_PORT_FILE").startswith("/tmp/")


async def test_the_healthcheck_probes_the_port_the_os_picked(server_on_port_0, tmp_path: Path) -> None:
    """Before: the command probed 127.0.0.1:$HEALTH_PORT, i.e. port 0, and the container was unhealthy forever."""
    assert await run_healthcheck(tmp_path / "port") == (0, "")


async def test_the_healthcheck_fails_when_the_worker_asks_for_a_restart(
    server_on_port_0: tuple[HealthServer, WorkerState], tmp_path: Path
) -> None:
    _, state = server_on_port_0
    state.mark_fatal("ComfyUI exited with code -9")
    code, said = await run_healthcheck(tmp_path / "port")
    assert (code, said.strip()) == (1, "unhealthy: HTTPError: HTTP Error 503: Service Unavailable")


async def test_a_stopped_server_takes_its_port_file_with_it(tmp_path: Path) -> None:
    """A later process may bind that port: the probe must not take it for the health server."""
    server = HealthServer(make_state(), host="127.0.0.1", port=0, port_file=tmp_path / "port")
    port = await server.start()
    assert (tmp_path / "port").read_text() == f"{port}\n"
    await server.stop()
    assert not (tmp_path / "port").exists()
    code, said = await run_healthcheck(tmp_path / "port")
    assert code == 1
    assert said.strip() == "unhealthy: ValueError: no port to probe: 0 (HEALTH_PORT=0 needs HEALTH_PORT_FILE)"


async def test_without_a_port_file_the_healthcheck_probes_health_port(tmp_path: Path) -> None:
    server = HealthServer(make_state(), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        assert await run_healthcheck(tmp_path / "none", health_port=str(port)) == (0, "")
    finally:
        await server.stop()


async def test_a_port_file_that_cannot_be_written_is_an_error_line_not_a_stop(tmp_path: Path, capsys) -> None:
    server = HealthServer(make_state(), host="127.0.0.1", port=0, port_file=tmp_path / "missing" / "port")
    try:
        assert await server.start() > 0
    finally:
        await server.stop()
    assert "Could not write HEALTH_PORT_FILE" in capsys.readouterr().out
