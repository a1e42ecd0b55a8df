"""A worker given a queue token (or a URL with a password) and a plain http:// QUEUE_MANAGER_URL to another machine
sent the credentials in clear on every poll, unsaid. It now warns once at start, naming QUEUE_MANAGER_URL; it does not
refuse: a docker-compose service name on a private network is a common, trusted setup."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-queue-token-57"
WARNING = "Queue manager credentials travel in clear"


async def _start_lines(tmp_path: Path, queue_url: str, token: str | None) -> list[dict]:
    """The worker's log lines up to its exit, the health port taken so that it exits 1 right after its start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_MANAGER", "SERVERLESS", "WORKER_"))}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env.update(QUEUE_MANAGER_URL=queue_url, OUTPUTS_PATH=str(tmp_path / "out"), HEALTH_HOST="127.0.0.1",
                   HEALTH_PORT=str(taken.getsockname()[1]), LOG_FORMAT="json", PYTHONPATH=str(REPO))
        if token:
            env["QUEUE_MANAGER_TOKEN"] = token
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, err
    assert TOKEN.encode() not in err and b"hunter2-57" not in err
    return [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]


@pytest.mark.parametrize(
    ("queue_url", "token"),
    [("http://queue-manager:8080", TOKEN), ("http://worker:hunter2-57@10.0.0.5:8080", None)],
    ids=["token", "url-password"],
)
async def test_credentials_sent_in_clear_to_another_machine_are_warned_once_naming_the_variable(
    tmp_path: Path, queue_url: str, token: str | None
):
    lines = await _start_lines(tmp_path, queue_url, token)
    [warned] = [line for line in lines if line["event"] == WARNING]
    assert warned["level"] == "warning" and warned["variable"] == "QUEUE_MANAGER_URL"
    assert "https://" in warned["fix"]


@pytest.mark.parametrize(
    ("queue_url", "token"),
    [("https://queue.example.com", TOKEN), ("http://127.0.0.1:8080", TOKEN), ("http://queue-manager:8080", None)],
    ids=["https", "loopback", "no-credentials"],
)
async def test_no_warning_when_nothing_travels_in_clear(tmp_path: Path, queue_url: str, token: str | None):
    lines = await _start_lines(tmp_path, queue_url, token)
    assert [line["event"] for line in lines if line["event"] == WARNING] == []
    assert any(line["event"] == "Health server cannot listen; exiting" for line in lines)
