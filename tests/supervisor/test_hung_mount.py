"""A folder the start checks on a mount that does not answer (a hung NFS server): the check blocks in the kernel
without end, before the supervisor logs anything. A frozen file system (fsfreeze) blocks every write the same way."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.writable_dirs import SLOW_CHECK_S


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)


@pytest.fixture
def freezable_disk(tmp_path: Path) -> Iterator[Path]:
    with _freezable_disk_at(tmp_path / "mounted", tmp_path / "disk.img") as mount_point:
        yield mount_point


@contextlib.contextmanager
def _freezable_disk_at(mount_point: Path, image: Path) -> Iterator[Path]:
    """An ext4 file system of 4 MiB on a loop device (root only), thawed and unmounted at the end whatever befell."""
    mount_point.mkdir(parents=True)
    made = _run("mkfs.ext4", "-q", "-F", str(image), "4M")
    mounted = made.returncode == 0 and _run("mount", "-o", "loop", str(image), str(mount_point))
    if not mounted or mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {made.stderr or (mounted and mounted.stderr)}")
    try:
        yield mount_point
    finally:
        _run("fsfreeze", "--unfreeze", str(mount_point))
        _run("umount", "-l", str(mount_point))


async def test_a_folder_check_that_hangs_says_which_folder_it_waits_on(
    freezable_disk: Path, base_env, run_supervisor
) -> None:
    """Before: a start hung on OUTPUTS_PATH wrote nothing at all, for as long as the mount hung: the operator could
    not tell a hung start from a slow one, nor which mount. Now a line names the variable and the folder once the
    check has taken SLOW_CHECK_S; the start goes on when the mount answers."""
    outputs = freezable_disk / "outputs"
    outputs.mkdir()
    frozen = _run("fsfreeze", "--freeze", str(freezable_disk))
    if frozen.returncode != 0:
        pytest.skip(f"cannot freeze a file system here: {frozen.stderr}")
    try:
        supervisor = await run_supervisor({**base_env, "OUTPUTS_PATH": str(outputs)})
        said = f"comfy-supervisor: checking OUTPUTS_PATH={outputs} has taken {SLOW_CHECK_S:g} s"
        await supervisor.wait_until(lambda: said in supervisor.stderr.decode(), timeout_s=SLOW_CHECK_S + 20,
                                    what="a line naming the folder whose check hangs")  # fmt: skip
    finally:
        _run("fsfreeze", "--unfreeze", str(freezable_disk))
    await supervisor.wait_until(lambda: supervisor.status_of("/health"), timeout_s=30, what="the start to go on")
    supervisor.signal(signal.SIGTERM)
    assert await supervisor.wait() == 0


def _frozen(disk: Path) -> None:
    frozen = _run("fsfreeze", "--freeze", str(disk))
    if frozen.returncode != 0:
        pytest.skip(f"cannot freeze a file system here: {frozen.stderr}")


async def _said_then_goes_on(supervisor, disk: Path, step: str) -> None:
    """The start's line naming the step that waits, within SLOW_CHECK_S and a margin; then, the mount thawed, the
    start goes on to a health server that answers, and a SIGTERM ends it with 0."""
    try:
        said = await supervisor.wait_until(
            lambda: [e for e in supervisor.log_events() if e["event"] == "supervisor.start_step_slow"],
            timeout_s=SLOW_CHECK_S + 20, what=f"a line naming the step ({step}) that hangs",
        )  # fmt: skip
    finally:
        _run("fsfreeze", "--unfreeze", str(disk))
    assert said[0]["step"] == step and said[0]["variable"] == "SCRATCH_DIR", said
    await supervisor.wait_until(lambda: supervisor.status_of("/health"), timeout_s=30, what="the start to go on")
    supervisor.signal(signal.SIGTERM)
    assert await supervisor.wait() == 0


async def test_a_scratch_lock_that_hangs_says_so(tmp_path: Path, base_env, run_supervisor) -> None:
    """SCRATCH_DIR's lock on a network mount whose lock daemon does not answer blocks after the folder check
    passed. Before: not a line, for as long as it hung. Here the lock file lies on a frozen file system."""
    scratch = tmp_path / "scratch"
    with _freezable_disk_at(tmp_path / "mounted", tmp_path / "disk.img") as disk:
        (disk / "lock").touch()
        scratch.mkdir()
        (scratch / ".supervisor.lock").symlink_to(disk / "lock")
        _frozen(disk)
        supervisor = await run_supervisor({**base_env, "SCRATCH_DIR": str(scratch)})
        await _said_then_goes_on(supervisor, disk, "locking")


async def test_emptying_comfyuis_folders_that_hangs_says_so(tmp_path: Path, base_env, run_supervisor) -> None:
    """ComfyUI's temp folder under SCRATCH_DIR on a mount of its own that hangs: the folder check of SCRATCH_DIR
    passed, and emptying it blocked. Before: not a line, for as long as it hung."""
    scratch = tmp_path / "scratch"
    with _freezable_disk_at(scratch / "comfyui" / "temp", tmp_path / "disk.img") as disk:
        (disk / "left-by-a-killed-run.png").write_bytes(b"png")
        _frozen(disk)
        supervisor = await run_supervisor({**base_env, "SCRATCH_DIR": str(scratch)})
        await _said_then_goes_on(supervisor, disk, "emptying ComfyUI's folders in")
