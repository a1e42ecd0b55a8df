"""ComfyUI's extra model paths file as the supervisor writes it: whole, or the previous one left as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from supervisor.model_paths import write_model_paths

# write_model_paths in a process whose files may hold no more than `limit` bytes: a disk filling up mid-write
# (EFBIG where a full disk says ENOSPC; SIGXFSZ ignored, so the write fails instead of killing the process).
WRITE_WITH_A_FULL_DISK = (
    "import resource, signal, sys\n"
    "from pathlib import Path\n"
    "from supervisor.model_paths import write_model_paths\n"
    "path, models, limit = sys.argv[1:]\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))\n"
    "try:\n"
    "    write_model_paths(Path(path), Path(models))\n"
    "except OSError as exc:\n"
    "    sys.exit(f'{type(exc).__name__}: {exc}')\n"
)


def test_a_disk_full_mid_write_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    """Before: the file was rewritten in place: a full disk left ComfyUI 200 bytes of the 773 of YAML it reads at
    its next start, its model folders cut off."""
    path = tmp_path / "comfyui" / "extra_model_paths.yaml"
    write_model_paths(path, Path("/models"))
    before = path.read_text()

    run = subprocess.run(
        [sys.executable, "-c", WRITE_WITH_A_FULL_DISK, str(path), "/other-models", "200"],
        capture_output=True, text=True, timeout=60,
    )

    assert run.returncode == 1 and "File too large" in run.stderr, run.stderr
    assert path.read_text() == before
    assert sorted(entry.name for entry in path.parent.iterdir()) == ["extra_model_paths.yaml"]



def test_a_relative_models_dir_names_the_folder_the_supervisor_checked(tmp_path: Path, monkeypatch) -> None:
    """ComfyUI resolves a relative base_path against the folder of the YAML file (utils/extra_config.py:
    os.path.join(yaml_dir, base_path)), not its working directory. Before: MODELS_DIR=models (outside a container)
    was checked at ./models but written as is, so ComfyUI looked in $SCRATCH_DIR/comfyui/models, found no model,
    and every job failed 'Value not in list'."""
    monkeypatch.chdir(tmp_path)
    path = Path("data") / "comfyui" / "extra_model_paths.yaml"
    write_model_paths(path, Path("models"))
    (base_path,) = [line.split(": ", 1)[1] for line in path.read_text().splitlines() if "base_path:" in line]
    yaml_dir = os.path.dirname(os.path.abspath(path))
    assert os.path.abspath(os.path.join(yaml_dir, json.loads(base_path))) == str(tmp_path / "models")
