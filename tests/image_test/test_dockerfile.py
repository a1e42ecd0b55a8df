"""Every pip command in Dockerfile.serverless resolves its packages from docker/constraints.txt: a rebuild months
later installs (and builds with) the same versions. The project's wheel was built in an isolated environment
with whatever setuptools and wheel the index served that day."""

from __future__ import annotations

import re
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
