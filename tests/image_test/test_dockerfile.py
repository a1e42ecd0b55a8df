"""Every pip command in Dockerfile.serverless resolves its packages from docker/constraints.txt: a rebuild months
later installs (and builds with) the same versions. The project's wheel was built in an isolated environment
with whatever setuptools and wheel the index served that day."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pip_commands(dockerfile: str) -> list[str]:
    """Each `pip install` or `pip wheel` of the RUN steps, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    runs = [re.sub(r"^RUN +(--\S+ +)*", "", line) for line in joined.splitlines() if line.startswith("RUN ")]
    return [part.strip() for run in runs for part in run.split("&&") if re.search(r"\bpip (install|wheel)\b", part)]


def resolves_unpinned(command: str) -> bool:
    if "--constraint /opt/constraints.txt" in command:
        return False
    if "--no-deps" not in command:
        return True
    only_wheels = re.match(r"(\S*/)?pip install ", command) is not None and command.endswith(".whl")
    return not (only_wheels or "--no-build-isolation" in command)  # a build in isolation fetches its backend


def test_every_pip_command_in_the_dockerfile_uses_the_constraints():
    commands = pip_commands((REPO / "Dockerfile.serverless").read_text())
    assert len(commands) >= 5, commands
    assert [command for command in commands if resolves_unpinned(command)] == []


def test_the_build_backend_needs_only_what_the_wheel_stage_installs_pinned():
    """The wheel stage builds without isolation, with the pinned setuptools only (it builds wheels itself since
    70.1): a further build requirement was never installed there, and fetched unpinned by every other build."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    pinned = set(re.findall(r"^([A-Za-z0-9_.-]+)==", (REPO / "docker/constraints.txt").read_text(), re.MULTILINE))
    wheel_stage = (REPO / "Dockerfile.serverless").read_text().split(" AS wheel", 1)[1].split("\nFROM ", 1)[0]
    installed = {word for command in pip_commands(wheel_stage) if " install " in command for word in command.split()}
    names = [re.match(r"[A-Za-z0-9_.-]+", requirement)[0] for requirement in requires]
    assert [name for name in names if name not in pinned or name not in installed] == []
