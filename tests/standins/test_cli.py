"""The simulator as a child process launched with ComfyUI's own command line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comfyui_argv(tmp_path: Path, port: int, startup_delay_s: float) -> list[str]:
    return [
        "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--output-directory", str(tmp_path / "out"),
        "--temp-directory", str(tmp_path / "tmp"), "--extra-model-paths-config", str(tmp_path / "paths.yaml"),
        "--disable-auto-launch", "--preview-method", "auto", "--node-seconds", "ImageBlur=0.2",
        "--startup-delay", str(startup_delay_s),
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def comfyui_process(argv: list[str]) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "standins.comfyui", *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stop_with_sigterm(process: asyncio.subprocess.Process) -> str:
    """SIGTERM, then everything the process printed."""
    process.send_signal(signal.SIGTERM)
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=10)
    return stdout.decode()


async def test_cli_starts_late_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    argv = comfyui_argv(tmp_path, port, startup_delay_s=0.5)
    started = time.monotonic()  # before the child exists: its delay cannot have begun earlier
    async with comfyui_process(argv) as process, httpx.AsyncClient(timeout=2) as client:
        while True:
            try:
                response = await client.get(f"http://127.0.0.1:{port}/system_stats")
                break
            except httpx.ConnectError:
                assert time.monotonic() - started < 10, "simulator never came up"
                await asyncio.sleep(0.05)
        assert time.monotonic() - started >= 0.5
        stats = response.json()
        assert stats["system"]["comfyui_version"] == "0.8.0"
        assert stats["system"]["argv"] == ["main.py", *argv]
        assert (tmp_path / "tmp" / "temp").is_dir(), "as ComfyUI, previews go to <--temp-directory>/temp"
        stdout = await stop_with_sigterm(process)
    assert process.returncode == 0
    assert "Starting server" in stdout
    assert f"To see the GUI go to: http://127.0.0.1:{port}" in stdout


async def test_cli_refuses_connections_during_its_startup_delay_and_stops_in_it(tmp_path: Path) -> None:
    """As ComfyUI while it scans nodes and models: the process runs, its port is closed. The delay (60 s) is far
    longer than the test, so a simulator that ignored it would be listening by the time the test connects."""
    port = free_port()
    async with comfyui_process(comfyui_argv(tmp_path, port, startup_delay_s=60)) as process:
        async with asyncio.timeout(10):
            first_line = (await process.stdout.readline()).decode()
        assert first_line.startswith("Adding extra search path from"), first_line
        async with httpx.AsyncClient(timeout=2) as client:
            for _ in range(20):  # 2 s: a simulator that skipped the delay would bind its port well within them
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://127.0.0.1:{port}/system_stats")
                await asyncio.sleep(0.1)
        stdout = await stop_with_sigterm(process)
    assert process.returncode == 0
    assert "Starting server" not in stdout
