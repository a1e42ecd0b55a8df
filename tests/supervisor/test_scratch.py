"""At start, ComfyUI's output, temp and input folders on the scratch disk are emptied: a container restarted in
place (scratch volume kept) must not find ComfyUI's full disk again, nor the images a killed run's job carried.
Nothing else is touched."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from queue_manager import QueueManagerServer
from supervisor.config import SupervisorSettings, load_supervisor_settings
from supervisor.model_paths import write_model_paths
from supervisor.scratch import empty_scratch_folders

from ..conftest import NOBODY, run_as_nobody
from .test_supervisor_with_simulator import job_status, submit


def settings(tmp_path: Path, **env: str) -> SupervisorSettings:
    return load_supervisor_settings(
        **{
            "COMFYUI_COMMAND": sys.executable,
            "SCRATCH_DIR": str(tmp_path / "data"),
            "MODELS_DIR": str(tmp_path / "models"),
            **env,
        }
    )


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def tree(root: Path) -> dict[str, int | str]:
    """Every entry under root: a file's size, a link's target, a folder's "dir"."""
    entries: dict[str, int | str] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            entries[name] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            entries[name] = "dir"
        else:
            entries[name] = path.stat().st_size
    return entries


@pytest.fixture
def untouchable(tmp_path: Path) -> dict[str, Path]:
    """What must survive: the results volume, the models, ComfyUI's user folder (its settings and database)."""
    return {
        "result": write(tmp_path / "outputs" / "alice" / "job-1" / "ComfyUI_00001_.png", 300),
        "model": write(tmp_path / "models" / "checkpoints" / "sd.safetensors", 700),
        "database": write(tmp_path / "data" / "comfyui" / "user" / "comfyui.db", 40),
    }


def test_output_temp_and_input_are_emptied_and_nothing_else_is_touched(tmp_path: Path, untouchable) -> None:
    comfyui = tmp_path / "data" / "comfyui"
    write(comfyui / "input" / "alice" / "photo.png", 50)  # a job's image a killed run left
    write(comfyui / "output" / "ComfyUI_00001_.png", 1000)
    write(comfyui / "output" / "sub" / "deeper" / "video_00001_.mp4", 2000)
    write(comfyui / "output" / ".ComfyUI_00002_.png.partial", 10)
    write(comfyui / "temp" / "ComfyUI_temp_abcde_00001_.png", 100)
    # Links lead out of the folders: each link goes, what it points at stays.
    (comfyui / "output" / "to-a-result").symlink_to(untouchable["result"])
    (comfyui / "output" / "to-the-models").symlink_to(tmp_path / "models", target_is_directory=True)
    (comfyui / "temp" / "dangling").symlink_to(tmp_path / "nowhere")
    before = {name: tree(tmp_path / name) for name in ("outputs", "models")}
    emptied = ("output", "temp", "input")
    before["comfyui"] = {k: v for k, v in tree(comfyui).items() if not k.startswith(emptied)}

    removed = empty_scratch_folders(settings(tmp_path), tmp_path / "outputs")

    assert all(tree(comfyui / folder) == {} for folder in emptied)
    assert all((comfyui / folder).is_dir() for folder in emptied), "the folders themselves stay"
    assert {name: tree(tmp_path / name) for name in ("outputs", "models")} == {
        name: before[name] for name in ("outputs", "models")
    }
    assert {k: v for k, v in tree(comfyui).items() if not k.startswith(emptied)} == before["comfyui"]
    assert all(path.read_bytes() for path in untouchable.values())
    link_bytes = sum(len(str(target)) for target in (untouchable["result"], tmp_path / "models", tmp_path / "nowhere"))
    assert dataclasses.asdict(removed) == {
        "files": 5 + 3,
        "subfolders": 3,
        "bytes": 3160 + link_bytes,
        "not_removed": 0,
        "first_error": None,
    }


def test_an_output_folder_the_operator_chose_is_left_and_said_why(tmp_path: Path, capsys) -> None:
    persistent = tmp_path / "persistent-results"
    kept_file = write(persistent / "ComfyUI_00001_.png", 10)
    preview = write(tmp_path / "data" / "comfyui" / "temp" / "preview.png", 10)

    removed = empty_scratch_folders(settings(tmp_path, COMFYUI_OUTPUT_DIR=str(persistent)), tmp_path / "outputs")

    assert kept_file.exists()
    assert not preview.exists() and removed.files == 1, "the temp folder is still the container's own"
    assert "COMFYUI_OUTPUT_DIR names a folder of the operator's" in capsys.readouterr().out


def test_an_input_folder_the_operator_chose_is_left_and_said_why(tmp_path: Path, capsys) -> None:
    uploads = write(tmp_path / "uploads" / "alice" / "photo.png", 10)
    config = settings(tmp_path, COMFYUI_INPUT_DIR=str(uploads.parent.parent))
    own_input = write(tmp_path / "data" / "comfyui" / "input" / "photo.png", 10)  # ComfyUI does not use it now

    removed = empty_scratch_folders(config, tmp_path / "outputs")

    assert uploads.exists() and own_input.exists() and removed.files == 0
    assert "COMFYUI_INPUT_DIR names a folder of the operator's" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["scratch inside OUTPUTS_PATH", "models inside the output folder"])
def test_a_folder_that_overlaps_the_results_or_the_models_is_left(tmp_path: Path, layout: str, capsys) -> None:
    if layout == "scratch inside OUTPUTS_PATH":
        config, outputs = settings(tmp_path, SCRATCH_DIR=str(tmp_path / "outputs" / "scratch")), tmp_path / "outputs"
        reason = "it is OUTPUTS_PATH, inside it or holds it"
    else:
        config = settings(tmp_path, MODELS_DIR=str(tmp_path / "data" / "comfyui" / "output" / "models"))
        outputs, reason = tmp_path / "outputs", "it is MODELS_DIR, inside it or holds it"
    result = write(config.output_dir / "models" / "x.png", 10)

    empty_scratch_folders(config, outputs)

    assert result.exists()
    assert reason in capsys.readouterr().out


def test_an_output_folder_that_is_a_symbolic_link_is_not_followed(tmp_path: Path, capsys) -> None:
    elsewhere = write(tmp_path / "elsewhere" / "ComfyUI_00001_.png", 10)
    output = tmp_path / "data" / "comfyui" / "output"
    output.parent.mkdir(parents=True)
    output.symlink_to(elsewhere.parent, target_is_directory=True)

    removed = empty_scratch_folders(settings(tmp_path), tmp_path / "outputs")

    assert elsewhere.exists() and removed.files == 0
    assert "it is a symbolic link" in capsys.readouterr().out


def empty_as_the_container_user(config: SupervisorSettings, outputs: Path) -> dict[str, object]:
    """Run the emptying as nobody (root removes anything), as the container's uid 10001 runs."""
    return run_as_nobody(lambda: dataclasses.asdict(empty_scratch_folders(config, outputs)))


def test_what_cannot_be_removed_is_counted_and_the_rest_goes(shared_tmp: Path) -> None:
    config = settings(shared_tmp)
    output = config.output_dir
    removable = [write(output / "ComfyUI_00001_.png", 5), write(output / "sub" / "b.png", 5)]
    stuck = write(output / "left-by-root" / "a.png", 7)
    if os.getuid() == 0:
        for path in (output, output / "sub", *removable):
            os.chown(path, NOBODY, NOBODY)
    else:
        (output / "left-by-root").chmod(0o555)
    for folder in (shared_tmp / "data", shared_tmp / "data" / "comfyui"):
        folder.chmod(0o755)

    removed = empty_as_the_container_user(config, shared_tmp / "outputs")

    (output / "left-by-root").chmod(0o755)
    assert stuck.exists() and not any(path.exists() for path in removable)
    assert not (output / "sub").exists()
    assert removed == {
        "files": 2,
        "subfolders": 1,
        "bytes": 10,
        "not_removed": 1,
        "first_error": f"{stuck}: Permission denied",
    }


async def test_the_supervisor_empties_them_before_comfyui_starts(
    base_env, run_supervisor, tmp_path: Path, untouchable
) -> None:
    """As a restarted container finds its scratch volume: ComfyUI's folders full of an earlier run's files."""
    comfyui = tmp_path / "data" / "comfyui"
    write(comfyui / "output" / "ComfyUI_00001_.png", 4096)
    write(comfyui / "output" / "sub" / "video_00001_.mp4", 8192)
    write(comfyui / "temp" / "ComfyUI_temp_abcde_00001_.png", 1024)
    write(comfyui / "input" / "alice" / "photo.png", 512)
    kept = {name: tree(tmp_path / name) for name in ("outputs", "models")}
    supervisor = await run_supervisor(base_env)

    await supervisor.wait_until(lambda: _ready(supervisor), timeout_s=15, what="/ready 200")
    supervisor.signal(signal.SIGTERM)
    assert await supervisor.wait() == 0

    assert tree(comfyui / "output") == {} and tree(comfyui / "temp") == {}
    assert "alice" not in tree(comfyui / "input"), "ComfyUI makes its own subfolders there (3d) once started"
    assert {name: tree(tmp_path / name) for name in ("outputs", "models")} == kept
    assert all(path.exists() for path in untouchable.values())
    events = supervisor.log_events()
    names = [event["event"] for event in events]
    assert names.index("supervisor.scratch_emptied") < names.index("comfyui.started")
    [line] = [event for event in events if event["event"] == "supervisor.scratch_emptied"]
    assert (line["level"], line["files"], line["subfolders"]) == ("info", 4, 2)
    assert line["bytes"] == 4096 + 8192 + 1024 + 512
    assert line["folders"] == [str(comfyui / "output"), str(comfyui / "input"), str(comfyui / "temp")]


async def _ready(supervisor) -> bool:
    return await supervisor.status_of("/ready") == 200


@pytest.fixture
def full_scratch_disk(tmp_path: Path) -> Iterator[Path]:
    """SCRATCH_DIR on a 1 MiB tmpfs that an earlier run of the container filled with ComfyUI results."""
    scratch = tmp_path / "data"
    scratch.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(scratch)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        write_model_paths(scratch / "comfyui" / "extra_model_paths.yaml", tmp_path / "models")
        for folder in ("output", "temp"):
            (scratch / "comfyui" / folder).mkdir()
        video = scratch / "comfyui" / "output" / "video_00001_.mp4"
        with open(video, "wb", buffering=0) as out, contextlib.suppress(OSError):  # until No space left on device
            while True:
                out.write(b"x" * 4096)
        yield scratch
    finally:
        subprocess.run(["umount", "--lazy", str(scratch)], check=False)


async def test_a_container_restarted_in_place_on_a_full_scratch_disk_runs_the_next_job(
    base_env, run_supervisor, queue_manager: QueueManagerServer, load_workflow, full_scratch_disk: Path
) -> None:
    """Before: the job was handed back with "ComfyUI's disk failed" and the container exited 1, on every restart,
    until the job had used its 3 attempts."""
    job_id = await submit(queue_manager, load_workflow("quick.json"))
    supervisor = await run_supervisor(base_env)

    await supervisor.wait_until(
        lambda: _has_status(queue_manager, job_id, "completed"), timeout_s=20, what="the job to complete"
    )
    supervisor.signal(signal.SIGTERM)
    assert await supervisor.wait() == 0
    [line] = [event for event in supervisor.log_events() if event["event"] == "supervisor.scratch_emptied"]
    assert line["files"] == 1 and line["bytes"] > 900_000


async def _has_status(queue_manager: QueueManagerServer, job_id: str, status: str) -> bool:
    return (await job_status(queue_manager, job_id))["status"] == status


def test_a_lock_file_that_is_not_utf8_still_names_its_holder(tmp_path: Path) -> None:
    """Before: a lock file holding bytes that are not UTF-8 (written by another tool, a hostname in another
    encoding, a damaged disk) made the read of its holder raise UnicodeDecodeError: a traceback at start instead of
    the message naming the container in the way."""
    from supervisor.scratch_lock import LOCK_NAME, ScratchInUse, lock_scratch

    lock_file = tmp_path / LOCK_NAME
    lock_file.write_bytes(b"host caf\xe9\xff, pid 4321\n")
    with lock_file.open("rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ScratchInUse, match=r"in use by another running container \(host caf.*, pid 4321\)"):
            lock_scratch(tmp_path)
