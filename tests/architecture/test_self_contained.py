"""A clone stands on its own: no file but prose reads a folder beside the clone, which a fresh clone does not have.

What a test or the image build needs from outside is copied in (tests/fixtures/, image_test/comfyui/).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PINNED_COMFYUI = ROOT / "image_test" / "comfyui" / "comfyui-0.8.0.tar.gz"
PINNED_COMFYUI_SHA256 = "560e96db0022acb63e49d7a785c863b986f148c3cdffcfcd73870b69089e347e"


def references_beside(root: Path, names: list[str]) -> list[str]:
    """``file: folder`` for each file (``names``, relative to ``root``; prose excepted) that names a folder beside
    ``root``, as ``../folder`` or by its absolute path."""
    beside = [p.name for p in root.parent.iterdir() if p.is_dir() and p.resolve() != root.resolve()]
    patterns = {
        name: re.compile(rf"(?:\.\./|{re.escape(str(root.parent))}/){re.escape(name)}(?![\w.-])") for name in beside
    }
    found = []
    for name in names:
        path = root / name
        if path.suffix == ".md" or not path.is_file():
            continue
        text = path.read_bytes().decode(errors="replace")
        found += [f"{name}: {folder}" for folder, pattern in patterns.items() if pattern.search(text)]
    return found


def test_no_file_but_prose_reads_a_folder_beside_the_clone():
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert listed, "git ls-files listed nothing: is this a checkout?"
    offenders = references_beside(ROOT, listed)
    assert not offenders, "these files read outside the repository; copy what they need into it"


def test_the_check_sees_a_relative_or_absolute_reference_to_a_folder_beside(tmp_path: Path):
    (tmp_path / "reference").mkdir()
    root = tmp_path / "clone"
    root.mkdir()
    (root / "run").write_text('tar -xf "$repo/../reference/x.tar.gz"\n')
    (root / "conf.py").write_text(f'DATA = "{tmp_path}/reference"\n')
    (root / "fine.py").write_text('NAME = "../references"  # a folder that is not there\n')
    (root / "notes.md").write_text("see ../reference\n")
    assert references_beside(root, ["run", "conf.py", "fine.py", "notes.md"]) == [
        "run: reference", "conf.py: reference"
    ]


def test_the_committed_comfyui_is_the_pinned_release():
    assert hashlib.sha256(PINNED_COMFYUI.read_bytes()).hexdigest() == PINNED_COMFYUI_SHA256
