"""docker-compose.serverless.yml as a compose user runs it, read without a YAML library (one value a line)."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.serverless.yml"
QUEUE_MANAGER_PORT = "8080"


def service_lines(name: str) -> list[str]:
    """The lines of one service, up to the next service or top-level key."""
    lines = COMPOSE.read_text().splitlines()
    start = lines.index(f"  {name}:")
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^ {0,2}\S", lines[i])), len(lines))
    return lines[start + 1:end]


def healthcheck_command(service: str, port: int) -> list[str]:
    """The service's healthcheck command (CMD form) as run on this host: the venv's Python, the given port."""
    test = next(line for line in service_lines(service) if line.strip().startswith("test:"))
    form, *argv = json.loads(test.split("test:", 1)[1])
    assert form == "CMD", test
    return [sys.executable if arg == "python" else arg.replace(QUEUE_MANAGER_PORT, str(port)) for arg in argv]


def test_queue_manager_healthcheck_bypasses_the_containers_http_proxy(monkeypatch, tmp_path):
    """Docker passes ~/.docker/config.json's proxies into every container as HTTP_PROXY; the healthcheck went
    through it to 127.0.0.1, reported a healthy queue manager unhealthy, and the worker (depends_on healthy) never
    started."""
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    checks = importlib.import_module("image_test.checks")
    queue = checks.QueueManager(tmp_path)
    dead_proxy = f"http://127.0.0.1:{checks.free_loopback_port()}"
    env = {**os.environ, "HTTP_PROXY": dead_proxy, "http_proxy": dead_proxy, "PYTHONPATH": str(REPO)}
    for name in ("NO_PROXY", "no_proxy"):
        env.pop(name, None)
    command = healthcheck_command("queue-manager", queue.port)
    try:
        up = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
    finally:
        queue.close()
    down = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert up.returncode == 0, up.stderr
    assert down.returncode != 0  # and a queue manager that is not there is unhealthy


def worker_setting(line: str) -> tuple[str, str] | None:
    """(variable, the value it has when the shell leaves it unset) of an environment line `NAME: ${NAME:-default}`."""
    found = re.fullmatch(r"\s*([A-Z_]+): \$\{\1:-([^}]*)\}\s*(#.*)?", line)
    return (found[1], found[2]) if found else None


def test_a_worker_that_exits_cleanly_is_started_again():
    """SERVERLESS_MODE=true in the shell: the worker exited 0 after its idle polls, `restart: on-failure` left it
    stopped, and every job submitted later stayed queued for ever."""
    lines = service_lines("worker")
    assert "SERVERLESS_MODE" in dict(filter(None, map(worker_setting, lines)))
    restart = next(line.split(":", 1)[1].split("#")[0].strip() for line in lines if line.strip().startswith("restart:"))
    assert restart in ("always", "unless-stopped")


def test_the_workers_pass_through_settings_default_to_the_workers_own(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from worker.config import WorkerSettings

    passed = dict(filter(None, map(worker_setting, service_lines("worker"))))
    for variable in ("SERVERLESS_MAX_IDLE_POLLS", "SERVERLESS_JOB_LIMIT", "WORKER_POLL_INTERVAL"):
        assert variable in passed, f"{variable} is not passed to the worker"
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://queue-manager:8080")
    for variable in [name for name in os.environ if name.startswith(("SERVERLESS_", "WORKER_"))]:
        monkeypatch.delenv(variable)
    defaults = WorkerSettings(_env_file=None).model_dump(exclude={"worker_id"})  # a random one each time
    from_compose = WorkerSettings(_env_file=None, **passed).model_dump(exclude={"worker_id"})
    assert from_compose == defaults
