"""A GPU type id, network volume id or registry credential id that is blank or padded with spaces is refused naming
where it came from, before any call: RunPod has no such GPU type, volume or credential, and refuses each pod the
scaler would create with it."""

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

VOLUME = "vol-models"  # the fake's volume, as deploy_env gives it
PADDED = [" ", "   ", f" {GPU}", f"{GPU} "]
# (variable, field, a blank or padded value): the GPU's, and those of the two ids that were sent as given.
PADDED_IDS = [
    *(("RUNPOD_GPU", "gpu", gpu) for gpu in PADDED),
    ("RUNPOD_VOLUME_ID", "volume_id", " "),
    ("RUNPOD_VOLUME_ID", "volume_id", f" {VOLUME} "),
    ("RUNPOD_REGISTRY", "registry", " "),
    ("RUNPOD_REGISTRY", "registry", " my-registry-auth"),
]


@pytest.mark.parametrize("options", [[], ["--dry-run"]])
@pytest.mark.parametrize(("variable", "field", "value"), PADDED_IDS)
async def test_a_blank_or_padded_runpod_id_is_refused_naming_it_before_any_call(
    fake: FakeRunPod, deploy_env, capsys, variable: str, field: str, value: str, options: list[str]  # noqa: F811
) -> None:
    """Before: the dry-run printed it, exit 0. Apply with the GPU asked RunPod for its price (1 call) and said
    `runpod.gpu: RunPod has no GPU type ' '`, exit 1, never naming the variable; with RUNPOD_VOLUME_ID=" vol-models "
    it made 2 calls and said `network volume ' vol-models ' not found`, exit 1; with RUNPOD_REGISTRY=" " it made 3
    and said ready, exit 0, every pod's body then naming a registry credential " "."""
    code = await deploy_main(runpod_args(*options), {**deploy_env, variable: value})

    out, err = capsys.readouterr()
    assert code == 2, err
    assert f"runpod.{field}: blank, or a space at either end" in err and f"(from {variable})" in err, err
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


def test_a_blank_registry_in_the_spec_is_refused_naming_the_field(deploy_env, tmp_path: Path) -> None:  # noqa: F811
    spec = edited_spec(tmp_path, 'registry = ""', 'registry = " "')

    with pytest.raises(SpecError) as caught:
        load_runpod_spec(spec, deploy_env)

    assert [problem.split(":")[:2] for problem in caught.value.problems] == [
        ["runpod.registry", " blank, or a space at either end"]
    ]


def test_ids_with_inner_spaces_and_no_registry_are_taken(deploy_env) -> None:  # noqa: F811
    _, settings = load_runpod_spec(DEFAULT_SPEC_PATH, {**deploy_env, "RUNPOD_GPU": GPU, "RUNPOD_REGISTRY": ""})
    assert settings.gpu == GPU and settings.volume_id == VOLUME and settings.registry == ""
