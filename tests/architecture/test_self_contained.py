"""A clone stands on its own: no file but prose points at a ../shared folder that a fresh clone does not have."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_FOLDERS = ("../shared", "/work/shared")


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
        text = path.read_bytes().decode(errors="replace")
        offenders += [f"{name}: {folder}" for folder in OUTSIDE_FOLDERS if folder in text]
    assert listed, "git ls-files listed nothing: is this a checkout?"
    assert not offenders, "these files read outside the repository; use tests/fixtures or docs/ instead"
