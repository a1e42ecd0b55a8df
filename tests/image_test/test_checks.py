"""A check that raises is a FAIL line naming it and the checks after it still run: a docker command that failed or a
peer that went away ended the image test with a traceback (or one "image-test FAILED" line) and skipped the rest."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def checks(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return importlib.import_module("image_test.checks")


def test_an_engine_that_fails_every_command_fails_every_check_and_ends_the_run(checks, tmp_path, capsys):
    """A real queue manager, a Docker CLI that exits 1 whatever it is asked (`false`)."""
    from image_test.docker import Docker

    report = checks.run_checks(Docker(shutil.which("false")), "no-such-image", tmp_path)

    out = capsys.readouterr().out
    assert "FAIL  serve jobs: DockerError: docker run --detach" in out
    for later in ("root-owned /outputs", "SERVERLESS_MODE=true", "a job runs through the custom node"):
        assert f"FAIL  {later}" in out
    assert report.failed == len(report.results) >= 7


def test_a_health_server_that_went_away_fails_the_metrics_check_by_name(checks, tmp_path, capsys):
    from image_test.docker import Docker

    container = checks.Container(Docker(shutil.which("false")), "no-such-image", "gone", "http://127.0.0.1:9",
                                 tmp_path)  # its health port: a free one nothing listens on
    report = checks.Report()
    report.run(checks._metrics_count, container)
    report.run(checks._docker_healthy, container)

    out = capsys.readouterr().out
    assert out.startswith("FAIL  metrics count: ConnectError: ")
    assert "FAIL  docker healthy: DockerError: " in out
    assert report.failed == 2
