"""`./dev image-test --help` prints what the test does; it used to start the whole test (root, its own dockerd,
the host's network rules) because the command read no arguments."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def image_test_main(monkeypatch):
    """The command's module (image_test is not installed: ./dev runs it from the checkout), with the step that
    starts anything replaced: were the arguments ignored again, the test would stop there, not start Docker."""
    monkeypatch.syspath_prepend(str(REPO))
    module = importlib.import_module("image_test.__main__")

    @contextlib.contextmanager
    def refuse():
        raise AssertionError("the image test started")
        yield

    monkeypatch.setattr(module, "one_run_at_a_time", refuse)
    return module


def test_help_prints_what_the_test_does_and_starts_nothing(image_test_main, capsys):
    with pytest.raises(SystemExit) as stopped:
        image_test_main.main(["--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert "usage: ./dev image-test" in out and "IMAGE_TEST_DATA_ROOT" in out and "COMFYUI_SRC" in out


def test_an_unknown_argument_is_refused_before_anything_starts(image_test_main, capsys):
    with pytest.raises(SystemExit) as stopped:
        image_test_main.main(["--no-such-option"])
    assert stopped.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
