"""The deploy's configuration error quotes what was set; a terminal is shown that value, never obeys it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TITLE = "\x1b]0;pwn\x07"  # an OSC sequence: retitles the operator's terminal; \x1b[2J would clear it
REPO = Path(__file__).resolve().parents[2]


def test_a_variables_control_characters_in_the_deploys_configuration_error_are_escaped(tmp_path: Path) -> None:
    """SSL_CERT_FILE is quoted in its error: before, its ESC and BEL reached the terminal raw."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "SSL_CERT_FILE": f"/no/such{TITLE}.pem"}
    done = subprocess.run([sys.executable, "-m", "scaler.cli", "deploy"], env=env, cwd=tmp_path,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert b"SSL_CERT_FILE: /no/such\\x1b]0;pwn\\x07.pem cannot be read" in done.stderr
    assert b"\x1b" not in done.stderr and b"\x07" not in done.stderr
