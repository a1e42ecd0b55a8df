"""Hostile configuration: every bad value is refused before anything starts, naming the variable.

The loaders raise ConfigError (each process's `main` prints it and exits 2, proven once per process below)."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from common.settings import (
    MAX_QUEUE_TOKEN_CHARS,
    ConfigError,
    allowed_range,
    misspelt_names,
    misspelt_variables,
    setting_names,
    settings_from_env,
)
from queue_manager import QueueManagerServer
from queue_manager.__main__ import QueueManagerEnv
from scaler.allocator import PAUSED, AllocatorState, ProviderSpec, ProviderView, allocate
from scaler.config import ScalerSettings, load_kill_switch_settings
from scaler.config import load_settings as load_scaler_settings
from scaler.health_record import HealthRecord, iso
from scaler.wiring import allocator_config
from supervisor.config import SupervisorSettings, load_supervisor_settings
from worker.config import WorkerSettings
from worker.config import load_settings as load_worker_settings
from worker.queue_client import QueueClient

from ..conftest import run_module_to_exit

REPO = Path(__file__).resolve().parents[2]
WORKER_BASE = {"QUEUE_MANAGER_URL": "http://127.0.0.1:9"}
SCALER_BASE = {"QUEUE_MANAGER_URL": "http://127.0.0.1:9", "SCALER_BACKEND": "local"}

# The queue token travels in an HTTP header: each of these had every request fail, 400, 401 or an encoding error.
TOKEN_CASES = {
    "queue-token-too-long": ("QUEUE_MANAGER_TOKEN", "t" * (MAX_QUEUE_TOKEN_CHARS + 1)),
    "queue-token-not-ascii": ("QUEUE_MANAGER_TOKEN", "tökén"),
    "queue-token-trailing-space": ("QUEUE_MANAGER_TOKEN", "token "),
    "queue-token-newline": ("QUEUE_MANAGER_TOKEN", "tok\nen"),
    # The logs mask no secret this short (one "e" masked every e of every line): it would be printed in clear.
    "queue-token-too-short": ("QUEUE_MANAGER_TOKEN", "e"),
}

WORKER_CASES = {
    "poll-interval-negative": ("WORKER_POLL_INTERVAL", "-1"),
    # Logged and put in every result as given: a blank one, a line break in a log line, 100 KB in every result.
    "inference-provider-blank": ("INFERENCE_PROVIDER", " "),
    "inference-provider-line-break": ("INFERENCE_PROVIDER", "verda\nserverless"),
    "inference-provider-too-long": ("INFERENCE_PROVIDER", "x" * 201),
    "poll-interval-word": ("WORKER_POLL_INTERVAL", "often"),
    "idle-polls-word": ("SERVERLESS_MAX_IDLE_POLLS", "many"),
    "idle-polls-negative": ("SERVERLESS_MAX_IDLE_POLLS", "-1"),
    "health-port-70000": ("HEALTH_PORT", "70000"),
    "health-port-negative": ("HEALTH_PORT", "-1"),
    "job-timeout-zero": ("JOB_TIMEOUT_S", "0"),
    "queue-url-not-a-url": ("QUEUE_MANAGER_URL", "not a url"),
    "queue-url-ftp": ("QUEUE_MANAGER_URL", "ftp://queue.example.com"),
    "comfyui-url-garbage": ("COMFYUI_URL", "://"),
    "log-format-xml": ("LOG_FORMAT", "xml"),
    "log-level-loud": ("LOG_LEVEL", "loud"),
    "serverless-mode-maybe": ("SERVERLESS_MODE", "maybe"),
    "worker-id-control-chars": ("WORKER_ID", "w\x1b[31m"),
    "worker-id-blank": ("WORKER_ID", "   "),
    "worker-id-too-long": ("WORKER_ID", "w" * 201),
    # What the queue manager refuses in every poll (422), the worker refuses at start.
    "worker-id-replacement-character": ("WORKER_ID", "w\ufffd"),
    "outputs-path-empty": ("OUTPUTS_PATH", ""),
    # Another folder than the volume's, made on the container's own disk: every job's results went there.
    "outputs-path-trailing-space": ("OUTPUTS_PATH", "/outputs "),
    "comfyui-output-dir-carriage-return": ("COMFYUI_OUTPUT_DIR", "/data/comfyui/output\r"),
    "poll-interval-inf": ("WORKER_POLL_INTERVAL", "inf"),
    "poll-interval-nan": ("WORKER_POLL_INTERVAL", "nan"),
    "job-timeout-inf": ("JOB_TIMEOUT_S", "inf"),
    "health-host-unresolvable": ("HEALTH_HOST", "no-such-host.invalid"),
    **TOKEN_CASES,
}

SUPERVISOR_CASES = {
    "comfyui-command-missing-program": ("COMFYUI_COMMAND", "/nonexistent/python main.py"),
    "comfyui-command-empty": ("COMFYUI_COMMAND", "   "),
    "comfyui-extra-args-unbalanced-quote": ("COMFYUI_EXTRA_ARGS", '--foo "bar'),
    "comfyui-url-not-loopback": ("COMFYUI_URL", "http://10.0.0.5:8188"),
    "stop-timeout-negative": ("COMFYUI_STOP_TIMEOUT_S", "-3"),
    # Path("") is the working directory: the scratch folders, emptied at every start, would be made there.
    "scratch-dir-empty": ("SCRATCH_DIR", ""),
    "scratch-dir-blank": ("SCRATCH_DIR", "  "),
    "models-dir-empty": ("MODELS_DIR", ""),
    "scratch-dir-carriage-return": ("SCRATCH_DIR", "/data\r"),  # an env file saved on Windows
    # A byte the environment could not decode as UTF-8, quoted in the refusal: a UnicodeEncodeError traceback.
    "comfyui-command-undecodable": ("COMFYUI_COMMAND", "python\udcff main.py"),
    "comfyui-extra-args-undecodable": ("COMFYUI_EXTRA_ARGS", "--lis=\udcff"),
}

SCALER_CASES = {
    **TOKEN_CASES,
    "interval-zero": ("SCALER_INTERVAL_S", "0"),
    "interval-word": ("SCALER_INTERVAL_S", "soon"),
    "metrics-port-70000": ("SCALER_METRICS_PORT", "70000"),
    # Found only when `run` started /metrics: exit 1, `metrics_server_failed`, after the settings were taken.
    "metrics-host-unresolvable": ("SCALER_METRICS_HOST", "no-such-host.invalid"),
    "backend-unknown": ("SCALER_BACKEND", "kubernetes"),
    "max-replicas-negative": ("SCALER_MAX_REPLICAS", "-2"),
    "failure-alert-zero": ("SCALER_FAILURE_ALERT_AFTER", "0"),
    "interval-nan": ("SCALER_INTERVAL_S", "nan"),
    "interval-inf": ("SCALER_INTERVAL_S", "inf"),
    "interval-a-year": ("SCALER_INTERVAL_S", "31536000"),
    "target-wait-inf": ("SCALER_TARGET_WAIT_S", "inf"),
    "budget-inf": ("SCALER_MAX_SPEND_PER_HOUR", "inf"),
    # Positive durations taken at their word: a tick loop hammering both peers, a ledger of 1e302 intervals.
    "interval-denormal": ("SCALER_INTERVAL_S", "1e-300"),
    "interval-below-a-second": ("SCALER_INTERVAL_S", "0.5"),
    "billing-interval-denormal": ("SCALER_BILLING_INTERVAL_S", "5e-324"),
    "billing-interval-zero": ("SCALER_BILLING_INTERVAL_S", "0"),
    "target-wait-denormal": ("SCALER_TARGET_WAIT_S", "1e-300"),
    "job-duration-denormal": ("SCALER_DEFAULT_JOB_DURATION_S", "1e-300"),
    "start-deadline-denormal": ("SCALER_FALLBACK_START_DEADLINE_S", "1e-300"),
    "fallback-retry-denormal": ("SCALER_FALLBACK_RETRY_S", "1e-300"),
    "fallback-retry-max-zero": ("SCALER_FALLBACK_RETRY_MAX_S", "0"),
    "stabilization-window-a-year": ("SCALER_STABILIZATION_WINDOW_S", "31536000"),
    "stabilization-window-nan": ("SCALER_STABILIZATION_WINDOW_S", "nan"),
    "idle-to-zero-inf": ("SCALER_IDLE_TO_ZERO_S", "inf"),
    # One decision weighs up to max_replicas new replicas against every queued job: 9.1 s for 3000 at 10^9.
    "max-replicas-a-billion": ("SCALER_MAX_REPLICAS", "1000000000"),
    "max-replicas-past-the-limit": ("SCALER_MAX_REPLICAS", "101"),
    "local-max-replicas-a-billion": ("SCALER_LOCAL_MAX_REPLICAS", "1000000000"),
    "verda-max-replicas-past-the-limit": ("SCALER_VERDA_MAX_REPLICAS", "101"),
    "runpod-max-replicas-a-billion": ("SCALER_RUNPOD_MAX_REPLICAS", "1000000000"),
    # The client secret and the tokens it buys travel with every request to Verda.
    "verda-api-url-in-clear": ("VERDA_API_URL", "http://api.verda.com/v1"),
    # Taken, any budget paid for replicas by the 1e300 (every scale-up an OverflowError) or a day's spend by inf.
    "price-denormal": ("SCALER_PRICE_PER_REPLICA_HOUR", "1e-320"),
    "price-near-max-float": ("SCALER_PRICE_PER_REPLICA_HOUR", "1e308"),
    "verda-price-denormal": ("SCALER_VERDA_PRICE_PER_HOUR", "1e-320"),
    "runpod-price-near-max-float": ("SCALER_RUNPOD_PRICE_PER_HOUR", "1e308"),
    "local-price-below-the-floor": ("SCALER_LOCAL_PRICE_PER_HOUR", "0.0001"),
    # Too short for the logs to mask: "e" masked every e of every line ("v***rda_auth***nticating").
    "verda-client-secret-too-short": ("VERDA_CLIENT_SECRET", "e"),
    "runpod-api-key-too-short": ("RUNPOD_API_KEY", "rpa_x"),
    # Pasted with a newline (a secret made from a file), a space, or not ASCII: every RunPod request failed
    # ("Illegal header value", UnicodeEncodeError), every Verda login was refused (401), for ever.
    "runpod-api-key-pasted-newline": ("RUNPOD_API_KEY", "rpa_0123456789abcdef\n"),
    "runpod-api-key-not-ascii": ("RUNPOD_API_KEY", "rpa_0123456789abcdéf"),
    "verda-client-secret-trailing-space": ("VERDA_CLIENT_SECRET", "a-long-enough-secret "),
    "verda-client-id-pasted-newline": ("VERDA_CLIENT_ID", "verda-client-id\n"),
    "queue-worker-token-too-short": ("QUEUE_MANAGER_WORKER_TOKEN", "w-token"),
}


QUEUE_MANAGER_CASES = {
    # Shorter than any heartbeat: every job handed back at each reaper pass, its worker beating every 0.05 s.
    "lease-timeout-denormal": ("LEASE_TIMEOUT_S", "1e-320"),
    "lease-timeout-below-a-second": ("LEASE_TIMEOUT_S", "0.5"),
    "lease-timeout-1e23": ("LEASE_TIMEOUT_S", "1e23"),
    "retention-1e23": ("FINISHED_JOB_RETENTION_S", "1e23"),
    "round-robin-window-1e23": ("ROUND_ROBIN_WINDOW_S", "1e23"),
}
WORKER_CASES |= {
    # Taken at its word, 1e-320: an idle worker polled the queue manager nonstop, a held job was heartbeated nonstop.
    "poll-interval-denormal": ("WORKER_POLL_INTERVAL", "1e-320"),
    "lease-heartbeat-denormal": ("LEASE_HEARTBEAT_S", "1e-320"),
    # ... and every request, job or wait for ComfyUI timed out before an answer could come.
    "http-timeout-denormal": ("HTTP_TIMEOUT_S", "1e-320"),
    "job-timeout-denormal": ("JOB_TIMEOUT_S", "1e-320"),
}


def _clean_env(monkeypatch: pytest.MonkeyPatch, base: dict[str, str], variable: str, value: str) -> None:
    for name in list(os.environ):
        prefixes = ("QUEUE_MANAGER", "SERVERLESS", "WORKER_", "SCALER_", "COMFYUI_", "VERDA_", "LOG_", "HEALTH_")
        if name.startswith((*prefixes, "OUTPUTS_", "SCRATCH_", "MODELS_", "WARMUP_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(REPO / "tests")  # no .env file is read from here
    for name, base_value in {**base, variable: value}.items():
        monkeypatch.setenv(name, base_value)


def _assert_refused(load: Callable[[], object], variable: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load()
    assert f"  {variable}:" in str(refused.value), str(refused.value)


@pytest.mark.parametrize(("variable", "value"), QUEUE_MANAGER_CASES.values(), ids=QUEUE_MANAGER_CASES.keys())
def test_queue_manager_refuses(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    _clean_env(monkeypatch, {}, variable, value)
    with pytest.raises(ConfigError) as refused:
        settings_from_env(QueueManagerEnv, "queue manager")
    assert f"  {variable}:" in str(refused.value), str(refused.value)
    assert "604800" in str(refused.value) or "315360000" in str(refused.value), "the refusal says the range"


@pytest.mark.parametrize("value", ["0", "1", "604800"])
def test_a_lease_of_0_or_within_the_range_is_taken(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    _clean_env(monkeypatch, {}, "LEASE_TIMEOUT_S", value)
    assert settings_from_env(QueueManagerEnv, "queue manager").lease_timeout_s == float(value)


def test_the_longest_fallback_back_off_accepted_leaves_a_health_record_that_can_be_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: SCALER_FALLBACK_RETRY_S and _MAX_S had no ceiling. At 1e23, a paused provider's retry was due past the
    year 9999: the health record the fleet writes held a time no reader takes (ValueError), so `status` called it
    unreadable and a restarted scaler forgot every degradation."""
    longest = {name: str(allowed_range(ScalerSettings, name)[1] or 1e23)
               for name in ("SCALER_FALLBACK_RETRY_S", "SCALER_FALLBACK_RETRY_MAX_S")}
    _clean_env(monkeypatch, SCALER_BASE, "SCALER_FALLBACK_RETRY_S", longest["SCALER_FALLBACK_RETRY_S"])
    monkeypatch.setenv("SCALER_FALLBACK_RETRY_MAX_S", longest["SCALER_FALLBACK_RETRY_MAX_S"])
    settings = load_scaler_settings()
    config = allocator_config(settings, (ProviderSpec("verda", 2, 1.0), ProviderSpec("runpod", 2, 2.0)))
    now = 1_800_000_000.0
    views = {"verda": ProviderView(status=PAUSED), "runpod": ProviderView()}
    health = allocate(config, AllocatorState(), 1, views, now).new_state.health
    assert health["verda"].retry_at is not None  # degraded: paused
    written = json.loads(json.dumps(HealthRecord.of(health, {}, now).to_json()))
    read = HealthRecord.from_json(written)
    assert iso(read.degraded["verda"].retry_at) is not None


@pytest.mark.parametrize(("variable", "value"), WORKER_CASES.values(), ids=WORKER_CASES.keys())
def test_worker_refuses(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    _clean_env(monkeypatch, WORKER_BASE, variable, value)
    _assert_refused(load_worker_settings, variable)


@pytest.mark.parametrize(("variable", "value"), SUPERVISOR_CASES.values(), ids=SUPERVISOR_CASES.keys())
def test_supervisor_refuses(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    _clean_env(monkeypatch, {}, variable, value)
    _assert_refused(load_supervisor_settings, variable)


@pytest.mark.parametrize(("variable", "value"), SCALER_CASES.values(), ids=SCALER_CASES.keys())
def test_scaler_refuses(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    _clean_env(monkeypatch, SCALER_BASE, variable, value)
    _assert_refused(load_scaler_settings, variable)


@pytest.mark.parametrize("variable", ["COMFYUI_OUTPUT_DIR", "COMFYUI_TEMP_DIR", "WARMUP_WORKFLOW", "HEALTH_PORT_FILE"])
@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
def test_an_empty_optional_path_is_unset_not_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Before: Path("") is ".", so COMFYUI_OUTPUT_DIR="" (a compose file's `${COMFYUI_OUTPUT_DIR}` left unset) had
    the worker delete the result files ComfyUI named from its working directory, and WARMUP_WORKFLOW="" made the
    warm-up read a directory ("IsADirectoryError") and the worker stay not ready."""
    _clean_env(monkeypatch, WORKER_BASE, variable, value)
    settings = load_worker_settings()
    assert getattr(settings, variable.lower()) is None


@pytest.mark.parametrize("variable", ["SCALER_STATE_FILE", "SCALER_LEDGER_FILE", "SCALER_LOCAL_LOG_DIR",
                                      "SCALER_DEPLOY_SPEC"])
def test_a_blank_scaler_path_is_unset_not_a_file_named_by_spaces(monkeypatch: pytest.MonkeyPatch, variable: str):
    """Before: an empty value was ignored, but SCALER_STATE_FILE="  " saved the scaler's state in a file named by two
    spaces in its working folder."""
    _clean_env(monkeypatch, SCALER_BASE, variable, "  ")
    settings = load_scaler_settings()
    assert getattr(settings, variable.removeprefix("SCALER_").lower()) is None


@pytest.mark.parametrize("value", ["", " ", " \t "], ids=["empty", "space", "blank"])
def test_a_blank_verda_credential_is_unset_and_refused_naming_it(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Before: VERDA_CLIENT_SECRET=" " was taken, and masked as a secret: every space of every log line became ***,
    and the only error was Verda's 401."""
    _clean_env(monkeypatch, {**SCALER_BASE, "SCALER_BACKEND": "verda"}, "VERDA_CLIENT_SECRET", value)
    monkeypatch.setenv("VERDA_CLIENT_ID", value)
    with pytest.raises(ConfigError) as refused:
        load_scaler_settings()
    for variable in ("VERDA_CLIENT_ID", "VERDA_CLIENT_SECRET"):
        assert f"  {variable}: required to drive Verda" in str(refused.value), str(refused.value)


@pytest.mark.parametrize(("variable", "value", "named"), [
    ("VERDA_CLIENT_SECRET", " ", "VERDA_CLIENT_SECRET: required to drive Verda"),
    ("VERDA_CLIENT_SECRET", "e", "VERDA_CLIENT_SECRET: is 1 characters; a credential needs at least 8"),
    ("SCALER_PRICE_PER_REPLICA_HOUR", "1e-320", "SCALER_PRICE_PER_REPLICA_HOUR: must be 0 (free) or between"),
])
def test_the_scaler_given_a_bad_credential_or_price_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, named: str
) -> None:
    """Before: `status` printed a traceback (OverflowError) for the price, and took the blank secret."""
    from scaler.cli import main as scaler_main

    _clean_env(monkeypatch, {**SCALER_BASE, "SCALER_BACKEND": "verda", "VERDA_API_URL": "http://127.0.0.1:9/v1",
                             "VERDA_CLIENT_ID": "cid", "VERDA_CLIENT_SECRET": "a-long-enough-secret"}, variable, value)
    assert scaler_main(["status"]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
def test_a_blank_runpod_api_key_is_unset(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    _clean_env(monkeypatch, SCALER_BASE, "RUNPOD_API_KEY", value)
    assert load_scaler_settings().runpod_api_key is None


@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
def test_an_empty_comfyui_output_dir_is_the_supervisors_own_folder(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Before: ComfyUI got --output-directory "." (the container's home folder), and the worker tidied there."""
    _clean_env(monkeypatch, {"SCRATCH_DIR": "/data"}, "COMFYUI_OUTPUT_DIR", value)
    config = load_supervisor_settings()
    assert config.output_dir == Path("/data/comfyui/output")
    assert config.comfyui_argv()[config.comfyui_argv().index("--output-directory") + 1] == "/data/comfyui/output"


@pytest.mark.parametrize(("load", "base"), [(load_worker_settings, WORKER_BASE), (load_scaler_settings, SCALER_BASE)],
                         ids=["worker", "scaler"])
def test_a_queue_url_with_a_password_is_refused_beside_a_token_it_would_replace(
    monkeypatch: pytest.MonkeyPatch, load: Callable[[], object], base: dict[str, str]
) -> None:
    """httpx sends a URL's user name and password as the Authorization header in place of the bearer token: the
    queue manager refused every request with 401, and the worker said QUEUE_MANAGER_TOKEN was wrong."""
    _clean_env(monkeypatch, base, "QUEUE_MANAGER_URL", "https://worker:pw@queue.example.com")
    monkeypatch.setenv("QUEUE_MANAGER_TOKEN", "a-queue-token")
    with pytest.raises(ConfigError, match="QUEUE_MANAGER_URL carries a user name or password and QUEUE_MANAGER_TOKEN"):
        load()
    # A user name alone (a token as the user) or a password alone goes as Basic all the same.
    for url in ("https://ghp-token@queue.example.com", "https://:pw@queue.example.com"):
        monkeypatch.setenv("QUEUE_MANAGER_URL", url)
        with pytest.raises(ConfigError, match="QUEUE_MANAGER_URL carries a user name or password"):
            load()
    monkeypatch.setenv("QUEUE_MANAGER_URL", "https://queue.example.com/?sig=abc")  # leaves the header to the token
    load()
    monkeypatch.setenv("QUEUE_MANAGER_URL", "https://worker:pw@queue.example.com")
    monkeypatch.delenv("QUEUE_MANAGER_TOKEN")
    load()


def _dot_env_not_utf8(path: Path) -> None:
    path.write_text("SCALER_BACKEND=local\n", encoding="utf-16")  # Windows Notepad's "Unicode"


def _dot_env_unreadable(path: Path) -> None:
    # Another user's, mode 0600. /dev/full's reads succeed; /proc/self/mem's first page fails as an unreadable file
    # does, for root too.
    path.symlink_to("/proc/self/mem")


@pytest.mark.parametrize(
    ("make", "said"),
    [(_dot_env_not_utf8, "  .env: not UTF-8"), (_dot_env_unreadable, "  .env: cannot be read (")],
    ids=["not-utf8", "unreadable"],
)
@pytest.mark.parametrize(
    "load",
    [load_worker_settings, load_supervisor_settings, load_scaler_settings, load_kill_switch_settings],
    ids=["worker", "supervisor", "scaler", "kill-switch"],
)
def test_a_dot_env_file_that_cannot_be_read_as_text_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, load: Callable[[], object], make: Callable[[Path], None],
    said: str,
) -> None:
    """Before: a UnicodeDecodeError or OSError traceback (the kill switch too: nothing stopped)."""
    _clean_env(monkeypatch, SCALER_BASE, "LOG_LEVEL", "info")
    make(tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        load()
    assert said in str(refused.value), str(refused.value)


@pytest.mark.parametrize(
    ("module", "env", "variable"),
    [
        ("worker", {**WORKER_BASE, "HEALTH_PORT": "70000"}, "HEALTH_PORT"),
        ("queue_manager", {"LEASE_TIMEOUT_S": "inf"}, "LEASE_TIMEOUT_S"),
        ("queue_manager", {"QUEUE_MANAGER_TOKEN": "token "}, "QUEUE_MANAGER_TOKEN"),
    ],
)
async def test_a_process_given_a_bad_value_exits_2_naming_it(
    tmp_path: Path, module: str, env: dict[str, str], variable: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_MANAGER", "WORKER_", "LEASE_"))}
    code, err = await run_module_to_exit(module, env={**clean, **env, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert code == 2
    assert variable in err


async def test_a_queue_manager_token_flag_it_could_never_match_exits_2_naming_the_flag(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUEUE_MANAGER")}
    code, err = await run_module_to_exit("queue_manager", "--db", str(tmp_path / "q.db"), "--token", "t" * 9000,
                                         env={**clean, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert code == 2
    assert "--token is 9000 characters; at most 8183" in err


async def test_the_longest_queue_token_allowed_is_one_the_queue_manager_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit is the queue manager's own: its longest token gets through, one character more is refused
    there (400), which is why the settings refuse it at start."""
    longest = "t" * MAX_QUEUE_TOKEN_CHARS
    _clean_env(monkeypatch, WORKER_BASE, "QUEUE_MANAGER_TOKEN", longest)
    assert load_worker_settings().queue_manager_token.get_secret_value() == longest
    async with QueueManagerServer(token=longest) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        worker_queue = QueueClient(queue.url, "w", token=longest)
        try:
            assert await worker_queue.next_job() is None
        finally:
            await worker_queue.aclose()
        too_long = await client.get("/api/jobs", headers={"Authorization": f"Bearer {longest}t"})
    assert too_long.status_code == 400


def test_a_misspelt_required_variable_is_named_with_the_setting_it_resembles(monkeypatch: pytest.MonkeyPatch) -> None:
    """QUEUE_MANGER_URL set, QUEUE_MANAGER_URL missing: the refusal said only 'Field required'."""
    _clean_env(monkeypatch, {}, "QUEUE_MANGER_URL", "http://127.0.0.1:9")
    with pytest.raises(ConfigError) as refused:
        load_worker_settings()
    assert "  QUEUE_MANGER_URL: no setting has this name (ignored): did you mean QUEUE_MANAGER_URL?" in str(
        refused.value
    )


@pytest.mark.parametrize(
    ("settings_cls", "variable", "setting"),
    [
        (WorkerSettings, "SERVERLESS_MOD", "SERVERLESS_MODE"),  # a worker that never exits, billed
        (WorkerSettings, "SERVERLES_MODE", "SERVERLESS_MODE"),
        (WorkerSettings, "HEALTH_PROT", "HEALTH_PORT"),  # two letters swapped
        (ScalerSettings, "SCALER_MAX_REPLICA", "SCALER_MAX_REPLICAS"),  # the scaler ran with 5
        (ScalerSettings, "SCALER_MAX_SPEND_PER_DY", "SCALER_MAX_SPEND_PER_DAY"),  # no budget at all
        (QueueManagerEnv, "LEASE_TIMEOUT", "LEASE_TIMEOUT_S"),
    ],
)
def test_a_misspelt_variable_is_found(
    monkeypatch: pytest.MonkeyPatch, settings_cls: type, variable: str, setting: str
) -> None:
    _clean_env(monkeypatch, {}, variable, "1")
    assert misspelt_variables(settings_cls) == [(variable, setting)]


def test_settings_and_other_programs_variables_are_not_taken_for_typos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variable any of the processes reads, and the usual ones of a shell or a container, set at once."""
    every_setting = set().union(*(setting_names(cls) for cls in (WorkerSettings, ScalerSettings, QueueManagerEnv,
                                                                  SupervisorSettings)))
    for name in (*every_setting, "PATH", "HOME", "HOSTNAME", "PYTHONPATH", "NVIDIA_VISIBLE_DEVICES", "LANG"):
        monkeypatch.setenv(name, "1")
    monkeypatch.chdir(REPO / "tests")
    for settings_cls in (WorkerSettings, ScalerSettings, QueueManagerEnv, SupervisorSettings):
        assert misspelt_variables(settings_cls) == [], settings_cls.__name__


def test_names_given_are_judged_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deploy judges a container's variables, not the deploying shell's: misspelt_names reads no environment."""
    _clean_env(monkeypatch, {}, "HEALTH_PROT", "1")
    names = ["SERVERLESS_MOD", "COMFYUI_STOP_TIMEOUT", "HF_TOKEN", "SERVERLESS_MODE"]
    assert misspelt_names(names, SupervisorSettings, WorkerSettings) == [
        ("COMFYUI_STOP_TIMEOUT", "COMFYUI_STOP_TIMEOUT_S"), ("SERVERLESS_MOD", "SERVERLESS_MODE")]


def test_a_misspelt_variable_in_the_dot_env_file_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clean_env(monkeypatch, {}, "LOG_LEVEL", "info")
    (tmp_path / ".env").write_text("SERVERLESS_MOD=true\n")
    monkeypatch.chdir(tmp_path)
    assert misspelt_variables(WorkerSettings) == [("SERVERLESS_MOD", "SERVERLESS_MODE")]


async def test_a_process_that_starts_warns_of_a_misspelt_variable(tmp_path: Path) -> None:
    """SERVERLESS_MOD=true and LEASE_TIMEOUT=5 were ignored without a word. Each process here ends just after its
    start (the health port taken; the database folder missing), once it has logged."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUE_MANAGER", "WORKER_", "LEASE_"))}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**clean, **WORKER_BASE, "SERVERLESS_MOD": "true", "HEALTH_HOST": "127.0.0.1",
               "HEALTH_PORT": str(taken.getsockname()[1]), "LOG_FORMAT": "json", "PYTHONPATH": str(REPO)}
        code, err = await run_module_to_exit("worker", env=env, cwd=tmp_path)
    assert code == 1
    [warned] = [json.loads(line) for line in err.splitlines() if "SERVERLESS_MOD" in line]
    assert warned["event"] == "Variable ignored: no setting has its name"
    assert warned["did_you_mean"] == "SERVERLESS_MODE" and warned["level"] == "warning"

    with socket.socket() as taken:  # the container: the supervisor reads its settings and the worker's
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        (tmp_path / "outputs").mkdir()
        env = {**clean, **WORKER_BASE, "SERVERLESS_MOD": "true", "LOG_FORMAT": "json", "PYTHONPATH": str(REPO),
               "COMFYUI_URL": f"http://127.0.0.1:{taken.getsockname()[1]}", "OUTPUTS_PATH": str(tmp_path / "outputs"),
               "SCRATCH_DIR": str(tmp_path)}
        code, err = await run_module_to_exit("supervisor", env=env, cwd=tmp_path)
    assert code == 1, err  # ComfyUI's port taken: it stops before starting anything
    [warned] = [json.loads(line) for line in err.splitlines() if "SERVERLESS_MOD" in line]
    assert (warned["event"], warned["did_you_mean"]) == ("Variable ignored: no setting has its name", "SERVERLESS_MODE")

    env = {**clean, "LEASE_TIMEOUT": "5", "LOG_FORMAT": "json", "PYTHONPATH": str(REPO)}
    code, err = await run_module_to_exit("queue_manager", "--db", str(tmp_path / "no" / "q.db"), env=env, cwd=tmp_path)
    assert code == 2
    [warned] = [json.loads(line) for line in err.splitlines() if "LEASE_TIMEOUT" in line]
    assert warned["did_you_mean"] == "LEASE_TIMEOUT_S"


@pytest.mark.parametrize("trust", ["missing-file", "not-certificates", "missing-folder", "unhashed-folder"])
@pytest.mark.parametrize(
    ("module", "args", "env"),
    [("worker", (), WORKER_BASE), ("scaler.cli", ("status",), SCALER_BASE), ("scaler.deploy", ("status",), {})],
    ids=["worker", "scaler", "deploy"],
)
async def test_a_trust_store_that_cannot_be_used_is_refused_naming_it(
    tmp_path: Path, module: str, args: tuple[str, ...], env: dict[str, str], trust: str
) -> None:
    """httpx trusts SSL_CERT_FILE (else SSL_CERT_DIR) in place of its own CA bundle. A file it cannot load ended the
    worker and the scaler at their first HTTP client in a FileNotFoundError or ssl.SSLError traceback (exit 1); a
    folder that does not exist, or whose certificates OpenSSL cannot find (not named by their hash, as `openssl
    rehash` names them), failed every TLS connection with "certificate verify failed", for ever. Now: exit 2 naming
    the variable, before anything starts."""
    import certifi

    (tmp_path / "words.txt").write_text("not a certificate\n")
    (tmp_path / "my-cas").mkdir()
    shutil.copy(certifi.where(), tmp_path / "my-cas" / "my-ca.pem")
    variable, value = {
        "missing-file": ("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem")),
        "not-certificates": ("SSL_CERT_FILE", str(tmp_path / "words.txt")),
        "missing-folder": ("SSL_CERT_DIR", str(tmp_path / "no-such-folder")),
        "unhashed-folder": ("SSL_CERT_DIR", str(tmp_path / "my-cas")),
    }[trust]
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("QUEUE_MANAGER", "WORKER_", "SCALER_", "SSL_CERT", "VERDA_"))}
    env = {**clean, **env, variable: value, "PYTHONPATH": str(REPO), "HEALTH_PORT": "0", "SCALER_METRICS_PORT": "0",
           "OUTPUTS_PATH": str(tmp_path / "outputs")}
    code, err = await run_module_to_exit(module, *args, env=env, cwd=tmp_path)
    assert (code, "Traceback" in err) == (2, False), err
    assert f"  {variable}: {value}" in err, err


def test_the_usual_trust_store_settings_are_taken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PEM bundle, a folder of certificates named by their hash (or a list of folders, as OpenSSL reads it), or
    neither: nothing to refuse."""
    import certifi

    _clean_env(monkeypatch, WORKER_BASE, "SSL_CERT_FILE", certifi.where())
    load_worker_settings()
    monkeypatch.delenv("SSL_CERT_FILE")
    (tmp_path / "hashed").mkdir()
    (tmp_path / "hashed" / "5ad8a5d6.0").symlink_to(certifi.where())  # as `openssl rehash` names a certificate
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "hashed"))
    load_worker_settings()
    monkeypatch.setenv("SSL_CERT_DIR", f"{tmp_path / 'no-such-folder'}:{tmp_path / 'hashed'}")
    load_worker_settings()
    monkeypatch.delenv("SSL_CERT_DIR")
    load_worker_settings()
