"""The bare worker (comfy-worker) given a HEALTH_PORT below 1024 without the right to bind it (uid 10001)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..conftest import CAP_NET_BIND_SERVICE, run_module_to_exit, without_capabilities
from .test_lifecycle import REPO, _env

FIRST_UNPRIVILEGED = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())


@pytest.mark.skipif(FIRST_UNPRIVILEGED <= 80, reason="any user may bind port 80 here (ip_unprivileged_port_start)")
async def test_a_health_port_below_1024_is_a_configuration_error_naming_the_cause(tmp_path: Path) -> None:
    """Before: exit 1, blaming another process holding HEALTH_PORT: a restart loop chasing a process that does not
    exist. Now exit 2 (no restart mends it), saying what to set."""
    env = _env(QUEUE_MANAGER_URL="http://127.0.0.1:9", HEALTH_PORT="80", HEALTH_HOST="127.0.0.1", LOG_FORMAT="json",
               OUTPUTS_PATH=tmp_path / "out")
    code, err = await run_module_to_exit("worker", env=env, cwd=REPO, timeout_s=30,
                                         preexec_fn=without_capabilities(CAP_NET_BIND_SERVICE))
    assert code == 2, err[-2000:]
    [failed] = [json.loads(line) for line in err.splitlines() if "Health server cannot listen" in line]
    assert "HEALTH_PORT to 1024 or above" in failed["hint"] and "another process" not in failed["hint"], failed
