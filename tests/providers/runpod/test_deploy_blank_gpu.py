"""A GPU type id that is blank or padded with spaces is refused naming where it came from, before any call: RunPod
has no such GPU type, and refuses each pod the scaler would create with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.deploy.command import deploy_main
from scaler.deploy.runpod import load_runpod_spec
from scaler.deploy.spec import DEFAULT_SPEC_PATH, SpecError
from standins.runpod import FakeRunPod

from ..conftest import edited_spec
from .conftest import GPU
from .test_deploy import deploy_env, runpod_args  # noqa: F401 - the fixture

PADDED = [" ", "   ", f" {GPU}", f"{GPU} "]


@pytest.mark.parametrize("options", [[], ["--dry-run"]])
@pytest.mark.parametrize("gpu", PADDED)
async def test_a_blank_or_padded_runpod_gpu_is_refused_naming_it_before_any_call(
    fake: FakeRunPod, deploy_env, capsys, gpu: str, options: list[str]  # noqa: F811
) -> None:
    """Before: the dry-run printed it, exit 0; apply asked RunPod for its price (1 call) and said `runpod.gpu: RunPod
    has no GPU type ' '`, exit 1, never naming the variable."""
    code = await deploy_main(runpod_args(*options), {**deploy_env, "RUNPOD_GPU": gpu})

    out, err = capsys.readouterr()
    assert code == 2, err
    assert "runpod.gpu: blank, or a space at either end" in err and "(from RUNPOD_GPU)" in err, err
    assert out == "" and fake.requests == []


@pytest.mark.parametrize("gpu", PADDED)
def test_a_blank_or_padded_gpu_in_the_spec_is_refused_naming_the_field(
    deploy_env, tmp_path: Path, gpu: str  # noqa: F811
) -> None:
    """The scaler builds its pods from the same load: it refused nothing, and RunPod refused every create."""
    spec = edited_spec(tmp_path, f'gpu = "{GPU}"', f'gpu = "{gpu}"')

    with pytest.raises(SpecError) as caught:
        load_runpod_spec(spec, deploy_env)

    assert caught.value.problems == [
        "runpod.gpu: blank, or a space at either end: RunPod has no such GPU type (its ids: GET /v2/catalog/gpus)"
    ]


def test_a_gpu_id_with_inner_spaces_is_taken(deploy_env) -> None:  # noqa: F811
    _, settings = load_runpod_spec(DEFAULT_SPEC_PATH, {**deploy_env, "RUNPOD_GPU": GPU})
    assert settings.gpu == GPU
