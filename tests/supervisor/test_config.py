"""Supervisor settings and the ComfyUI command line and model paths file they produce."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import ConfigError, env_name
from supervisor.config import SupervisorSettings, comfyui_environment, load_supervisor_settings
from supervisor.model_paths import MODEL_FOLDERS, render_model_paths, write_model_paths
from worker.config import WorkerSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("COMFYUI_COMMAND", "COMFYUI_EXTRA_ARGS", "COMFYUI_URL", "COMFYUI_OUTPUT_DIR", "SCRATCH_DIR",
                 "MODELS_DIR", "COMFYUI_STOP_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)


def settings(**env: str) -> SupervisorSettings:
    return load_supervisor_settings(**{"COMFYUI_COMMAND": f"{sys.executable} /opt/ComfyUI/main.py", **env})


def test_defaults_build_comfyuis_command_line() -> None:
    argv = settings().comfyui_argv()
    assert argv == [
        sys.executable, "/opt/ComfyUI/main.py",
        "--listen", "127.0.0.1",
        "--port", "8188",
        "--output-directory", "/data/comfyui/output",
        "--input-directory", "/data/comfyui/input",
        "--temp-directory", "/data/comfyui",
        "--user-directory", "/data/comfyui/user",
        "--database-url", "sqlite:////data/comfyui/user/comfyui.db",
        "--extra-model-paths-config", "/data/comfyui/extra_model_paths.yaml",
    ]


def test_port_output_dir_and_extra_args_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYUI_URL", "http://localhost:9191/")
    monkeypatch.setenv("COMFYUI_OUTPUT_DIR", "/scratch/out")
    monkeypatch.setenv("SCRATCH_DIR", "/scratch")
    monkeypatch.setenv("COMFYUI_EXTRA_ARGS", "--highvram --preview-method 'latent2rgb'")
    config = settings()
    argv = config.comfyui_argv()
    assert argv[argv.index("--port") + 1] == "9191"
    assert argv[argv.index("--listen") + 1] == "127.0.0.1"
    assert argv[argv.index("--output-directory") + 1] == "/scratch/out"
    assert argv[argv.index("--extra-model-paths-config") + 1] == "/scratch/comfyui/extra_model_paths.yaml"
    assert argv[-3:] == ["--highvram", "--preview-method", "latent2rgb"]


def test_an_input_folder_of_the_operators_is_comfyuis_input_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYUI_INPUT_DIR", "/inputs")
    argv = settings().comfyui_argv()
    assert argv[argv.index("--input-directory") + 1] == "/inputs"
    assert argv.count("--input-directory") == 1


def test_every_bad_variable_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_supervisor_settings(
            COMFYUI_COMMAND="no-such-program-anywhere --x",
            COMFYUI_EXTRA_ARGS="'unbalanced",
            COMFYUI_URL="http://comfyui.internal:8188",
            COMFYUI_STOP_TIMEOUT_S="-1",
        )
    message = str(caught.value)
    assert message.startswith("Invalid supervisor configuration:")
    for name in ("COMFYUI_COMMAND", "COMFYUI_EXTRA_ARGS", "COMFYUI_URL", "COMFYUI_STOP_TIMEOUT_S"):
        assert name in message
    assert "program not found: 'no-such-program-anywhere'" in message


def test_empty_command_is_rejected() -> None:
    with pytest.raises(ConfigError, match="COMFYUI_COMMAND"):
        load_supervisor_settings(COMFYUI_COMMAND="   ")


def test_model_paths_point_every_folder_at_the_models_volume(tmp_path: Path) -> None:
    path = tmp_path / "comfyui" / "extra_model_paths.yaml"
    write_model_paths(path, Path("/models"))
    lines = path.read_text().splitlines()
    assert '  base_path: "/models"' in lines
    assert "  is_default: true" in lines
    for folder in ("checkpoints", "loras", "vae", "text_encoders", "clip", "diffusion_models", "unet"):
        assert folder in MODEL_FOLDERS
        assert f'  {folder}: "{folder}/"' in lines


def test_model_paths_quote_awkward_paths() -> None:
    rendered = render_model_paths(Path('/mnt/my models: "v2"'))
    assert '  base_path: "/mnt/my models: \\"v2\\""' in rendered.splitlines()


def test_the_worker_is_told_where_comfyui_writes_results_and_previews(monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.__main__ import load_configuration

    monkeypatch.setenv("COMFYUI_COMMAND", f"{sys.executable} /opt/ComfyUI/main.py")
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SCRATCH_DIR", "/scratch")
    monkeypatch.setenv("COMFYUI_TEMP_DIR", "/elsewhere")  # ComfyUI's is where the supervisor puts it
    config, worker = load_configuration()
    assert worker.comfyui_output_dir == config.output_dir == Path("/scratch/comfyui/output")
    argv = config.comfyui_argv()
    assert worker.comfyui_temp_dir == Path(argv[argv.index("--temp-directory") + 1]) / "temp"


@pytest.mark.parametrize("operators", [None, "/shared/inputs"])
def test_the_worker_is_told_comfyuis_input_folder(monkeypatch: pytest.MonkeyPatch, operators: str | None) -> None:
    """The worker deletes a job's uploaded images from it: the scratch default or the operator's."""
    from supervisor.__main__ import load_configuration

    monkeypatch.setenv("COMFYUI_COMMAND", f"{sys.executable} /opt/ComfyUI/main.py")
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SCRATCH_DIR", "/scratch")
    if operators is None:
        monkeypatch.delenv("COMFYUI_INPUT_DIR", raising=False)
    else:
        monkeypatch.setenv("COMFYUI_INPUT_DIR", operators)
    config, worker = load_configuration()
    argv = config.comfyui_argv()
    assert worker.comfyui_input_dir == Path(argv[argv.index("--input-directory") + 1])
    assert worker.comfyui_input_dir == Path(operators or "/scratch/comfyui/input")


def test_help_lists_every_variable_and_starts_nothing(tmp_path: Path) -> None:
    """`docker run <image> --help` reaches comfy-supervisor: it printed a configuration error, or, configured,
    started ComfyUI and the worker."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "QUEUE_MANAGER_URL": "http://127.0.0.1:9",
           "COMFYUI_COMMAND": "/bin/false", "SCRATCH_DIR": str(tmp_path / "data"), "OUTPUTS_PATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "supervisor", "--help"], capture_output=True, text=True, timeout=30,
                         env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    for settings_cls in (SupervisorSettings, WorkerSettings):
        for name in settings_cls.model_fields:
            assert env_name(settings_cls, name) in run.stdout
    assert not (tmp_path / "data").exists(), "the supervisor prepared its scratch folder: it was starting"


@pytest.mark.parametrize("argv", [["bash"], ["--dry-run"], ["python", "-m", "worker"]])
def test_an_argument_is_refused_and_starts_nothing(tmp_path: Path, argv: list[str]) -> None:
    """`docker run <image> bash` meant a shell. Before: the arguments were ignored and the supervisor started
    ComfyUI and a worker that took jobs from the queue."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "QUEUE_MANAGER_URL": "http://127.0.0.1:9",
           "COMFYUI_COMMAND": "/bin/false", "SCRATCH_DIR": str(tmp_path / "data"), "OUTPUTS_PATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "supervisor", *argv], capture_output=True, text=True, timeout=30,
                         env=env, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr == (f"comfy-supervisor takes no arguments, got: {' '.join(argv)}; it is configured by "
                          "environment variables (--help lists them). For a shell in the image: docker run "
                          "--entrypoint bash <image>\n")
    assert not (tmp_path / "data").exists(), "the supervisor prepared its scratch folder: it was starting"


def test_credentials_set_in_any_case_are_withheld_from_comfyui(monkeypatch: pytest.MonkeyPatch) -> None:
    # The settings read variables whatever their case: queue_manager_token is the worker's token too.
    token = "lower-case-queue-token-1234"
    for name in ("queue_manager_token", "Queue_Manager_Url", "runpod_api_key"):
        monkeypatch.setenv(name, token)
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://127.0.0.1:9")
    assert WorkerSettings().queue_manager_token.get_secret_value() == token
    passed = comfyui_environment(os.environ)
    assert token not in passed.values()
    assert passed["PATH"] == os.environ["PATH"]


def test_port_0_in_comfyui_url_is_refused() -> None:
    """Before: ComfyUI listened on a port the OS picked, the worker looked for it at port 0 and waited out
    COMFYUI_STARTUP_TIMEOUT_S (10 minutes by default) before exiting with "ComfyUI never came up"."""
    with pytest.raises(ConfigError, match=r"COMFYUI_URL: .*port 0"):
        settings(COMFYUI_URL="http://127.0.0.1:0")


@pytest.mark.parametrize(("url", "named"), [
    ("https://127.0.0.1:8188", "https"), ("http://127.0.0.1:8188/comfyui", "/comfyui"),
    ("http://localhost:8188/?token=abc", "query"), ("http://127.0.0.1:8188/#top", "fragment"),
])
def test_a_comfyui_url_the_comfyui_it_starts_never_answers_is_refused(url: str, named: str) -> None:
    """The supervisor starts ComfyUI serving plain HTTP at the root. Before: https, a path, a query or a fragment
    were accepted, and the worker asked at that URL (a TLS handshake ComfyUI cannot answer, `/comfyui/system_stats`
    a 404) for COMFYUI_STARTUP_TIMEOUT_S (10 minutes by default) before exiting 1 with "ComfyUI never came up"."""
    with pytest.raises(ConfigError, match=rf"COMFYUI_URL: .*{re.escape(named)}"):
        settings(COMFYUI_URL=url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8188", "http://127.0.0.1:8188/", "http://localhost:9000"])
def test_a_plain_comfyui_url_on_loopback_passes(url: str) -> None:
    assert settings(COMFYUI_URL=url).comfyui_url.host in ("127.0.0.1", "localhost")


def test_https_when_and_only_when_comfyui_is_given_a_key_and_a_certificate() -> None:
    extra = "--tls-keyfile /certs/key.pem --tls-certfile=/certs/cert.pem"
    assert settings(COMFYUI_URL="https://localhost:8188", COMFYUI_EXTRA_ARGS=extra).comfyui_url.scheme == "https"
    with pytest.raises(ConfigError, match=r"COMFYUI_URL: .*https"):
        settings(COMFYUI_URL="https://localhost:8188", COMFYUI_EXTRA_ARGS="--tls-keyfile /certs/key.pem")
    with pytest.raises(ConfigError, match=r"COMFYUI_URL: .*use https://"):
        settings(COMFYUI_URL="http://localhost:8188", COMFYUI_EXTRA_ARGS=extra)


@pytest.mark.parametrize("extra", ["--cpu --listen 0.0.0.0", "--listen", "--listen=0.0.0.0", "--lis 0.0.0.0",
                                   "--port 9000", "--port=9000"])
def test_extra_args_may_not_move_comfyui_off_loopback_or_its_port(extra: str) -> None:
    """They come last and win. Before: --listen 0.0.0.0 (or --listen alone: every address) served ComfyUI's API,
    unauthenticated, on the network (Verda runs --network host); --port 9000 left the worker waiting at 8188
    for COMFYUI_STARTUP_TIMEOUT_S, then "ComfyUI never came up"."""
    with pytest.raises(ConfigError, match=r"COMFYUI_EXTRA_ARGS: .*COMFYUI_URL"):
        settings(COMFYUI_EXTRA_ARGS=extra)


@pytest.mark.parametrize(("extra", "instead"), [
    ("--output-directory /tmp/out", "COMFYUI_OUTPUT_DIR"), ("--output-dir=/tmp/out", "COMFYUI_OUTPUT_DIR"),
    ("--input-directory /tmp/in", "COMFYUI_INPUT_DIR"), ("--inp /tmp/in", "COMFYUI_INPUT_DIR"),
    ("--temp-directory /tmp", "SCRATCH_DIR"), ("--user-directory=/tmp/user", "SCRATCH_DIR"),
    ("--base-directory /tmp/base", "SCRATCH_DIR"),
])
def test_extra_args_may_not_move_the_folders_the_supervisor_sets(extra: str, instead: str) -> None:
    """They come last and win. Before: accepted; --output-directory made ComfyUI write where the worker never
    looks (every job's outputs missing), --input-directory load job images from a folder the worker does not
    upload to, and --base-directory moved the custom nodes and models away from the image's."""
    with pytest.raises(ConfigError, match=rf"COMFYUI_EXTRA_ARGS: '{extra.split()[0]}'.*{instead}"):
        settings(COMFYUI_EXTRA_ARGS=extra)


def test_extra_args_that_only_look_alike_pass() -> None:
    assert settings(COMFYUI_EXTRA_ARGS="--cpu --lowvram --preview-method auto").comfyui_argv()[-4:] == [
        "--cpu", "--lowvram", "--preview-method", "auto"]


def test_a_health_port_that_is_comfyuis_port_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: both were started; the health server bound the port first (ComfyUI binds once its models are
    loaded), and ComfyUI died with 'address already in use' in its own traceback: exit 1, restarted, again."""
    from supervisor.__main__ import load_configuration

    monkeypatch.setenv("COMFYUI_COMMAND", sys.executable)
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("COMFYUI_URL", "http://127.0.0.1:8188")
    monkeypatch.setenv("HEALTH_PORT", "8188")
    monkeypatch.delenv("HEALTH_HOST", raising=False)
    with pytest.raises(ConfigError, match="HEALTH_PORT: 8188 is ComfyUI's port"):
        load_configuration()
    monkeypatch.setenv("HEALTH_HOST", "10.0.0.5")  # an address of its own: no clash
    load_configuration()
