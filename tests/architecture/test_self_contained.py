"""A clone stands on its own: no file but prose points at a ../shared folder that a fresh clone does not have."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_FOLDERS = ("../shared", "/work/shared")
# The one exception: CI cannot reach GitHub, so .ci/run hands the vendored ComfyUI tarball to ./dev image-test as
# the COMFYUI_SRC setting, on the line that sets it. Without it the image builds from GitHub; nothing reads it.
ALLOWED_LINES = {".ci/run": "export COMFYUI_SRC="}


def test_no_file_but_markdown_reads_a_folder_beside_the_clone():
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    offenders = []
    for name in listed:
        path = ROOT / name
        if path.suffix == ".md" or path == Path(__file__).resolve() or not path.is_file():
            continue
        allowed = ALLOWED_LINES.get(name)
        for line in path.read_bytes().decode(errors="replace").splitlines():
            if allowed is None or allowed not in line:
                offenders += [f"{name}: {folder}" for folder in OUTSIDE_FOLDERS if folder in line]
    assert listed, "git ls-files listed nothing: is this a checkout?"
    assert not offenders, "these files read outside the repository; use tests/fixtures or docs/ instead"
