"""./deploy-serverless.sh run through a symbolic link to it (one in ~/bin, on PATH)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_the_shell_wrapper_runs_through_a_symbolic_link_from_another_folder(deploy_env, tmp_path: Path) -> None:
    """Before, the script looked for ./dev beside the link: `…/bin/dev: No such file or directory`, exit 127."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "deploy-serverless").symlink_to(REPO / "deploy-serverless.sh")
    env = {key: value for key, value in os.environ.items() if key != "VERDA_DEPLOYMENT_NAME"} | deploy_env

    done = subprocess.run(
        ["deploy-serverless", "--dry-run"], env={**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"},
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "comfyui-worker-serverless"
