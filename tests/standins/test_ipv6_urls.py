"""Each stand-in started on an IPv6 address gives URLs a client can use: the address in brackets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from standins.comfyui import ComfyUISimulator
from standins.runpod import DEFAULT_API_KEY, FakeRunPod
from standins.verda import FakeVerda

from .test_cli import comfyui_argv, comfyui_process, stop_with_sigterm

GUI_LINE = "To see the GUI go to: "


def _ipv6_loopback() -> bool:
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            return False
    return True


pytestmark = pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def test_runpod_on_ipv6_answers_at_its_url_and_its_health_url(http: httpx.AsyncClient) -> None:
    """Before: url was http://::1:PORT/v2, which no client parses."""
    fake = FakeRunPod()
    await fake.start("::1")
    try:
        pods = await http.get(f"{fake.url}/pods", headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})
        health = await http.get(fake.health_url.format(pod_id="nopod", port=8000))
    finally:
        await fake.stop()
    assert fake.url.startswith("http://[::1]:")
    assert (pods.status_code, pods.json()) == (200, {"pods": []})
    assert health.status_code == 502, "the proxy's answer for a pod it does not know"


async def test_verda_on_ipv6_answers_at_its_url(http: httpx.AsyncClient) -> None:
    fake = FakeVerda()
    await fake.start("::1")
    try:
        credentials = {"grant_type": "client_credentials", "client_id": "test-id", "client_secret": "test-secret"}
        answer = await http.post(f"{fake.url}/oauth2/token", json=credentials)
    finally:
        await fake.stop()
    assert fake.url.startswith("http://[::1]:")
    assert "access_token" in answer.json()


async def test_comfyui_on_ipv6_answers_at_its_url(http: httpx.AsyncClient, tmp_path: Path) -> None:
    sim = ComfyUISimulator(tmp_path / "out")
    await sim.start("::1")
    try:
        answer = await http.get(f"{sim.url}/system_stats")
    finally:
        await sim.stop()
    assert sim.url == f"http://[::1]:{sim.port}"
    assert answer.json()["system"]["comfyui_version"] == "0.8.0"


async def test_comfyui_cli_on_ipv6_prints_a_gui_url_that_answers(http: httpx.AsyncClient, tmp_path: Path) -> None:
    """As ComfyUI prints it: `--listen ::1` gives "http://[::1]:PORT" (before: "http://::1:PORT")."""
    argv = comfyui_argv(tmp_path, 0, startup_delay_s=0)
    argv[argv.index("--listen") + 1] = "::1"
    async with comfyui_process(argv) as process:
        async with asyncio.timeout(10):
            while GUI_LINE not in (line := (await process.stdout.readline()).decode()):
                assert line, "the simulator ended before printing its URL"
        url = line.split(GUI_LINE, 1)[1].strip()
        answer = await http.get(f"{url}/system_stats")
        await stop_with_sigterm(process)
    assert url.startswith("http://[::1]:")
    assert answer.status_code == 200
