"""An empty deploy variable is unset, on RunPod as on Verda (and as the scaler reads its own): a shared env file's
`RUNPOD_REGISTRY=` or `VERDA_MODELS_VOLUME_ID=` must not replace what the spec says."""

from __future__ import annotations

from pathlib import Path

from scaler.deploy.runpod import ENV_OVERRIDES, build_pod_body, load_runpod_spec
from scaler.deploy.spec import DEFAULT_SPEC_PATH, SHARED_VOLUME_ENVS

from ..conftest import edited_spec
from .test_deploy import deploy_env  # noqa: F401 - the fixture

PRIVATE = 'registry = "cred-private-image"'


def test_empty_runpod_overrides_deploy_the_specs_values(deploy_env, tmp_path: Path) -> None:  # noqa: F811
    """Before: RUNPOD_REGISTRY= deployed the spec's private image as public (no registry credential): no pod could
    pull it; an empty RUNPOD_GPU or RUNPOD_CLOUD was refused as if the operator had set them."""
    spec_path = edited_spec(tmp_path, 'registry = ""', PRIVATE)
    given = build_pod_body(*load_runpod_spec(spec_path, deploy_env))
    unset = {variable: "" for variable in ENV_OVERRIDES if variable not in deploy_env}
    assert build_pod_body(*load_runpod_spec(spec_path, {**deploy_env, **unset})) == given
    assert given["registry"] == "cred-private-image"


def test_empty_verda_volume_ids_are_still_not_needed_on_runpod(deploy_env) -> None:  # noqa: F811
    """Before: VERDA_MODELS_VOLUME_ID= (from an env file shared with a Verda deploy) replaced the placeholder that
    spares RunPod those ids, and the load was refused naming a variable RunPod never uses."""
    empty = {variable: "" for variable in SHARED_VOLUME_ENVS.values()}
    load_runpod_spec(DEFAULT_SPEC_PATH, {**deploy_env, **empty})
