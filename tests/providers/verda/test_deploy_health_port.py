"""The port Verda probes for health is the one the worker's health server listens on, wherever HEALTH_PORT is set."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

from .test_deploy import edited_spec

NAME = "comfyui-worker-serverless"
PORTS = "exposed_port = 8000\nhealthcheck_port = 8000"


async def test_a_health_check_port_with_health_port_unset_is_refused_before_any_call(
    fake: FakeVerda, deploy_env, tmp_path: Path, capsys
) -> None:
    """Before: HEALTH_PORT taken out of [env] and the probe moved to 9000 was deployed; the worker listens on its
    default 8000, so Verda's probe found nothing on 9000 and every replica was unhealthy, restarted and billed."""
    text = edited_spec(tmp_path, PORTS, "exposed_port = 9000\nhealthcheck_port = 9000").read_text()
    spec = tmp_path / "no-health-port.toml"
    spec.write_text(text.replace('HEALTH_PORT = "8000"\n', ""))
    assert await deploy_main(["--spec", str(spec)], deploy_env) == 2
    err = capsys.readouterr().err
    assert "HEALTH_PORT" in err and "healthcheck_port" in err and "8000" in err, err
    assert fake.requests == []


async def test_a_health_port_read_from_the_environment_must_be_the_probed_one(
    fake: FakeVerda, deploy_env, tmp_path: Path, capsys
) -> None:
    """Before: HEALTH_PORT listed in env_from_environment escaped the check made of [env] alone."""
    text = edited_spec(tmp_path, 'names = ["QUEUE_MANAGER_URL"]', 'names = ["QUEUE_MANAGER_URL", "HEALTH_PORT"]')
    spec = tmp_path / "health-port-from-env.toml"
    spec.write_text(text.read_text().replace('HEALTH_PORT = "8000"\n', ""))
    assert await deploy_main(["--spec", str(spec)], {**deploy_env, "HEALTH_PORT": "9000"}) == 2
    err = capsys.readouterr().err
    assert "env_from_environment.HEALTH_PORT" in err and "healthcheck_port" in err, err
    assert fake.requests == []


@pytest.mark.parametrize("written", [None, " 8000", "8000 ", "8000.0", "+8000"])
async def test_a_health_port_the_worker_reads_as_the_probed_one_is_deployed(
    fake: FakeVerda, deploy_env, tmp_path: Path, written: str | None
) -> None:
    """Unset, the worker listens on its default, the port probed. Before: " 8000" and "8000.0", which the worker
    reads as 8000, were refused, exit 2, "the worker's health server listens on  8000 ... every replica would be
    unhealthy"."""
    spec = edited_spec(tmp_path, 'HEALTH_PORT = "8000"\n', "" if written is None else f'HEALTH_PORT = "{written}"\n')
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


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.1.1"])
async def test_a_health_server_on_the_containers_loopback_is_refused_before_any_call(
    fake: FakeVerda, deploy_env, tmp_path: Path, host: str, capsys
) -> None:
    """Before: deployed; the health server listened inside the container only, Verda's probe from outside found
    nothing on 8000, and every replica was unhealthy, restarted and billed."""
    spec = edited_spec(tmp_path, 'HEALTH_PORT = "8000"', f'HEALTH_PORT = "8000"\nHEALTH_HOST = "{host}"')
    assert await deploy_main(["--spec", str(spec)], deploy_env) == 2
    err = capsys.readouterr().err
    assert "env.HEALTH_HOST" in err and "loopback" in err, err
    assert fake.requests == []


async def test_a_health_server_on_every_address_is_deployed(fake: FakeVerda, deploy_env, tmp_path: Path) -> None:
    spec = edited_spec(tmp_path, 'HEALTH_PORT = "8000"', 'HEALTH_PORT = "8000"\nHEALTH_HOST = "0.0.0.0"')
    assert await deploy_main(["--spec", str(spec)], deploy_env) == 0
    assert NAME in fake.deployments
