"""`--provider runpod status` (and `apply`, which shows the pods too) read the pod list, nothing else."""

from __future__ import annotations

import pytest

from scaler.deploy.command import deploy_main
from scaler.deploy.runpod import backend_from_spec
from scaler.deploy.spec import DEFAULT_SPEC_PATH
from standins.runpod import FakeRunPod

from .test_deploy import NAME, deploy_env, runpod_args

__all__ = ["deploy_env"]  # the fixture, used by name


@pytest.mark.parametrize("action", [("status",), ()], ids=["status", "apply"])
async def test_showing_the_pods_asks_no_pods_health(fake: FakeRunPod, deploy_env, capsys, action) -> None:
    """Before: each RUNNING pod's /health was asked through RunPod's proxy (`status`: on port 8000 whatever the
    spec's healthcheck_port), and the answers shown nowhere: 2 proxied requests for 2 pods, now 0."""
    backend = backend_from_spec(DEFAULT_SPEC_PATH, deploy_env)
    try:
        await backend.apply(2)
    finally:
        await backend.aclose()
    assert [pod.status for pod in fake.live_pods()] == ["RUNNING", "RUNNING"]
    fake.proxy_authorizations.clear()
    capsys.readouterr()
    assert await deploy_main(runpod_args(*action), deploy_env) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "pods: 2 live" in out and out.count(f" {NAME}-") == 2, out
    assert fake.proxy_authorizations == [], "no pod's /health asked"
