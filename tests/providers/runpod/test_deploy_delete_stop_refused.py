"""`--provider runpod delete --yes` terminates every pod, also one whose stop RunPod refuses."""

from __future__ import annotations

from scaler.deploy.command import deploy_main
from scaler.deploy.runpod import backend_from_spec
from scaler.deploy.spec import DEFAULT_SPEC_PATH
from standins.runpod import FakeRunPod

from .test_deploy import deploy_env, runpod_args

__all__ = ["deploy_env"]  # the fixture, used by name


async def test_delete_terminates_a_pod_whose_stop_is_refused(fake: FakeRunPod, deploy_env, capsys) -> None:
    """Before: a pod whose stop RunPod refused (403, one of the answers it documents for a pod's action) ended
    `delete --yes` at its stop, exit 1, before any pod was terminated as it is: run again, the same, the pod billed
    on (2 pods, 1 refusing its stop: 1 left live at every run → 0, exit 0, the refusal said)."""
    backend = backend_from_spec(DEFAULT_SPEC_PATH, deploy_env)
    try:
        await backend.apply(2)
    finally:
        await backend.aclose()
    refusing, stopped = fake.live_pods()
    fake.fail_next(f"/pods/{refusing.id}/action", 403, method="POST", times=100)
    capsys.readouterr()
    assert await deploy_main(runpod_args("delete", "--yes"), deploy_env) == 0
    out, err = capsys.readouterr()
    assert fake.live_pods() == [] and fake.pods == {}
    assert "every pod terminated" in out
    assert "403" in err and f"/pods/{refusing.id}/action" in err
    assert fake.requests_to(f"/pods/{stopped.id}/action", "POST"), "the other pod stopped first"
