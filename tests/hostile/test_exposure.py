"""What the shipped files publish: nothing reaches other machines unless the operator opens it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.serverless.yml"


def published_ports(text: str) -> list[str]:
    """The entries of every ``ports:`` list, with ``${VAR:-default}`` read as its default (VAR unset)."""
    entries, indent = [], None
    for line in text.splitlines():
        depth = len(line) - len(line.lstrip())
        if line.strip() == "ports:":
            indent = depth
            continue
        if indent is not None and line.strip().startswith("- ") and depth > indent:
            entry = line.strip()[2:].split("#")[0].strip().strip("\"'")
            entries.append(re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", entry))
        elif line.strip():
            indent = None
    return entries


def test_compose_publishes_every_port_on_loopback_only_by_default():
    ports = published_ports(COMPOSE.read_text())
    assert len(ports) == 2, ports  # the queue manager (8080) and the worker's health server (8000)
    for entry in ports:
        host, _, _ = entry.partition(":")
        assert host == "127.0.0.1", f"{entry!r} publishes on every interface; the queue has no token by default"


def test_the_port_reader_sees_an_unbound_mapping():
    text = "services:\n  a:\n    ports:\n      - \"8080:8080\"\n      - \"${X:-127.0.0.1}:1:1\"\n    volumes: []\n"
    assert published_ports(text) == ["8080:8080", "127.0.0.1:1:1"]
