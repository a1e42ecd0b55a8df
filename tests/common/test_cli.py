"""What the programs share on their command line: a Ctrl-C before they take SIGINT ends them with one line."""

from __future__ import annotations

import pytest

from common.cli import EXIT_INTERRUPTED, interrupted


def test_interrupted_writes_one_line_naming_the_program_and_returns_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert interrupted("comfy-worker") == EXIT_INTERRUPTED == 130
    assert interrupted("comfy-supervisor", "before ComfyUI started") == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "comfy-worker: interrupted (SIGINT) while starting; exiting",
        "comfy-supervisor: interrupted (SIGINT) before ComfyUI started; exiting",
    ]
