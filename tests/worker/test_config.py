"""Configuration: every variable is documented, --help lists them, bad values are named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import ConfigError, env_name
from worker.config import WorkerSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
VARIABLES = [env_name(WorkerSettings, name) for name in WorkerSettings.model_fields]


def test_every_variable_is_in_the_configuration_reference():
    reference = (REPO / "docs" / "worker.md").read_text()
    missing = [name for name in VARIABLES if f"`{name}`" not in reference]
    assert missing == []


def test_help_lists_every_variable():
    run = subprocess.run([sys.executable, "-m", "worker", "--help"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0
    for name in VARIABLES:
        assert name in run.stdout


def test_defaults_match_the_platform(monkeypatch):
    monkeypatch.setenv("QUEUE_MANAGER_URL", "https://queue.example.com/")
    settings = load_settings()
    assert settings.queue_base_url == "https://queue.example.com"
    assert settings.comfyui_base_url == "http://127.0.0.1:8188"
    assert (settings.poll_interval_s, settings.serverless_mode, settings.serverless_max_idle_polls) == (2.0, False, 10)
    assert (settings.serverless_job_limit, settings.inference_provider, settings.health_port) == (0, "local", 8000)
    assert str(settings.outputs_path) == "/outputs" and settings.shutdown_grace_s == 25
    assert settings.worker_id and settings.worker_id != load_settings().worker_id, "unique per container"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("QUEUE_MANAGER_URL", "not a url"), ("SERVERLESS_MODE", "maybe"), ("JOB_TIMEOUT_S", "0"), ("LOG_FORMAT", "xml")],
)
def test_bad_values_are_named(monkeypatch, variable, value):
    monkeypatch.setenv("QUEUE_MANAGER_URL", "https://queue.example.com")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert f"  {variable}: " in str(error.value)
