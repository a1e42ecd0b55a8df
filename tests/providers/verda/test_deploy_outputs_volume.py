"""OUTPUTS_PATH must lie on a shared volume the spec mounts: elsewhere, every result is delivered to the replica's
own disk, reported completed, and lost when the replica goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.deploy.command import deploy_main
from scaler.deploy.spec import build_body, load_spec, unmounted_folders
from standins.verda import FakeVerda

from ..conftest import edited_spec

OUTPUTS_MOUNT = (
    '[[volume_mounts]]\ntype = "shared"                            # the SFS volume where results land: it outlives '
    'the replica\nmount_path = "/outputs"\nvolume_id = ""                             # SFS volume id; or set '
    "VERDA_OUTPUTS_VOLUME_ID\n"
)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        # The scratch disk, a typo, a path that leaves the volume: each a folder the container makes and writes.
        ('OUTPUTS_PATH = "/outputs"', 'OUTPUTS_PATH = "/data/outputs"', "env.OUTPUTS_PATH"),
        ('OUTPUTS_PATH = "/outputs"', 'OUTPUTS_PATH = "/output"', "env.OUTPUTS_PATH"),
        ('OUTPUTS_PATH = "/outputs"', 'OUTPUTS_PATH = "/outputs/../data"', "env.OUTPUTS_PATH"),
        # The outputs volume taken out of the spec: the worker's default /outputs is the image's own folder.
        (OUTPUTS_MOUNT, "", "env.OUTPUTS_PATH"),
    ],
)
async def test_results_on_no_shared_volume_are_refused_before_anything_is_sent(
    fake: FakeVerda, spec_path: Path, deploy_env, tmp_path: Path, capsys, old, new, field
) -> None:
    spec = edited_spec(tmp_path, old, new)

    code = await deploy_main(["--spec", str(spec)], deploy_env)

    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{field}: no shared volume is mounted at " in err, err
    assert "lost with the replica" in err, err
    assert fake.requests == []


@pytest.mark.parametrize(("new", "delivered_to"), [
    ('OUTPUTS_PATH = "/outputs/results"\n', "/outputs/results"),
    ("", None),  # unset: the worker's default, /outputs, where the volume is
])
def test_results_on_the_outputs_volume_are_deployed(spec_path: Path, deploy_env, tmp_path: Path, new, delivered_to
                                                    ) -> None:
    spec = load_spec(edited_spec(tmp_path, 'OUTPUTS_PATH = "/outputs"\n', new), deploy_env)

    assert unmounted_folders(spec) == []
    env = {e["name"]: e["value_or_reference_to_secret"] for e in build_body(spec)["containers"][0]["env"]}
    assert env.get("OUTPUTS_PATH") == delivered_to


def test_an_outputs_path_from_the_environment_is_judged_and_named_there(
    spec_path: Path, deploy_env, tmp_path: Path
) -> None:
    path = edited_spec(tmp_path, 'OUTPUTS_PATH = "/outputs"\n', "")
    path.write_text(path.read_text().replace('names = ["QUEUE_MANAGER_URL"]',
                                             'names = ["QUEUE_MANAGER_URL", "OUTPUTS_PATH"]'))

    spec = load_spec(path, {**deploy_env, "OUTPUTS_PATH": "/data/outputs"})

    assert [p.split(":")[0] for p in unmounted_folders(spec)] == ["env_from_environment.OUTPUTS_PATH"]
