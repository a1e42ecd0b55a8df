"""A folder the start checks on a mount that does not answer (a hung NFS server): the check blocks in the kernel
without end, before the supervisor logs anything. A frozen file system (fsfreeze) blocks every write the same way."""

from __future__ import annotations

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
    """An ext4 file system of 4 MiB on a loop device (root only), thawed and unmounted at the end whatever befell."""
    image, mount_point = tmp_path / "disk.img", tmp_path / "mounted"
    mount_point.mkdir()
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
