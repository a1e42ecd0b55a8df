"""Configuration: --help lists every variable, bad values are named (the docs: tests/docs)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import ConfigError, env_name
from worker.config import WorkerSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
VARIABLES = [env_name(WorkerSettings, name) for name in WorkerSettings.model_fields]


@pytest.mark.parametrize("argv", [["--queue-url", "http://queue.example"], ["run"]])
def test_an_argument_is_refused_and_nothing_is_polled(tmp_path, argv):
    """Before: the arguments were ignored and the worker started on the environment's settings, polling a queue."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "QUEUE_MANAGER_URL": "http://127.0.0.1:9"}
    run = subprocess.run([sys.executable, "-m", "worker", *argv], capture_output=True, text=True, timeout=30, env=env,
                         cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr == (f"comfy-worker takes no arguments, got: {' '.join(argv)}; it is configured by environment "
                          "variables or a .env file (--help lists them)\n")


def test_the_credentials_of_both_urls_are_secrets_the_logs_mask(monkeypatch):
    """A bare worker reaching ComfyUI through a proxy with a password: before, only QUEUE_MANAGER_URL's were
    registered, and a proxy's error page echoing ``Authorization: Basic …`` went into the log as it came."""
    monkeypatch.setenv("QUEUE_MANAGER_URL", "https://queue.example")
    monkeypatch.setenv("COMFYUI_URL", "https://comfy:proxy-password-5e1f@comfyui.example")
    secrets = load_settings().secrets
    assert "proxy-password-5e1f" in secrets, secrets
    assert base64.b64encode(b"comfy:proxy-password-5e1f").decode() in secrets, secrets


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
    assert settings.serverless_max_unreachable_s == 600, "longer than a queue manager restart"
    assert settings.worker_id and settings.worker_id != load_settings().worker_id, "unique per container"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("QUEUE_MANAGER_URL", "not a url"), ("SERVERLESS_MODE", "maybe"), ("JOB_TIMEOUT_S", "0"), ("LOG_FORMAT", "xml"),
     ("SERVERLESS_MAX_UNREACHABLE_S", "-1"), ("SERVERLESS_MAX_UNREACHABLE_S", "inf")],
)
def test_bad_values_are_named(monkeypatch, variable, value):
    monkeypatch.setenv("QUEUE_MANAGER_URL", "https://queue.example.com")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert f"  {variable}: " in str(error.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OUTPUTS_PATH", ""),
        ("OUTPUTS_PATH", "   "),
        ("WORKER_POLL_INTERVAL", "inf"),
        ("WORKER_POLL_INTERVAL", "nan"),
        ("WORKER_POLL_INTERVAL", "1e999"),
        ("WORKER_POLL_INTERVAL", "1e300"),
        ("JOB_TIMEOUT_S", "infinity"),
        ("HEARTBEAT_TIMEOUT_S", "NaN"),
        ("REPORT_RETRY_BUDGET_S", "-inf"),
        ("LEASE_HEARTBEAT_S", "inf"),
        ("HEALTH_HOST", "no-such-host.invalid"),
        ("HEALTH_HOST", "\N{MATHEMATICAL DOUBLE-STRUCK DIGIT ONE}"),  # looked up as 0.0.0.1
        ("HEALTH_HOST", "\uff11\uff12\uff17.0.0.1"),  # full-width digits, looked up as 127.0.0.1
        ("SHUTDOWN_GRACE_S", "30"),
    ],
)
def test_values_that_would_misbehave_at_run_time_are_refused_at_start(monkeypatch, variable, value):
    monkeypatch.setenv("QUEUE_MANAGER_URL", "https://queue.example.com")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert f"  {variable}: " in str(error.value) or variable in str(error.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OUTPUTS_PATH", ""), ("WORKER_POLL_INTERVAL", "inf"), ("HEALTH_HOST", "no-such-host.invalid")],
)
def test_the_worker_process_exits_2_naming_the_variable_without_a_traceback(variable, value, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "QUEUE_MANAGER_URL": "http://127.0.0.1:9", variable: value}
    run = subprocess.run(
        [sys.executable, "-m", "worker"], capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path
    )
    assert run.returncode == 2, run.stderr
    assert variable in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("token", [None, ""], ids=["token-unset", "token-blank"])
def test_the_queue_managers_worker_token_alone_is_refused_at_start_naming_both(monkeypatch, tmp_path, token):
    """Before: the worker ignored QUEUE_MANAGER_WORKER_TOKEN and polled with no token, refused (401) until it
    exited 2 saying only "QUEUE_MANAGER_TOKEN is unset". Now it refuses at start, naming both, the value unsaid.
    Beside QUEUE_MANAGER_TOKEN (one shell holding the queue manager's variables too) it is no refusal: the worker
    polls with QUEUE_MANAGER_TOKEN; blank (compose's ${VAR:-}), it is unset."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "QUEUE_MANAGER_URL": "http://127.0.0.1:9",
           "QUEUE_MANAGER_WORKER_TOKEN": "workers-token-do-not-print"}
    if token is not None:
        env["QUEUE_MANAGER_TOKEN"] = token
    run = subprocess.run(
        [sys.executable, "-m", "worker"], capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path
    )
    assert run.returncode == 2, run.stderr
    assert "QUEUE_MANAGER_WORKER_TOKEN is set and QUEUE_MANAGER_TOKEN is not" in run.stderr, run.stderr
    assert "Put the queue manager's worker token in QUEUE_MANAGER_TOKEN" in run.stderr
    assert "workers-token-do-not-print" not in run.stderr and "Traceback" not in run.stderr
    monkeypatch.setenv("QUEUE_MANAGER_URL", "https://queue.example.com")
    monkeypatch.setenv("QUEUE_MANAGER_WORKER_TOKEN", "")
    assert load_settings().queue_manager_token is None
    monkeypatch.setenv("QUEUE_MANAGER_WORKER_TOKEN", "workers-token")
    monkeypatch.setenv("QUEUE_MANAGER_TOKEN", "workers-token")
    assert load_settings().queue_manager_token.get_secret_value() == "workers-token"


def test_outputs_path_is_made_absolute(monkeypatch, tmp_path):
    monkeypatch.setenv("QUEUE_MANAGER_URL", "https://queue.example.com")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OUTPUTS_PATH", "results")
    assert load_settings().outputs_path == tmp_path / "results"
