"""The image's HEALTHCHECK, run as Docker runs it: the exact command of Dockerfile.serverless, against a health
server that bound the port the OS picked (HEALTH_PORT=0, what the demo uses). No image is built."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import socket
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


async def run_healthcheck(
    port_file: Path, health_port: str = "0", health_host: str = image_env("HEALTH_HOST")
) -> tuple[int, str]:
    """The command with the image's variables (the port file moved into the test's folder)."""
    variables = {"HEALTH_HOST": health_host, "HEALTH_PORT": health_port, "HEALTH_PORT_FILE": str(port_file)}
    return await run_healthcheck_with(variables, port_file.parent)


async def run_healthcheck_with(variables: dict[str, str], cwd: Path) -> tuple[int, str]:
    """The command with these variables alone, `python` first on PATH as in the image's venv."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **variables}
    process = await asyncio.create_subprocess_exec(
        *healthcheck_command(), env=env, cwd=cwd, stderr=asyncio.subprocess.PIPE
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


def test_the_probe_gives_up_before_docker_kills_it() -> None:
    """The probe's own deadline (TIMEOUT_S) ends a second before the HEALTHCHECK's --timeout, Python's start
    included: a hung server is told in the container's health log by "unhealthy: ...", not by Docker's kill."""
    from health.probe import TIMEOUT_S

    [timeout_s] = re.findall(r"^HEALTHCHECK .*--timeout=(\d+)s", DOCKERFILE, flags=re.MULTILINE)
    assert int(timeout_s) - TIMEOUT_S >= 1, "a second for Python to start and the probe to print"


@pytest.mark.parametrize(("health_port", "probed"), [("1", 1), ("65535", 65535), ("0", None), ("65536", None)])
def test_the_probe_takes_a_port_from_1_to_65535(health_port: str, probed: int | None) -> None:
    from health.probe import bound_address

    if probed is None:
        with pytest.raises(ValueError, match=f"^no port to probe: {health_port} "):
            bound_address({"HEALTH_PORT": health_port})
    else:
        assert bound_address({"HEALTH_PORT": health_port}) == ("127.0.0.1", probed)


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
    assert (tmp_path / "port").read_text() == f"{port} 127.0.0.1\n"
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


async def test_an_unwritten_port_file_with_health_port_0_is_not_said_to_fall_back_on_health_port(
    tmp_path: Path, capsys
) -> None:
    """Before: "the image's HEALTHCHECK probes HEALTH_PORT instead" whatever HEALTH_PORT, false for 0 (the probe
    has no port then: unhealthy for ever). Now the line says so; with a fixed port it keeps saying the fallback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        fixed = probe.getsockname()[1]
    for port, said in ((0, "cannot find the port"), (fixed, "probes HEALTH_PORT instead")):
        server = HealthServer(make_state(), host="127.0.0.1", port=port, port_file=tmp_path / "missing" / "port")
        try:
            await server.start()
        finally:
            await server.stop()
        (line,) = [line for line in capsys.readouterr().out.splitlines() if "Could not write HEALTH_PORT_FILE" in line]
        assert said in line, line


def this_machines_address() -> str | None:
    """The address this machine reaches others from (`hostname -I`'s first), None without one: a UDP socket
    connected to a documentation address picks it, and sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect(("198.51.100.1", 9))
        except OSError:
            return None
        address = udp.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def can_bind(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:  # through getaddrinfo, as the server binds: a link-local address's interface becomes its scope id
            sock.bind(socket.getaddrinfo(host, 0, family, socket.SOCK_STREAM)[0][4])
        except OSError:
            return False
    return True


def link_local_address() -> str | None:
    """An IPv6 link-local address of this machine with its interface (``fe80::1%eth0``), if it has one it can bind."""
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as table:
        for line in table:
            digits, *_, interface = line.split()
            address = ipaddress.IPv6Address(int(digits, 16))
            if address.is_link_local and can_bind(f"{address}%{interface}"):
                return f"{address}%{interface}"
    return None


SINGLE_ADDRESSES = [
    pytest.param(this_machines_address() or "", id="this-machines-address",
                 marks=pytest.mark.skipif(this_machines_address() is None, reason="no non-loopback address")),
    pytest.param("127.0.0.2", id="another-loopback-address"),
    pytest.param("::1", id="ipv6-loopback", marks=pytest.mark.skipif(not can_bind("::1"), reason="no IPv6")),
    # The port file named the address without its interface: "URLError: … [Errno 22] Invalid argument".
    pytest.param(link_local_address() or "", id="ipv6-link-local",
                 marks=pytest.mark.skipif(link_local_address() is None, reason="no IPv6 link-local address")),
]  # fmt: skip


@pytest.mark.parametrize("host", SINGLE_ADDRESSES)
@pytest.mark.parametrize("with_port_file", [True, False], ids=["port-file", "health-port"])
async def test_the_healthcheck_probes_the_one_address_the_server_listens_on(
    host: str, with_port_file: bool, tmp_path: Path
) -> None:
    """Before: the command always probed 127.0.0.1, so HEALTH_HOST=10.0.0.5 (one address, not every one) made
    the container unhealthy for ever: "URLError: <urlopen error [Errno 111] Connection refused>"."""
    server = HealthServer(make_state(), host=host, port=0, port_file=tmp_path / "port" if with_port_file else None)
    port = await server.start()
    try:
        health_port = "0" if with_port_file else str(port)
        assert await run_healthcheck(tmp_path / "port", health_port, health_host=host) == (0, "")
    finally:
        await server.stop()


@pytest.mark.parametrize(("host", "probed"), [("0.0.0.0", "127.0.0.1"), ("::", "::1")])
async def test_a_server_on_every_address_is_probed_on_loopback(host: str, probed: str, tmp_path: Path) -> None:
    if not can_bind(probed):
        pytest.skip("no IPv6")
    server = HealthServer(make_state(), host=host, port=0, port_file=tmp_path / "port")
    port = await server.start()
    try:
        assert (tmp_path / "port").read_text() == f"{port} {probed}\n"
        assert await run_healthcheck(tmp_path / "port", health_host=host) == (0, "")
    finally:
        await server.stop()


async def test_the_healthcheck_reads_the_variables_in_any_case_as_the_worker_does(tmp_path: Path) -> None:
    """The worker's settings read health_port as HEALTH_PORT. Before: the probe read HEALTH_PORT alone, probed
    8000 while the server listened on health_port's port, and the container was unhealthy forever."""
    server = HealthServer(make_state(), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        answer = await run_healthcheck_with({"health_host": "127.0.0.1", "Health_Port": str(port)}, tmp_path)
    finally:
        await server.stop()
    assert answer == (0, "")


async def test_a_port_file_that_cannot_be_written_leaves_the_healthcheck_on_health_port(tmp_path: Path) -> None:
    """The server says so when it cannot write HEALTH_PORT_FILE: "the image's HEALTHCHECK probes HEALTH_PORT instead".
    Before: it did only when the file was missing; under a file (ENOTDIR) or a folder in its place, the probe
    failed on reading it, "unhealthy: NotADirectoryError", for a server answering 200."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    for port_file in (tmp_path / "a-file" / "port", tmp_path / "a-folder"):
        server = HealthServer(make_state(), host="127.0.0.1", port=0, port_file=port_file)
        port = await server.start()
        variables = {"HEALTH_HOST": "127.0.0.1", "HEALTH_PORT": str(port), "HEALTH_PORT_FILE": str(port_file)}
        try:
            answer = await run_healthcheck_with(variables, tmp_path)
        finally:
            await server.stop()
        assert answer == (0, "")


@pytest.mark.parametrize("port_file", [".", "/"])
async def test_a_port_file_path_with_no_file_name_is_an_error_line_not_a_crash(port_file: str, capsys) -> None:
    """Before: HEALTH_PORT_FILE=. or / raised ValueError ("has an empty name") out of start(): the worker ended in
    a traceback, exit 1, where any other unwritable port file is the error line below."""
    server = HealthServer(make_state(), host="127.0.0.1", port=0, port_file=Path(port_file))
    try:
        assert await server.start() > 0
    finally:
        await server.stop()
    assert "Could not write HEALTH_PORT_FILE" in capsys.readouterr().out


async def test_without_a_port_file_health_port_is_read_as_the_worker_reads_it(tmp_path: Path) -> None:
    """The worker takes ' 8000 ' and '8000.0' for 8000. Before: the probe went to 'http:// 127.0.0.1:8000/health'
    or refused '8000.0' (ValueError): unhealthy, exit 1, for a server answering 200."""
    server = HealthServer(make_state(), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        for written in (f" {port} ", f"{port}\t", f"{port}.0"):
            assert await run_healthcheck(tmp_path / "none", health_port=written) == (0, ""), written
    finally:
        await server.stop()
