"""ComfyUI's extra model paths file as the supervisor writes it: whole, or the previous one left as it was."""

from __future__ import annotations

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

