"""How a demo replica is started: the container's own supervisor with the ComfyUI simulator as its ComfyUI,
or, when a real ComfyUI is given, a bare worker pointed at it."""

from __future__ import annotations

import os
import shlex
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from scaler.providers.local import worker_environment

_DIES_WITH_DEMO = (sys.executable, "-m", "demo.dies_with_demo")
SUPERVISOR_COMMAND = (*_DIES_WITH_DEMO, sys.executable, "-m", "supervisor")
WORKER_COMMAND = (*_DIES_WITH_DEMO, sys.executable, "-m", "worker")
# The demo kills a replica this long after asking it to stop; its worker plans its hand back within it.
REPLICA_STOP_S = 15.0


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker_env(
    queue_url: str, outputs: Path, *, idle_polls: int, poll_interval_s: float, token: str | None = None
) -> dict[str, str]:
    """What every replica shares: the queue (and its worker token), where results go, serverless behaviour."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
    env = worker_environment({name: os.environ[name] for name in keep if name in os.environ}, queue_url, token)
    env.update({
        "OUTPUTS_PATH": str(outputs),
        "SERVERLESS_MODE": "true",
        "SERVERLESS_MAX_IDLE_POLLS": str(idle_polls),
        "WORKER_POLL_INTERVAL": str(poll_interval_s),
        "SHUTDOWN_GRACE_S": "5",
        "PLATFORM_KILL_DELAY_S": str(REPLICA_STOP_S),
        "COMFYUI_STARTUP_TIMEOUT_S": "60",
        "INFERENCE_PROVIDER": "local-demo",
        "LOG_FORMAT": "json",
    })
    return env


class SimulatedReplicas:
    """Each replica is a whole container's worth: supervisor + its own ComfyUI simulator on its own port."""

    command = SUPERVISOR_COMMAND

    def __init__(self, scratch: Path, node_seconds: float) -> None:
        self.scratch = scratch
        self.comfyui_command = shlex.join(
            [sys.executable, "-m", "standins.comfyui", "--default-node-seconds", str(node_seconds), "--cache-none"]
        )

    def env_for(self, replica_id: str) -> Mapping[str, str]:
        models = self.scratch / "models"
        models.mkdir(parents=True, exist_ok=True)
        return {
            "COMFYUI_COMMAND": self.comfyui_command,
            "COMFYUI_URL": f"http://127.0.0.1:{free_loopback_port()}",
            "SCRATCH_DIR": str(self.scratch / replica_id),
            "MODELS_DIR": str(models),
        }


class RealComfyUIReplicas:
    """Workers sharing one real ComfyUI (which runs one prompt at a time: use --max-replicas 1)."""

    command = WORKER_COMMAND

    def __init__(self, comfyui_url: str) -> None:
        self.comfyui_url = comfyui_url

    def env_for(self, replica_id: str) -> Mapping[str, str]:
        return {"COMFYUI_URL": self.comfyui_url}
