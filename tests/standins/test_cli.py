"""The simulator as a child process launched with ComfyUI's own command line."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_cli_starts_late_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    argv = [
        "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--output-directory", str(tmp_path / "out"),
        "--temp-directory", str(tmp_path / "tmp"), "--extra-model-paths-config", str(tmp_path / "paths.yaml"),
        "--disable-auto-launch", "--preview-method", "auto", "--node-seconds", "ImageBlur=0.2",
        "--startup-delay", "0.5",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "standins.comfyui", *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        started = time.monotonic()
        refused_at_first = False
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                try:
                    response = await client.get(f"http://127.0.0.1:{port}/system_stats")
                    break
                except httpx.ConnectError:
                    refused_at_first = True
                    assert time.monotonic() - started < 10, "simulator never came up"
                    await asyncio.sleep(0.05)
        assert refused_at_first
        assert time.monotonic() - started >= 0.5
        stats = response.json()
        assert stats["system"]["comfyui_version"] == "0.8.0"
        assert stats["system"]["argv"] == ["main.py", *argv]
        assert (tmp_path / "tmp" / "temp").is_dir(), "as ComfyUI, previews go to <--temp-directory>/temp"
        process.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert "Starting server" in stdout.decode()
    assert f"To see the GUI go to: http://127.0.0.1:{port}" in stdout.decode()
