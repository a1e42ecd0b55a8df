"""One queue manager per outputs folder: a second one's orphan sweep took the first one's job folders for orphans
(their jobs are not in its database) and deleted them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..conftest import run_module_to_exit
from .test_cli import REPO, start_cli


async def test_a_second_queue_manager_on_the_same_outputs_folder_exits_1_naming_it(tmp_path: Path) -> None:
    """Before: both served, each sweeping away the other's outputs a retention after they were written."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    first, _ = await start_cli("--db", str(tmp_path / "first.db"), "--outputs-dir", str(outputs))
    try:
        code, err = await run_module_to_exit(
            "queue_manager", "--port", "0", "--db", str(tmp_path / "second.db"), "--outputs-dir", str(outputs),
            env={**os.environ, "LOG_FORMAT": "json"}, cwd=REPO, timeout_s=20,
        )  # fmt: skip
    finally:
        first.kill()
        await first.wait()
    assert code == 1, err
    [failed] = [json.loads(line) for line in err.splitlines() if "queue_manager_failed" in line]
    assert failed["error"].startswith(f"--outputs-dir {outputs} is used by another queue manager (pid {first.pid},")
    assert "one outputs folder per queue manager" in failed["hint"]
    code, err = await run_module_to_exit(  # the lock went with the first one
        "queue_manager", "--port", "0", "--db", str(tmp_path / "second.db"), "--outputs-dir", str(outputs),
        "--host", "256.0.0.1", env={**os.environ, "LOG_FORMAT": "json"}, cwd=REPO, timeout_s=20,
    )  # fmt: skip
    assert "another queue manager" not in err
