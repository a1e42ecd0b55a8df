"""bench/hung_comfyui's arguments: a mistaken one is named before anything starts."""

from __future__ import annotations

import pytest

from bench.hung_comfyui import main


def test_an_env_without_a_value_is_an_argument_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    """Before, Python's ValueError about a dictionary update sequence element of length 1, and a traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(["--env", "WORKER_TIMEOUT_S=5", "--env", "UNRESPONSIVE_TIMEOUT_S"])
    assert exit_.value.code == 2
    assert "error: --env 'UNRESPONSIVE_TIMEOUT_S': not NAME=VALUE" in capsys.readouterr().err
