"""HEALTH_PORT is compared with the probed port as the worker reads it, not as the text written."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

from .test_deploy import edited_spec

NAME = "comfyui-worker-serverless"


@pytest.mark.parametrize("written", [" 8000", "8000 ", "8000.0", "+8000"])
async def test_a_health_port_the_worker_reads_as_the_probed_one_is_deployed(
    fake: FakeVerda, deploy_env, tmp_path: Path, written: str
) -> None:
    """Before: refused, exit 2, "the worker's health server listens on  8000 ... every replica would be unhealthy",
    though the worker reads " 8000" and "8000.0" as 8000, the port Verda probes."""
    spec = edited_spec(tmp_path, 'HEALTH_PORT = "8000"', f'HEALTH_PORT = "{written}"')
    assert await deploy_main(["--spec", str(spec)], deploy_env) == 0
    assert NAME in fake.deployments


@pytest.mark.parametrize("written", ["eight thousand", "", "8000.5", "0x1f40"])
async def test_a_health_port_the_worker_would_refuse_is_refused_as_the_worker_refuses_it(
    fake: FakeVerda, deploy_env, tmp_path: Path, written: str, capsys
) -> None:
    """Before: refused as a port other than the probed one ("listens on eight thousand"), not as what it is."""
    spec = edited_spec(tmp_path, 'HEALTH_PORT = "8000"', f'HEALTH_PORT = "{written}"')
    assert await deploy_main(["--spec", str(spec)], deploy_env) == 2
    err = capsys.readouterr().err
    assert "HEALTH_PORT: " in err and "worker would refuse this" in err, err
    assert fake.requests == []
