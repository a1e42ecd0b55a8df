"""The hint of a queue manager that cannot listen names the address as a client writes it."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from ..conftest import run_module_to_exit

REPO = Path(__file__).resolve().parents[2]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
async def test_a_taken_ipv6_port_is_named_in_brackets(tmp_path: Path) -> None:
    """Before: `--host ::1` on a taken port said "another process listens on ::1:PORT" (":::8080" for `--host ::`),
    an address no client or `ss` filter reads as host and port."""
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = await run_module_to_exit(
            "queue_manager", "--host", "::1", "--port", str(port), "--db", str(tmp_path / "q.db"),
            env={**os.environ, "LOG_FORMAT": "json"}, cwd=REPO, timeout_s=20,
        )  # fmt: skip
    assert code == 1, err
    [failed] = [json.loads(line) for line in err.splitlines() if '"queue_manager_failed"' in line]
    assert "address already in use" in failed["error"]
    assert f"another process listens on [::1]:{port}: stop it" in failed["hint"]
