"""A start-up refusal quotes what was set; a terminal is shown that value, never obeys it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TITLE = "\x1b]0;pwn\x07"  # an OSC sequence: retitles the operator's terminal; \x1b[2J would clear it
REPO = Path(__file__).resolve().parents[2]


def test_a_variables_control_characters_in_a_refusal_at_start_are_escaped(tmp_path: Path) -> None:
    """QUEUE_MANAGER_OUTPUTS_DIR is quoted when it is no folder: before, its ESC and BEL reached the terminal raw."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "QUEUE_MANAGER_OUTPUTS_DIR": f"/no/such{TITLE}"}
    done = subprocess.run([sys.executable, "-m", "queue_manager", "--port", "0", "--db", str(tmp_path / "q.db")],
                          env=env, cwd=tmp_path, capture_output=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert b"(--outputs-dir) /no/such\\x1b]0;pwn\\x07 is not a folder" in done.stderr
    assert b"\x1b" not in done.stderr and b"\x07" not in done.stderr
