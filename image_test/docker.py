"""The Docker CLI, always the same binary against the same engine, with bounded waits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Debian's docker.io CLI (20.10) builds with the engine's built-in BuildKit; a newer CLI without the buildx
# plugin refuses to build at all, so this one is preferred when both are installed.
PREFERRED_CLI = Path("/usr/bin/docker")


class DockerError(RuntimeError):
    pass


def find_cli() -> str | None:
    if PREFERRED_CLI.exists():
        return str(PREFERRED_CLI)
    return shutil.which("docker")


@dataclass
class Docker:
    cli: str
    host: str | None = None  # DOCKER_HOST; None = the CLI's default engine
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        if self.host:
            self.env["DOCKER_HOST"] = self.host

    def run(self, *args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                [self.cli, *args], env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise DockerError(f"docker {' '.join(args[:3])} did not finish within {timeout_s:.0f} s") from exc
        if check and result.returncode != 0:
            raise DockerError(f"docker {' '.join(args[:3])} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def answers(self) -> bool:
        try:
            return self.run("version", "--format", "{{.Server.Version}}", timeout_s=10, check=False).returncode == 0
        except DockerError:
            return False

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.run("inspect", name).stdout)[0]

    def has_image(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def remove_container(self, name: str) -> None:
        self.run("rm", "--force", "--volumes", name, check=False)
