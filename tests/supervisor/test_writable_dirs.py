"""The start-up check on OUTPUTS_PATH and SCRATCH_DIR: a directory the process cannot write is named, with its owner,
mode, the uid the process runs as and the fix, on one line; and the supervisor exits 2 before starting anything.
The same for COMFYUI_INPUT_DIR, which the container only reads."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.__main__ import directory_problems
from supervisor.config import SupervisorSettings
from supervisor.writable_dirs import unreadable_directories, unwritable_directories
from worker.config import WorkerSettings

from ..conftest import NOBODY, run_as_nobody


def check_as_another_user(directories: dict[str, Path]) -> list[str]:
    """Run the check under a uid that does not own the directories: nobody when we are root (root writes
    anywhere), ourselves with the directories made read-only otherwise."""
    if os.getuid() != 0:
        for path in directories.values():
            if path.exists():
                path.chmod(0o555)
    return run_as_nobody(lambda: unwritable_directories(directories))


def test_writable_and_missing_directories_pass_and_missing_ones_are_made(tmp_path: Path) -> None:
    existing = tmp_path / "outputs"
    existing.mkdir()
    missing = tmp_path / "data" / "nested"

    assert unwritable_directories({"OUTPUTS_PATH": existing, "SCRATCH_DIR": missing}) == []
    assert missing.is_dir()
    assert list(existing.iterdir()) == [] and list(missing.iterdir()) == []  # the probe file is gone


def test_a_probe_left_by_a_killed_check_goes_once_an_hour_old_and_a_younger_one_stays(tmp_path: Path) -> None:
    """A SIGKILL between making the probe and removing it left it for ever; on a volume several replicas share,
    a young one may be another replica's check in progress."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    orphan, in_progress, not_a_probe = outputs / ".write-check-k1ll3d", outputs / ".write-check-l1ve", outputs / "x"
    for path in (orphan, in_progress, not_a_probe):
        path.write_bytes(b"")
    two_hours_ago = time.time() - 7200
    for path in (orphan, not_a_probe):
        os.utime(path, (two_hours_ago, two_hours_ago))

    assert unwritable_directories({"OUTPUTS_PATH": outputs}) == []
    assert sorted(p.name for p in outputs.iterdir()) == [".write-check-l1ve", "x"]


def test_a_directory_owned_by_someone_else_is_named_with_owner_mode_uid_and_fix(shared_tmp: Path) -> None:
    outputs = shared_tmp / "outputs"
    outputs.mkdir(mode=0o755)

    (line,) = check_as_another_user({"OUTPUTS_PATH": outputs})

    owner = outputs.stat()
    uid = NOBODY if os.getuid() == 0 else os.getuid()
    assert line.startswith(f"OUTPUTS_PATH={outputs} is not a writable directory (Permission denied)")
    assert f"owned by uid {owner.st_uid} gid {owner.st_gid} with mode {stat.filemode(owner.st_mode)}" in line
    assert f"runs as uid {uid} gid " in line
    assert f"chown -R {uid}:" in line and f"-v <volume name>:{outputs}" in line
    assert "\n" not in line


def test_a_missing_directory_under_someone_elses_folder_names_that_folder(shared_tmp: Path) -> None:
    scratch = shared_tmp / "data"

    (line,) = check_as_another_user({"SCRATCH_DIR": scratch / "comfy"})

    assert line.startswith(f"SCRATCH_DIR={scratch / 'comfy'} is not a writable directory (Permission denied)")
    assert f"its nearest existing parent {shared_tmp} is owned by uid" in line


def test_a_file_where_a_directory_should_be_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "outputs"
    blocker.write_text("a file, not a folder")

    (line,) = unwritable_directories({"OUTPUTS_PATH": blocker, "SCRATCH_DIR": tmp_path / "data"})

    assert line.startswith(f"OUTPUTS_PATH={blocker} is not a writable directory (File exists)")
    assert "with mode -rw-" in line
    assert "Fix: a file stands where a folder should be" in line and "chown" not in line


def test_a_read_only_mount_is_told_to_be_mounted_read_write_not_chowned(tmp_path: Path, monkeypatch) -> None:
    """A chown cannot cure a read-only file system (`-v ./outputs:/outputs:ro`), and root gets EROFS too."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    (line,) = unwritable_directories({"OUTPUTS_PATH": outputs})

    assert line.startswith(f"OUTPUTS_PATH={outputs} is not a writable directory (Read-only file system)")
    assert "mount it read-write" in line and "chown" not in line


def test_only_the_bad_ones_are_reported_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    problems = unwritable_directories({
        "OUTPUTS_PATH": tmp_path / "file" / "outputs",
        "SCRATCH_DIR": tmp_path / "file" / "data",
        "OTHER": tmp_path / "fine",
    })
    assert [line.split("=")[0] for line in problems] == ["OUTPUTS_PATH", "SCRATCH_DIR"]


async def test_supervisor_exits_2_before_starting_comfyui(base_env, run_supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "comfyui-was-started"
    blocker = tmp_path / "outputs-is-a-file"
    blocker.write_text("")
    env = {
        **base_env,
        "OUTPUTS_PATH": str(blocker),
        "COMFYUI_COMMAND": f"{sys.executable} -c \"open({str(marker)!r}, 'w').close()\"",
    }
    supervisor = await run_supervisor(env)

    assert await supervisor.wait() == 2
    lines = supervisor.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"OUTPUTS_PATH={blocker} is not a writable directory"), lines
    assert supervisor.stdout == b""
    assert not marker.exists()


def test_a_readable_input_folder_passes_even_read_only_and_nothing_is_written_to_it(shared_tmp: Path) -> None:
    inputs = shared_tmp / "inputs"
    (inputs / "alice").mkdir(parents=True)
    (inputs / "alice" / "photo.png").write_bytes(b"png")
    for path in (inputs / "alice", inputs):
        path.chmod(0o555)

    assert run_as_nobody(lambda: unreadable_directories({"COMFYUI_INPUT_DIR": inputs})) == []
    assert sorted(p.name for p in inputs.iterdir()) == ["alice"]


def test_a_missing_input_folder_says_to_mount_it_or_unset_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "inputs"

    (line,) = unreadable_directories({"COMFYUI_INPUT_DIR": missing})

    assert line.startswith(f"COMFYUI_INPUT_DIR={missing} is not a readable directory (No such file or directory)")
    assert "mount the volume holding the files there, or unset COMFYUI_INPUT_DIR" in line
    assert not missing.exists()  # never made: an empty folder would hide the missing mount


def test_an_input_folder_others_cannot_read_is_named_with_owner_mode_uid_and_fix(shared_tmp: Path) -> None:
    inputs = shared_tmp / "inputs"
    inputs.mkdir()
    inputs.chmod(0o700 if os.getuid() == 0 else 0o000)  # root reads anything: the check runs as nobody then

    (line,) = run_as_nobody(lambda: unreadable_directories({"COMFYUI_INPUT_DIR": inputs}))

    assert line.startswith(f"COMFYUI_INPUT_DIR={inputs} is not a readable directory (Permission denied)"), line
    checker_uid = NOBODY if os.getuid() == 0 else os.getuid()
    assert f"with mode {stat.filemode(inputs.stat().st_mode)}" in line and f"runs as uid {checker_uid}" in line
    assert "chmod -R a+rX <host dir>" in line


async def test_supervisor_exits_2_when_the_input_folder_is_not_mounted(base_env, run_supervisor,
                                                                     tmp_path: Path) -> None:
    marker = tmp_path / "comfyui-was-started"
    env = {
        **base_env,
        "COMFYUI_INPUT_DIR": str(tmp_path / "not-mounted"),
        "COMFYUI_COMMAND": f"{sys.executable} -c \"open({str(marker)!r}, 'w').close()\"",
    }
    supervisor = await run_supervisor(env)

    assert await supervisor.wait() == 2
    lines = supervisor.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"COMFYUI_INPUT_DIR={tmp_path / 'not-mounted'} is not a "
                                                   "readable directory"), lines
    assert not marker.exists()


def test_a_comfyui_output_dir_the_container_cannot_write_is_named(shared_tmp: Path) -> None:
    """Before: only OUTPUTS_PATH and SCRATCH_DIR were checked; an existing COMFYUI_OUTPUT_DIR the container cannot
    write passed, and a container reported ready failed every job at ComfyUI's save."""
    for name in ("data", "outputs"):
        (shared_tmp / name).mkdir(mode=0o777)
        (shared_tmp / name).chmod(0o777)
    theirs = shared_tmp / "comfyui-output"
    theirs.mkdir()
    if os.getuid() != 0:
        theirs.chmod(0o555)
    config = SupervisorSettings(COMFYUI_COMMAND=sys.executable, SCRATCH_DIR=shared_tmp / "data",
                                COMFYUI_OUTPUT_DIR=theirs)  # fmt: skip
    settings = WorkerSettings(QUEUE_MANAGER_URL="http://127.0.0.1:9", OUTPUTS_PATH=shared_tmp / "outputs")
    problems = run_as_nobody(lambda: directory_problems(config, settings))
    assert [line.split(" is ")[0] for line in problems] == [f"COMFYUI_OUTPUT_DIR={theirs}"]


def test_a_health_port_file_the_container_cannot_write_is_refused_with_health_port_0_only(shared_tmp: Path) -> None:
    """Before: with HEALTH_PORT=0 and HEALTH_PORT_FILE in a folder the container cannot write (a read-only /tmp), the
    worker logged "Could not write HEALTH_PORT_FILE" and went on, and Docker's HEALTHCHECK said unhealthy for ever on
    a working replica. With a fixed HEALTH_PORT the HEALTHCHECK falls back on it: that start goes on."""
    for name in ("data", "outputs"):
        (shared_tmp / name).mkdir(mode=0o777)
        (shared_tmp / name).chmod(0o777)
    read_only = shared_tmp / "tmp"
    read_only.mkdir(mode=0o555)
    config = SupervisorSettings(COMFYUI_COMMAND=sys.executable, SCRATCH_DIR=shared_tmp / "data")

    def problems(health_port: int) -> list[str]:
        settings = WorkerSettings(QUEUE_MANAGER_URL="http://127.0.0.1:9", OUTPUTS_PATH=shared_tmp / "outputs",
                                  HEALTH_PORT=health_port, HEALTH_PORT_FILE=read_only / "health-port")  # fmt: skip
        return run_as_nobody(lambda: directory_problems(config, settings))

    (line,) = problems(0)
    assert line.startswith(f"HEALTH_PORT_FILE={read_only / 'health-port'} cannot be written: its folder {read_only} "
                           "is not a writable directory (Permission denied)"), line
    assert "HEALTH_PORT=0" in line
    assert problems(8000) == []


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system with no space left: a 64 KiB tmpfs, filled (mounting one needs root)."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        with (mount_point / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_health_port_file_on_a_full_disk_is_refused_with_health_port_0(tmp_path: Path, full_disk: Path) -> None:
    """Before: the check only made an empty file, which a full disk still allows (an inode, no block): with /tmp
    full the start went on, the health server could not write the port, and the HEALTHCHECK said unhealthy for
    ever. Now the check writes as much as the port file holds."""
    config = SupervisorSettings(COMFYUI_COMMAND=sys.executable, SCRATCH_DIR=tmp_path / "data")
    settings = WorkerSettings(QUEUE_MANAGER_URL="http://127.0.0.1:9", OUTPUTS_PATH=tmp_path / "outputs",
                              HEALTH_PORT=0, HEALTH_PORT_FILE=full_disk / "health-port")  # fmt: skip

    (line,) = directory_problems(config, settings)
    assert line.startswith(f"HEALTH_PORT_FILE={full_disk / 'health-port'} cannot be written: its folder {full_disk} "
                           "is not a writable directory (No space left on device)"), line
    assert sorted(path.name for path in full_disk.iterdir()) == ["filler"]


async def test_supervisor_with_health_port_0_and_a_folder_for_its_port_file_exits_2_before_comfyui(
    base_env, run_supervisor, tmp_path: Path
) -> None:
    marker = tmp_path / "comfyui-was-started"
    folder = tmp_path / "a-folder"
    folder.mkdir()
    env = {
        **base_env,
        "HEALTH_PORT": "0",
        "HEALTH_PORT_FILE": str(folder),
        "COMFYUI_COMMAND": f"{sys.executable} -c \"open({str(marker)!r}, 'w').close()\"",
    }
    supervisor = await run_supervisor(env)

    assert await supervisor.wait() == 2
    lines = supervisor.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"HEALTH_PORT_FILE={folder} is a folder, not a file"), lines
    assert "HEALTH_PORT=0" in lines[0]
    assert not marker.exists()


async def test_supervisor_with_health_port_0_and_no_port_file_exits_2_before_comfyui(
    base_env, run_supervisor, tmp_path: Path
) -> None:
    """Before: HEALTH_PORT=0 with HEALTH_PORT_FILE empty started, and the image's HEALTHCHECK, with no file to find
    the port in, said `unhealthy: ValueError: no port to probe: 0` for ever on a working replica."""
    marker = tmp_path / "comfyui-was-started"
    env = {
        **base_env,
        "HEALTH_PORT": "0",
        "HEALTH_PORT_FILE": "",
        "COMFYUI_COMMAND": f"{sys.executable} -c \"open({str(marker)!r}, 'w').close()\"",
    }
    supervisor = await run_supervisor(env)

    assert await supervisor.wait() == 2
    lines = supervisor.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("HEALTH_PORT=0 with HEALTH_PORT_FILE empty"), lines
    assert not marker.exists()
