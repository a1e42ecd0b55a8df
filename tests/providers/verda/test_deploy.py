"""The deploy tooling: spec validation, the exact dry-run body, idempotent apply against the fake API."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from common.settings import quoted
from scaler.deploy import verda as verda_deploy
from scaler.deploy.command import deploy_main
from scaler.deploy.spec import DEFAULT_SPEC_PATH, SpecError, build_body, load_spec
from scaler.providers.verda.client import VerdaClient
from standins.verda import FakeVerda

from ..conftest import RecordingSleep
from .conftest import QUEUE_TOKEN

REPO = Path(__file__).resolve().parents[3]
NAME = "comfyui-worker-serverless"


def problems_for(spec_path: Path, env: dict[str, str]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(spec_path, env)
    return caught.value.problems


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"VERDA_IMAGE": "ghcr.io/acme/worker:latest"}, "deployment.image"),
        ({"VERDA_IMAGE": "ghcr.io/acme/worker"}, "deployment.image"),
        ({"VERDA_IMAGE": "ghcr.io/OWNER/worker:0.1.0"}, "deployment.image"),
        ({"VERDA_IMAGE": "ghcr.io/acme/worker@sha256:abc"}, "deployment.image"),
        ({"VERDA_DEPLOYMENT_NAME": "Comfy_Worker"}, "deployment.name"),
        ({"VERDA_DEPLOYMENT_NAME": "a" * 64}, "deployment.name"),
        ({"VERDA_DEPLOYMENT_NAME": "-comfy"}, "deployment.name"),
        ({"VERDA_DEPLOYMENT_NAME": "comfy-"}, "deployment.name"),
        ({"VERDA_COMPUTE_SIZE": "0"}, "compute.size"),
        ({"VERDA_COMPUTE_SIZE": "100000"}, "compute.size"),  # before: sent to Verda as is
        ({"VERDA_MIN_REPLICAS": "6"}, "scaling"),
        ({"QUEUE_MANAGER_URL": ""}, "env_from_environment.QUEUE_MANAGER_URL"),
        ({"VERDA_MODELS_VOLUME_ID": ""}, "volume_mounts.0"),
        ({"VERDA_OUTPUTS_VOLUME_ID": ""}, "volume_mounts.1"),
    ],
)
def test_invalid_values_are_reported_by_field(spec_path: Path, deploy_env, override, field) -> None:
    problems = problems_for(spec_path, {**deploy_env, **override})
    assert len(problems) == 1
    assert problems[0].startswith(f"{field}:")


def test_placeholder_spec_lists_every_missing_value(spec_path: Path) -> None:
    fields = [p.split(":")[0] for p in problems_for(spec_path, {})]
    assert fields == [
        "deployment.image", "volume_mounts.0", "volume_mounts.1", "env_from_environment.QUEUE_MANAGER_URL"
    ]


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('HEALTH_PORT = "8000"', 'health-port = "8000"', "env"),
        ('HEALTH_PORT = "8000"', 'HEALTH_PORT = "9000"', "spec"),
        ("queue_load_threshold = 1", "queue_load_threshold = 0", "scaling.queue_load_threshold"),
        ('type = "scratch"', 'type = "nfs"', "volume_mounts.2.type"),
        ("size_in_mb = 16384", "size_in_mbb = 16384", "volume_mounts.3"),
        # Before: each sent to Verda as is.
        ("size_in_mb = 16384", "size_in_mb = 163840000", "volume_mounts.3.size_in_mb"),
        ("scale_down_delay_seconds = 300", "scale_down_delay_seconds = 3000000", "scaling.scale_down_delay_seconds"),
        ("scale_up_delay_seconds = 0", "scale_up_delay_seconds = 10000000", "scaling.scale_up_delay_seconds"),
        ('QUEUE_MANAGER_TOKEN = "comfyui-worker-queue-manager-token"', 'QUEUE_MANAGER_TOKEN = "Bad Name"', "secrets"),
    ],
)
def test_spec_file_errors_name_the_field(tmp_path: Path, spec_path: Path, deploy_env, old, new, field) -> None:
    text = spec_path.read_text()
    assert old in text
    edited = tmp_path / "deployment.toml"
    edited.write_text(text.replace(old, new, 1))
    problems = problems_for(edited, deploy_env)
    assert any(p.startswith(f"{field}") for p in problems), problems


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('deployment = "comfy"\n', "deployment: must be a table"),
        ("compute = 5\n", "compute: must be a table"),
        ('env_from_environment = ["QUEUE_MANAGER_URL"]\n', "env_from_environment: must be a table"),
        ('[env_from_environment]\nnames = "QUEUE_MANAGER_URL"\n', "env_from_environment.names: must be a list"),
        ('volume_mounts = "/models"\n', "volume_mounts: must be a list of tables"),
        ("volume_mounts = [1]\n", "volume_mounts.0: must be a table"),
        # Before: TypeError tracebacks ('int' object is not iterable, unhashable type: 'list').
        ("env = 5\n", "env: must be a table"),
        ("secrets = [[1]]\n", "secrets: must be a table"),
        ('[env_from_environment]\nnames = ["QUEUE_MANAGER_URL", [1]]\n',
         "env_from_environment.names.1: must be a string"),
        ('[[volume_mounts]]\ntype = "shared"\nmount_path = ["/models"]\n',
         "volume_mounts.0.mount_path: must be a string"),
    ],
)
def test_a_spec_of_the_wrong_shape_is_refused_naming_the_field_not_a_traceback(
    tmp_path: Path, deploy_env, text, field
) -> None:
    """Before, the steps before validation (overrides from the environment, credential URLs made secrets) met a
    string where a table belongs and raised AttributeError: a traceback from ./deploy-serverless.sh."""
    spec = tmp_path / "deployment.toml"
    spec.write_text(text)
    assert field in problems_for(spec, {**deploy_env, "VERDA_DEPLOYMENT_NAME": "comfy", "VERDA_COMPUTE": "H100"})


def test_a_spec_nested_past_the_toml_parser_is_refused_naming_the_file(tmp_path: Path, deploy_env) -> None:
    spec = tmp_path / "deployment.toml"
    spec.write_text("env = " + "[" * 100_000 + "]" * 100_000 + "\n")
    [problem] = problems_for(spec, deploy_env)
    assert problem.startswith(f"{quoted(str(spec))}: ") and "nested" in problem


def test_a_spec_file_past_a_megabyte_is_refused_naming_the_file_unread(tmp_path: Path, deploy_env) -> None:
    """Before: read whole whatever its size: --spec naming a 300 MB file took 674 MB (a model file, /dev/zero: as
    much memory as it holds, or without end) before a parse error."""
    spec = tmp_path / "deployment.toml"
    spec.write_text(DEFAULT_SPEC_PATH.read_text() + "#" * (1024 * 1024))
    [problem] = problems_for(spec, deploy_env)
    assert problem.startswith(f"{quoted(str(spec))}: more than 1048576 bytes"), problem


DEPLOY_DRY_RUN = """
import asyncio, json, sys
from scaler.deploy.command import deploy_main
sys.exit(asyncio.run(deploy_main(["--spec", sys.argv[1], "--dry-run"], json.loads(sys.argv[2]))))
"""


@pytest.mark.parametrize("planted", ["fifo", "dev-zero", "directory"])
def test_a_spec_that_is_a_fifo_a_device_or_a_directory_is_refused_naming_it_not_waited_on(
    tmp_path: Path, deploy_env, planted
) -> None:
    """Before: --spec naming a FIFO held the deploy in the open for good (the size bound came after the open).
    Run in a child with a timeout: a hold fails the test rather than hanging it."""
    spec = tmp_path / "deployment.toml"
    if planted == "fifo":
        os.mkfifo(spec)
    elif planted == "dev-zero":
        spec.symlink_to("/dev/zero")
    else:
        spec.mkdir()
    done = subprocess.run([sys.executable, "-c", DEPLOY_DRY_RUN, str(spec), json.dumps(deploy_env)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"--spec {quoted(str(spec))}: a directory, a FIFO or a device, not a file: no deployment spec" in done.stderr


def test_digest_pinned_image_is_accepted(spec_path: Path, deploy_env) -> None:
    digest = "ghcr.io/acme/worker@sha256:" + "a" * 64
    assert load_spec(spec_path, {**deploy_env, "VERDA_IMAGE": digest}).deployment.image == digest


def test_the_commented_inputs_volume_once_uncommented_takes_its_id_from_the_environment(
    spec_path: Path, deploy_env, tmp_path: Path
) -> None:
    """The spec's optional uploads volume (docs/container.md, "Workflows that load files"), as an operator enables
    it: the block uncommented and COMFYUI_INPUT_DIR set; its id from VERDA_INPUTS_VOLUME_ID like the others'."""
    text = spec_path.read_text()
    block = '# [[volume_mounts]]\n# type = "shared"\n# mount_path = "/inputs"\n'
    assert block in text
    text = text.replace(block, block.replace("# ", "")).replace("# volume_id = \"\"", "volume_id = \"\"", 1)
    text = text.replace('OUTPUTS_PATH = "/outputs"', 'OUTPUTS_PATH = "/outputs"\nCOMFYUI_INPUT_DIR = "/inputs"')
    enabled = tmp_path / "deployment.toml"
    enabled.write_text(text)

    body = build_body(load_spec(enabled, {**deploy_env, "VERDA_INPUTS_VOLUME_ID": "sfs-uploads-1"}))

    mounts = body["containers"][0]["volume_mounts"]
    assert {"type": "shared", "mount_path": "/inputs", "volume_id": "sfs-uploads-1"} in mounts
    env = {e["name"]: e["value_or_reference_to_secret"] for e in body["containers"][0]["env"]}
    assert env["COMFYUI_INPUT_DIR"] == "/inputs"
    assert problems_for(enabled, deploy_env) == [
        "volume_mounts.2: volume_id is required for the shared mount at /inputs (set VERDA_INPUTS_VOLUME_ID)"
    ]


async def test_an_uploads_folder_on_no_volume_is_refused_before_anything_is_sent(
    fake: FakeVerda, spec_path: Path, deploy_env, tmp_path: Path, capsys
) -> None:
    """COMFYUI_INPUT_DIR set but its volume left commented out: every replica would exit 2 at start."""
    enabled = tmp_path / "deployment.toml"
    enabled.write_text(spec_path.read_text().replace('OUTPUTS_PATH = "/outputs"',
                                                     'OUTPUTS_PATH = "/outputs"\nCOMFYUI_INPUT_DIR = "/inputs"'))

    assert await deploy_main(["--spec", str(enabled), "--dry-run"], deploy_env) == 2

    err = capsys.readouterr().err
    assert "env.COMFYUI_INPUT_DIR: no shared volume is mounted at /inputs" in err, err
    assert fake.requests == []


def test_body_matches_the_platform_defaults(spec_path: Path, deploy_env) -> None:
    body = build_body(load_spec(spec_path, deploy_env))
    container = body["containers"][0]
    env = {e["name"]: (e["value_or_reference_to_secret"], e["type"]) for e in container["env"]}
    assert body["name"] == NAME and body["compute"] == {"name": "H100", "size": 1} and body["is_spot"] is False
    assert container["healthcheck"] == {"enabled": True, "port": 8000, "path": "/health"}
    assert env["QUEUE_MANAGER_URL"] == ("https://queue.example.com", "plain")
    assert env["QUEUE_MANAGER_TOKEN"] == ("comfyui-worker-queue-manager-token", "secret")
    assert env["SERVERLESS_MODE"] == ("true", "plain") and env["INFERENCE_PROVIDER"] == ("verda-serverless", "plain")
    assert container["volume_mounts"][0] == {"type": "shared", "mount_path": "/models", "volume_id": "sfs-models-1"}
    assert body["scaling"]["scaling_triggers"]["queue_load"] == {"threshold": 1}
    assert (body["scaling"]["min_replica_count"], body["scaling"]["max_replica_count"]) == (0, 5)


# --- dry run ----------------------------------------------------------------------------------


def edited_spec(tmp_path: Path, old: str, new: str) -> Path:
    """The shipped spec with ``old`` (which it must hold) replaced by ``new``, written under tmp_path."""
    text = DEFAULT_SPEC_PATH.read_text()
    assert old in text
    spec = tmp_path / "deployment.toml"
    spec.write_text(text.replace(old, new))
    return spec


async def test_dry_run_prints_exact_body_without_network(
    fake: FakeVerda, spec_path: Path, deploy_env, queue_token: str, client_secret: str, capsys
) -> None:
    assert await deploy_main(["--dry-run"], deploy_env) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == build_body(load_spec(spec_path, deploy_env))
    assert "comfyui-worker-queue-manager-token" in err
    assert queue_token not in out + err and client_secret not in out + err
    assert fake.requests == []


@pytest.mark.parametrize("action", ["status", "delete"])
async def test_dry_run_is_refused_for_anything_but_apply(fake: FakeVerda, deploy_env, action: str, capsys) -> None:
    assert await deploy_main([action, "--dry-run", "--yes"], deploy_env) == 2
    assert "--dry-run applies to apply only" in capsys.readouterr().err
    assert fake.requests == []


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("VERDA_COMPUTER", "VERDA_COMPUTE"),
        ("VERDA_MAX_REPLICA", "VERDA_MAX_REPLICAS"),
        ("verda_is_spot", "VERDA_IS_SPOT"),
    ],
)
async def test_a_misspelt_deploy_variable_is_refused_not_replaced_by_the_specs_value(
    fake: FakeVerda, deploy_env, typo: str, meant: str, capsys
) -> None:
    """Before, VERDA_COMPUTER=A100 was ignored: the spec's H100 was created, exit 0, nothing said (and a typo'd
    VERDA_IMAGES read as the OWNER placeholder, with no word of the variable). Now exit 2 naming it."""
    for options in (["--dry-run"], []):
        assert await deploy_main(options, {**deploy_env, typo: "A100"}) == 2
        err = capsys.readouterr().err
        assert f"{typo}: the deploy reads no variable of this name" in err and f"did you mean {meant}?" in err, err
    assert fake.requests == [] and fake.deployments == {}
    env = {key: value for key, value in deploy_env.items() if key != "VERDA_IMAGE"}
    assert await deploy_main(["--dry-run"], {**env, "VERDA_IMAGES": deploy_env["VERDA_IMAGE"]}) == 2
    err = capsys.readouterr().err
    assert "deployment.image" in err and "did you mean VERDA_IMAGE?" in err, err


async def test_invalid_spec_exits_2_before_any_call(fake: FakeVerda, deploy_env, capsys) -> None:
    assert await deploy_main([], {**deploy_env, "VERDA_IMAGE": "ghcr.io/acme/worker:latest"}) == 2
    assert "deployment.image" in capsys.readouterr().err
    assert fake.requests == []


def test_shell_wrapper_runs_the_module(deploy_env) -> None:
    env = {**os.environ, **deploy_env}
    done = subprocess.run(
        [str(REPO / "deploy-serverless.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == NAME
    assert os.access(REPO / "deploy-serverless.sh", os.X_OK)


def test_the_shell_wrapper_reads_a_relative_spec_from_the_callers_folder(deploy_env, spec_path, tmp_path) -> None:
    """Before, the script changed to the repository first: `--spec mine.toml` was looked for there (not found, or
    worse, a file of the same name there was deployed). A folder of the caller's named like one of our packages
    is not imported either."""
    (tmp_path / "mine.toml").write_text(spec_path.read_text().replace(f'name = "{NAME}"', 'name = "mine"', 1))
    (tmp_path / "scaler").mkdir()
    (tmp_path / "scaler" / "__init__.py").write_text("raise SystemExit('a scaler/ of the caller was imported')\n")
    env = {key: value for key, value in os.environ.items() if key != "VERDA_DEPLOYMENT_NAME"} | deploy_env
    done = subprocess.run(
        [str(REPO / "deploy-serverless.sh"), "--spec", "mine.toml", "--dry-run"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "mine"


def test_the_shell_wrapper_runs_in_the_venv_dev_makes_not_the_systems_python(deploy_env, tmp_path: Path) -> None:
    """Before, a fresh clone (no .venv) ran the system's python3: `./deploy-serverless.sh --dry-run`, the first
    command of docs/deploy-verda.md, ended in `ModuleNotFoundError: No module named 'structlog'`. Now the script
    goes through ./dev, which creates or updates .venv first. Here a clone without .venv whose ./dev only says
    what it was asked to run (creating a venv would download)."""
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "deploy-serverless.sh").write_text((REPO / "deploy-serverless.sh").read_text())
    (clone / "dev").write_text('#!/usr/bin/env bash\necho "dev $*"\n')
    for script in ("deploy-serverless.sh", "dev"):
        (clone / script).chmod(0o755)
    done = subprocess.run(
        [str(clone / "deploy-serverless.sh"), "--dry-run"], env={**os.environ, **deploy_env}, cwd=tmp_path,
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "dev python -P -m scaler.deploy --dry-run\n"


PRINT_ENV = """#!/usr/bin/env bash
# The venv's python, as a stub: pip install and the deploy each write the environment they were given.
if [ "$1 $2" = "-m pip" ]; then env > "$(dirname "$0")/pip.env"; else env > "$(dirname "$0")/deploy.env"; fi
"""


def test_pip_installing_the_venv_gets_none_of_the_deploys_secrets(deploy_env, tmp_path: Path) -> None:
    """Before, the first `./deploy-serverless.sh` (or the first after pyproject.toml changed) ran `pip install`,
    which runs build code downloaded from PyPI, with VERDA_CLIENT_SECRET, QUEUE_MANAGER_TOKEN, the spec's other
    secrets and a QUEUE_MANAGER_URL's password in its environment. The deploy itself still gets them all. Here a
    clone with the real ./dev and a stub python (no download)."""
    clone = tmp_path / "clone"
    (clone / ".venv" / "bin").mkdir(parents=True)
    for script in ("deploy-serverless.sh", "dev", "pyproject.toml"):
        (clone / script).write_text((REPO / script).read_text())
    (clone / ".venv" / "bin" / "python").write_text(PRINT_ENV)
    for script in ("deploy-serverless.sh", "dev", ".venv/bin/python"):
        (clone / script).chmod(0o755)
    secrets = {
        **deploy_env,
        "QUEUE_MANAGER_URL": "https://worker:url-password-do-not-log@queue.example.com",
        "RUNPOD_API_KEY": "rpa_key_do_not_log",
        "HF_TOKEN": "hf_token_do_not_log",
        "COMFY_ORG_API_KEY": "comfy_key_do_not_log",
        "REGISTRY_PASSWORD": "registry_password_do_not_log",
        "DB_PASS": "db_pass_do_not_log",
        "MYSQL_PWD": "mysql_pwd_do_not_log",
        "REDIS_AUTH": "redis_auth_do_not_log",
        "SMTP_PW": "smtp_pw_do_not_log",
    }
    kept = {"PIP_INDEX_URL": "https://mirror.example.com/simple", "HTTPS_PROXY": "https://u:proxy-pw@proxy:3128",
            "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    done = subprocess.run(
        [str(clone / "deploy-serverless.sh"), "--dry-run"], env={**os.environ, **secrets, **kept}, cwd=tmp_path,
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    pip_env = (clone / ".venv" / "bin" / "pip.env").read_text()
    deploy_env_seen = (clone / ".venv" / "bin" / "deploy.env").read_text()
    for name in ("VERDA_CLIENT_SECRET", "QUEUE_MANAGER_TOKEN", "QUEUE_MANAGER_URL", "RUNPOD_API_KEY", "HF_TOKEN",
                 "COMFY_ORG_API_KEY", "REGISTRY_PASSWORD", "DB_PASS", "MYSQL_PWD", "REDIS_AUTH", "SMTP_PW"):
        assert f"{name}=" not in pip_env and secrets[name] not in pip_env, name
        assert f"{name}={secrets[name]}\n" in deploy_env_seen, name
    for name, value in {**kept, "VERDA_CLIENT_ID": "test-id", "VERDA_IMAGE": deploy_env["VERDA_IMAGE"]}.items():
        assert f"{name}={value}\n" in pip_env, name


# --- apply ------------------------------------------------------------------------------------


async def test_apply_creates_then_updates_in_place(fake: FakeVerda, deploy_env, queue_token: str, capsys) -> None:
    assert await deploy_main([], deploy_env) == 0
    out = capsys.readouterr().out
    assert f"deployment {NAME}: created" in out and "status: healthy" in out and "replicas: 0" in out
    assert fake.secrets == {"comfyui-worker-queue-manager-token": queue_token}
    assigned = [c["name"] for c in fake.deployments[NAME].body["containers"]]

    image = "ghcr.io/acme/comfyui-worker-serverless:0.2.0"
    assert await deploy_main([], {**deploy_env, "VERDA_IMAGE": image}) == 0
    out = capsys.readouterr().out
    assert f"deployment {NAME}: updated (containers: image {deploy_env['VERDA_IMAGE']} -> {image})" in out
    assert "scaling: unchanged" in out
    assert "secret comfyui-worker-queue-manager-token: exists" in out
    patch = fake.requests_to(f"/container-deployments/{NAME}", "PATCH")[0].json
    assert list(patch) == ["containers"], "only what differs is sent"
    assert [c["name"] for c in patch["containers"]] == assigned
    assert fake.deployments[NAME].body["containers"][0]["image"] == image
    assert [c["name"] for c in fake.deployments[NAME].body["containers"]] == assigned
    assert len(fake.requests_to("/secrets", "POST")) == 1
    assert len(fake.requests_to("/container-deployments", "POST")) == 1


async def test_a_redeploy_that_replaces_running_replicas_says_what_becomes_of_their_jobs(
    fake: FakeVerda, deploy_env, capsys
) -> None:
    """Before, a new image deployed over 2 running replicas printed `updated (containers: image …)` and the two
    replicas as if nothing would happen to them; Verda replaces them, stopping busy ones. Now a line says so and
    what becomes of their jobs; an update that restarts nothing (scaling only) and an empty deployment say nothing."""
    assert await deploy_main([], deploy_env) == 0
    fake.deployments[NAME].body["scaling"].update(min_replica_count=2, max_replica_count=2)  # the scaler's pin
    assert await deploy_main([], {**deploy_env, "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.2.0"}) == 0
    out = capsys.readouterr().out
    assert "replicas: 2" in out
    last = out.rstrip().splitlines()[-1]
    assert "Verda rolls them over" in last and "handed back to the queue" in last, out
    fake.deployments[NAME].body["scaling"]["scale_down_policy"] = {"delay_seconds": 60}
    assert await deploy_main([], {**deploy_env, "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.2.0"}) == 0
    out = capsys.readouterr().out
    assert "scaling: updated" in out and "replicas: 2" in out and "SIGTERM" not in out
    fake.deployments[NAME].body["scaling"].update(min_replica_count=0, max_replica_count=0)
    assert await deploy_main([], deploy_env) == 0
    out = capsys.readouterr().out
    assert "updated (containers" in out and "replicas: 0" in out and "SIGTERM" not in out


async def test_a_second_apply_changes_nothing(fake: FakeVerda, deploy_env, capsys) -> None:
    """Documented as "changes only what differs": against Verda's real answers (image objects, no scaling in
    the GET) a redeploy of the same spec sends no PATCH at all."""
    assert await deploy_main([], deploy_env) == 0
    capsys.readouterr()
    assert await deploy_main([], deploy_env) == 0
    out = capsys.readouterr().out
    assert f"deployment {NAME}: unchanged" in out and "scaling: unchanged" in out
    assert [r for r in fake.requests if r.method == "PATCH"] == []


@pytest.mark.parametrize(("pinned", "kept"), [(3, (3, 3)), (0, (0, 0)), (7, (7, 7))])
async def test_redeploy_keeps_the_count_the_scaler_pinned(
    fake: FakeVerda, deploy_env, capsys, pinned: int, kept: tuple[int, int]
) -> None:
    """The scaler pins min == max; a redeploy that wrote the spec's max 5 would unpin it and let Verda's own
    autoscaler stop busy workers. The count lives in GET …/scaling, not in the deployment's GET."""
    assert await deploy_main([], deploy_env) == 0
    fake.deployments[NAME].body["scaling"].update(min_replica_count=pinned, max_replica_count=pinned)
    fake.deployments[NAME].body["scaling"]["scale_down_policy"] = {"delay_seconds": 60}  # edited in the console
    assert await deploy_main([], deploy_env) == 0
    out = capsys.readouterr().out
    assert "scaling: updated (scale_down_policy)" in out
    scaling = fake.deployments[NAME].body["scaling"]
    assert (scaling["min_replica_count"], scaling["max_replica_count"]) == kept
    assert fake.requests_to(f"/container-deployments/{NAME}/scaling", "PATCH")[0].json == {
        "scale_down_policy": {"delay_seconds": 300}
    }


async def test_redeploy_keeps_an_unpinned_min_under_the_spec_max(fake: FakeVerda, deploy_env, capsys) -> None:
    assert await deploy_main([], deploy_env) == 0
    fake.deployments[NAME].body["scaling"].update(min_replica_count=2, max_replica_count=8)
    assert await deploy_main([], deploy_env) == 0
    scaling = fake.deployments[NAME].body["scaling"]
    assert (scaling["min_replica_count"], scaling["max_replica_count"]) == (2, 5)
    assert fake.requests_to(f"/container-deployments/{NAME}/scaling", "PATCH")[0].json == {"max_replica_count": 5}


async def test_a_create_answered_500_that_did_create_counts_as_done(fake: FakeVerda, deploy_env, capsys) -> None:
    fake.fail_next("/container-deployments", 500, method="POST", after_effect=True)
    fake.fail_next("/secrets", 500, method="POST", after_effect=True)
    assert await deploy_main([], deploy_env) == 0, capsys.readouterr().err
    assert f"deployment {NAME}: created" in capsys.readouterr().out
    assert len(fake.requests_to("/container-deployments", "POST")) == 1, "no second POST into 'already exists'"
    assert len(fake.requests_to("/secrets", "POST")) == 1
    assert NAME in fake.deployments and "comfyui-worker-queue-manager-token" in fake.secrets


@pytest.mark.parametrize("secret_there", [False, True])
async def test_two_deploys_at_once_both_converge_on_the_last_ones_spec(
    fake: FakeVerda, deploy_env, queue_token: str, secret_there: bool, capsys
) -> None:
    """Before, two deploys that both looked before either created (two operators, CI and a laptop) ended one in
    `error: Verda API error 409 … Secret … already exists` (or `Deployment … already exists`), exit 1, its spec
    not applied. Now the one answered 409 reads it once more and goes on as an update: both exit 0, and the
    deployment runs the spec of the one that wrote last."""
    secret = "comfyui-worker-queue-manager-token"
    if secret_there:
        fake.secrets[secret] = queue_token
    fake.hold_creates(together=2)
    images = [f"ghcr.io/acme/comfyui-worker-serverless:0.{minor}.0" for minor in (1, 2)]

    async def one_deploy(image: str) -> int:
        try:
            return await deploy_main([], {**deploy_env, "VERDA_IMAGE": image})
        finally:
            await fake.release_creates()  # the other deploy has no create left to meet

    codes = await asyncio.gather(*(one_deploy(image) for image in images))
    out, err = capsys.readouterr()
    assert codes == [0, 0], err
    assert len(fake.requests_to("/container-deployments", "POST")) == 2, "both created: the race did happen"
    live = fake.deployments[NAME].body["containers"][0]["image"]
    [first] = [image for image in images if image != live]
    assert out.count(f"deployment {NAME}: created\n") == 1
    assert f"deployment {NAME}: created by another deploy since this one looked; updating it to this spec" in out
    assert f"deployment {NAME}: updated (containers: image {first} -> {live})" in out
    assert fake.secrets == {secret: queue_token}
    if not secret_there:
        assert len(fake.requests_to("/secrets", "POST")) == 2
        assert f"secret {secret}: created from $QUEUE_MANAGER_TOKEN" in out
        assert f"secret {secret}: created by another deploy since this one looked (kept;" in out


async def test_a_create_that_really_failed_is_retried(fake: FakeVerda, deploy_env, capsys) -> None:
    fake.fail_next("/container-deployments", 503, method="POST")
    assert await deploy_main([], deploy_env) == 0, capsys.readouterr().err
    assert len(fake.requests_to("/container-deployments", "POST")) == 2
    assert NAME in fake.deployments


async def test_missing_secret_value_stops_before_the_deployment(fake: FakeVerda, deploy_env, capsys) -> None:
    env = {k: v for k, v in deploy_env.items() if k != "QUEUE_MANAGER_TOKEN"}
    assert await deploy_main([], env) == 1
    err = capsys.readouterr().err
    assert "secrets.QUEUE_MANAGER_TOKEN" in err
    assert "worker token, QUEUE_MANAGER_WORKER_TOKEN, give its value here" in err  # where the split queue's goes
    assert fake.deployments == {} and fake.secrets == {}


async def test_bad_credentials_explain_and_hide_the_secret(fake: FakeVerda, deploy_env, capsys) -> None:
    env = {**deploy_env, "VERDA_CLIENT_SECRET": "wrong-secret-value"}
    assert await deploy_main(["status"], env) == 1
    err = capsys.readouterr().err
    assert "401" in err and "VERDA_CLIENT_SECRET" in err and "wrong-secret-value" not in err


async def test_missing_credentials_are_named_and_exit_2_as_any_invalid_setting(
    fake: FakeVerda, deploy_env, capsys
) -> None:
    """Before: exit 1, as if Verda had refused; docs/deploy-verda.md says 2 for an invalid deploy variable."""
    for unset in ("VERDA_CLIENT_ID", "VERDA_CLIENT_SECRET"):
        env = {k: v for k, v in deploy_env.items() if k != unset}
        assert await deploy_main([], env) == 2
        assert "set VERDA_CLIENT_ID and VERDA_CLIENT_SECRET" in capsys.readouterr().err
    assert fake.requests == []


@pytest.mark.parametrize(("variable", "value", "named"), [
    ("VERDA_CLIENT_SECRET", "   ", "set VERDA_CLIENT_ID and VERDA_CLIENT_SECRET"),
    ("VERDA_CLIENT_ID", " ", "set VERDA_CLIENT_ID and VERDA_CLIENT_SECRET"),
    ("VERDA_CLIENT_SECRET", "secr3t!", "VERDA_CLIENT_SECRET: is 7 characters; a credential needs at least 8"),
])
async def test_a_blank_or_short_client_secret_is_refused_naming_it_as_the_scaler_does(
    fake: FakeVerda, deploy_env, capsys, variable, value, named
) -> None:
    """Before: taken and sent (exit 0 against an API that takes it), and a secret under 8 characters is one the
    logs cannot mask; the scaler refuses both, naming the variable."""
    assert await deploy_main(["status"], {**deploy_env, variable: value}) == 2
    assert named in capsys.readouterr().err
    assert fake.requests == []


@pytest.mark.parametrize(("variable", "value"), [
    ("VERDA_CLIENT_SECRET", "secret-\udcff-undecodable"), ("VERDA_CLIENT_ID", "client-\udcff"),
    ("VERDA_CLIENT_SECRET", "secret-with-a-newline\n"),
])
async def test_a_credential_that_cannot_be_sent_as_is_is_refused_naming_it(
    fake: FakeVerda, deploy_env, capsys, variable, value
) -> None:
    """Before: bytes the environment could not decode were a UnicodeEncodeError traceback (the token request), a
    newline pasted with the secret Verda's 401, exit 1."""
    assert await deploy_main(["status"], {**deploy_env, variable: value}) == 2
    assert f"{variable}: must be printable ASCII with no space at either end" in capsys.readouterr().err
    assert fake.requests == []


async def test_status_and_delete(fake: FakeVerda, deploy_env, capsys) -> None:
    assert await deploy_main(["status"], deploy_env) == 1
    assert await deploy_main([], deploy_env) == 0
    fake.set_status(NAME, "quota_reached")
    capsys.readouterr()
    assert await deploy_main(["status"], deploy_env) == 0
    assert "status: quota_reached" in capsys.readouterr().out
    capsys.readouterr()
    assert await deploy_main(["delete"], deploy_env) == 2
    assert "stops its running replicas now" in capsys.readouterr().err, "the operator is told what --yes does"
    assert NAME in fake.deployments
    assert await deploy_main(["delete", "--yes"], deploy_env) == 0
    assert "deleted" in capsys.readouterr().out
    assert fake.deployments == {}, "delete returns once Verda answers 404, not when the DELETE is accepted"
    deletes = fake.requests_to(f"/container-deployments/{NAME}", "DELETE")
    assert len(deletes) == 1, "a deployment being deleted is polled, not deleted again"
    assert "comfyui-worker-queue-manager-token" in fake.secrets


async def test_control_characters_in_verdas_answers_reach_the_terminal_escaped(
    fake: FakeVerda, deploy_env, capsys
) -> None:
    """Before: the status, the replicas' ids and statuses were printed as Verda sent them, ESC sequences and all
    (a recoloured, retitled or cleared terminal, a forged line)."""
    assert await deploy_main([], deploy_env) == 0
    fake.fail_next(f"/container-deployments/{NAME}/status", 200, method="GET", body={"status": "healthy\x1b]0;x\x07"})
    replica = {"id": "r1\x1bc", "status": "running\r\x1b[2Kreplicas: 0", "started_at": "2026-12-05T10:00:00Z"}
    fake.fail_next(f"/container-deployments/{NAME}/replicas", 200, method="GET", body={"list": [replica]})
    capsys.readouterr()
    assert await deploy_main(["status"], deploy_env) == 0
    out = capsys.readouterr().out
    assert "status: healthy\\x1b]0;x\\x07" in out and "\x1b" not in out and "\r" not in out, out
    assert "  r1\\x1bc running\\r\\x1b[2kreplicas: 0 since" in out, out


# --- a queue-manager URL with credentials -----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["https://worker:url-password-do-not-log@queue.example.com/queue",
     "https://queue.example.com/queue?token=url-password-do-not-log"],
)
async def test_a_url_with_a_password_is_deployed_as_a_secret(
    url: str, fake: FakeVerda, deploy_env, spec_without_token: Path, capsys
) -> None:
    env = {**deploy_env, "QUEUE_MANAGER_URL": url}
    spec = ["--spec", str(spec_without_token)]
    assert await deploy_main(["--dry-run", *spec], env) == 0
    out, err = capsys.readouterr()
    assert "url-password-do-not-log" not in out + err
    entries = {e["name"]: e for e in json.loads(out)["containers"][0]["env"]}
    secret_name = f"{NAME}-queue-manager-url"
    assert entries["QUEUE_MANAGER_URL"] == {
        "name": "QUEUE_MANAGER_URL", "value_or_reference_to_secret": secret_name, "type": "secret"
    }
    assert secret_name in err

    assert await deploy_main(spec, env) == 0
    out, err = capsys.readouterr()
    assert "url-password-do-not-log" not in out + err
    assert fake.secrets[secret_name] == url
    stored = fake.deployments[NAME].body["containers"][0]["env"]
    assert "url-password-do-not-log" not in json.dumps(stored)


@pytest.mark.parametrize(
    "url", ["https://u:url-password-do-not-log@[models.example.com/x", "https://[m.example.com/?sig=url-password-do-not-log"]
)
async def test_a_url_urlsplit_cannot_parse_with_credentials_in_it_is_deployed_as_a_secret(
    url: str, deploy_env, tmp_path: Path, capsys
) -> None:
    """An unclosed "[": urlsplit raises, and before no credentials were found in it: the URL went into the
    deployment as a plain env var, its password printed by --dry-run (exit 0)."""
    spec = edited_spec(tmp_path, 'names = ["QUEUE_MANAGER_URL"]', 'names = ["QUEUE_MANAGER_URL", "MODELS_URL"]')
    assert await deploy_main(["--dry-run", "--spec", str(spec)], {**deploy_env, "MODELS_URL": url}) == 0
    out, err = capsys.readouterr()
    assert "url-password-do-not-log" not in out + err
    entries = {e["name"]: e for e in json.loads(out)["containers"][0]["env"]}
    assert entries["MODELS_URL"]["type"] == "secret"


async def test_a_url_with_a_password_is_refused_beside_the_token_it_would_replace(deploy_env, capsys) -> None:
    """Deployed, every worker refused to start (exit 2): the URL's user and password would replace the token."""
    url = "https://worker:url-password-do-not-log@queue.example.com"
    assert await deploy_main(["--dry-run"], {**deploy_env, "QUEUE_MANAGER_URL": url}) == 2
    err = capsys.readouterr().err
    assert "QUEUE_MANAGER_URL: QUEUE_MANAGER_URL carries a user name or password and QUEUE_MANAGER_TOKEN" in err
    assert "url-password-do-not-log" not in err


async def test_a_variable_named_like_a_secret_is_refused_as_a_plain_env_var(deploy_env, tmp_path: Path, capsys) -> None:
    """Before: HF_TOKEN listed in env_from_environment went into the deployment in clear, and --dry-run printed it."""
    spec = edited_spec(tmp_path, 'names = ["QUEUE_MANAGER_URL"]', 'names = ["QUEUE_MANAGER_URL", "HF_TOKEN"]')
    env = {**deploy_env, "HF_TOKEN": "hf-value-do-not-print"}
    assert await deploy_main(["--dry-run", "--spec", str(spec)], env) == 2
    out, err = capsys.readouterr()
    assert "env_from_environment.names: HF_TOKEN is named like a secret" in err and "[secrets]" in err, err
    assert "hf-value-do-not-print" not in out + err


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('HF_TOKEN = "hf-value-do-not-print"', "env.HF_TOKEN: is named like a secret"),
        ('PROXY_URL = "https://proxy:hf-value-do-not-print@proxy.example.com"', "env.PROXY_URL: a URL with a user"),
        ('MODELS_URL = "https://models.example.com/?sig=hf-value-do-not-print"', "env.MODELS_URL: a URL with a user"),
        ('PROXY_URL = "https://proxy:hf-value-do-not-print@[proxy.example.com"', "env.PROXY_URL: a URL with a user"),
        ('MODELS_URL = "https://[models.example.com/?sig=hf-value-do-not-print"', "env.MODELS_URL: a URL with a user"),
    ],
)
async def test_a_secret_written_in_the_plain_env_table_is_refused(
    fake: FakeVerda, deploy_env, tmp_path: Path, line: str, problem: str, capsys
) -> None:
    """Before: a secret the operator wrote into [env] (a token, a URL with its password) was printed by --dry-run
    and --console and sent to Verda as a plain env var, exit 0; the same value from env_from_environment was
    refused or made a secret. Now exit 2 naming the entry, before any call, the value never printed."""
    spec = edited_spec(tmp_path, 'OUTPUTS_PATH = "/outputs"', f'OUTPUTS_PATH = "/outputs"\n{line}')
    for options in (["--dry-run"], ["--console"], []):
        assert await deploy_main([*options, "--spec", str(spec)], deploy_env) == 2
        out, err = capsys.readouterr()
        assert problem in err and "in clear" in err, err
        assert "hf-value-do-not-print" not in out + err
    assert fake.requests == []


@pytest.mark.parametrize("name", ["SECOND_PASS_STEPS", "HIRES_PASS_DENOISE", "CACHE_KEY_PREFIX", "AUTH_ENABLED",
                                  "SESSION_TIMEOUT_S", "PW_MODE", "SIG_FIGS", "SSH_KEY_PATH"])
async def test_a_setting_with_a_credential_word_inside_its_name_is_deployed(
    deploy_env, tmp_path: Path, name: str, capsys
) -> None:
    """Before: a workflow setting such as SECOND_PASS_STEPS (PASS, a word of its name) was refused as "named like
    a secret", in [env] and in env_from_environment alike, exit 2: no way to deploy it but as a Verda secret. Such
    words name a credential only at the end of the name (DB_PASS, SSH_KEY), as the next test pins."""
    spec = edited_spec(tmp_path, 'OUTPUTS_PATH = "/outputs"', f'OUTPUTS_PATH = "/outputs"\n{name} = "2"')
    assert await deploy_main(["--dry-run", "--spec", str(spec)], deploy_env) == 0, capsys.readouterr().err
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)["containers"][0]["env"]}
    assert entries[name] == {"name": name, "value_or_reference_to_secret": "2", "type": "plain"}
    spec = edited_spec(tmp_path, 'names = ["QUEUE_MANAGER_URL"]', f'names = ["QUEUE_MANAGER_URL", "{name}"]')
    assert await deploy_main(["--dry-run", "--spec", str(spec)], {**deploy_env, name: "2"}) == 0, capsys.readouterr()


@pytest.mark.parametrize("name", ["PASSWORD", "DB_PASS", "MYSQL_PWD", "PASSWD", "DB_PW", "API_KEY", "SSH_KEY",
                                  "AWS_SECRET_ACCESS_KEY", "SECRET_KEY_BASE", "HF_TOKEN", "TOKEN_FOR_HUB",
                                  "CLIENT_SECRET", "REDIS_AUTH", "GPG_PASSPHRASE", "GCP_CREDENTIALS", "CIVITAI_APIKEY",
                                  "SESSION_ID", "API_KEY_2", "DB_PASS_1", "SSH_KEY_ID"])
def test_a_variable_named_like_a_credential_is_still_refused_in_clear(
    spec_path: Path, deploy_env, tmp_path: Path, name: str
) -> None:
    spec = edited_spec(tmp_path, 'OUTPUTS_PATH = "/outputs"', f'OUTPUTS_PATH = "/outputs"\n{name} = "value-12345"')
    assert f"env.{name}: is named like a secret" in "\n".join(problems_for(spec, deploy_env))


WORKER_TOKEN = "workers-token-do-not-print"
TOKEN_SECRET = 'QUEUE_MANAGER_TOKEN = "comfyui-worker-queue-manager-token"'


@pytest.mark.parametrize(
    ("old", "new", "entry"),
    [
        (TOKEN_SECRET, TOKEN_SECRET.replace("QUEUE_MANAGER_TOKEN", "QUEUE_MANAGER_WORKER_TOKEN"), "secrets"),
        (TOKEN_SECRET, f'{TOKEN_SECRET}\nQUEUE_MANAGER_WORKER_TOKEN = "workers-token"', "secrets"),
        ('OUTPUTS_PATH = "/outputs"', f'OUTPUTS_PATH = "/outputs"\nQUEUE_MANAGER_WORKER_TOKEN = "{WORKER_TOKEN}"',
         "env"),
        ('names = ["QUEUE_MANAGER_URL"]', 'names = ["QUEUE_MANAGER_URL", "QUEUE_MANAGER_WORKER_TOKEN"]',
         "env_from_environment"),
    ],
    ids=["secret-in-place-of-the-token", "secret-beside-the-token", "plain-env", "env-from-environment"],
)
async def test_the_queue_managers_worker_token_variable_is_refused_before_any_call(
    fake: FakeVerda, deploy_env, tmp_path: Path, capsys, old: str, new: str, entry: str
) -> None:
    """Before: the worker token listed under the queue manager's own name, QUEUE_MANAGER_WORKER_TOKEN, was
    deployed (exit 0): the worker reads no such variable, so every replica polled with no token, was refused (401)
    and exited 2 saying "QUEUE_MANAGER_TOKEN is unset", restarted and billed. Now exit 2 naming the entry and
    where the token goes, before any call, the value never printed."""
    spec = edited_spec(tmp_path, old, new)
    env = {**deploy_env, "QUEUE_MANAGER_WORKER_TOKEN": WORKER_TOKEN}
    for options in (["--dry-run"], ["--console"], []):
        assert await deploy_main([*options, "--spec", str(spec)], env) == 2
        out, err = capsys.readouterr()
        assert f"{entry}.QUEUE_MANAGER_WORKER_TOKEN: the worker reads its token from QUEUE_MANAGER_TOKEN only" in err
        assert "give the queue manager's worker token as QUEUE_MANAGER_TOKEN, under [secrets]" in err, err
        assert "named like a secret" not in err and "set QUEUE_MANAGER_WORKER_TOKEN" not in err, err
        assert WORKER_TOKEN not in out + err
    assert fake.requests == []


async def test_a_url_without_credentials_stays_plain(spec_path: Path, deploy_env) -> None:
    env = build_body(load_spec(spec_path, deploy_env))["containers"][0]["env"]
    plain = {"name": "QUEUE_MANAGER_URL", "value_or_reference_to_secret": "https://queue.example.com", "type": "plain"}
    assert plain in env


async def test_the_deploy_logs_json_lines_to_stderr_apart_from_its_output(fake: FakeVerda, deploy_env) -> None:
    """Its retries were printed with structlog's defaults: console text on stdout, among the lines it prints."""
    env = {**os.environ, **deploy_env, "PYTHONPATH": str(REPO)}
    env.pop("LOG_FORMAT", None)
    assert await deploy_main([], deploy_env) == 0
    fake.fail_next(f"/container-deployments/{NAME}", 503, method="GET")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scaler.deploy", "status", env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert "verda_request_retry" not in out.decode()
    assert out.decode().startswith("status: ")
    logged = [json.loads(line) for line in err.decode().splitlines()]
    assert "verda_request_retry" in [entry["event"] for entry in logged]


async def test_replica_bounds_of_true_are_refused_naming_the_field_not_sent_back(
    fake: FakeVerda, deploy_env, capsys
) -> None:
    """Before: bool is an int, so {min: true, max: true} read as a pinned count and the redeploy's PATCH sent
    min_replica_count true and max_replica_count true back to Verda."""
    assert await deploy_main([], deploy_env) == 0
    fake.deployments[NAME].body["scaling"]["scale_down_policy"] = {"delay_seconds": 60}
    fake.fail_next(f"/container-deployments/{NAME}/scaling", 200, method="GET", body={
        **fake.deployments[NAME].body["scaling"], "min_replica_count": True, "max_replica_count": True
    })
    capsys.readouterr()
    assert await deploy_main([], deploy_env) == 1
    err = capsys.readouterr().err
    assert "unexpected_answer" in err and "min_replica_count=True is not a replica count" in err, err
    assert fake.requests_to(f"/container-deployments/{NAME}/scaling", "PATCH") == []


# --- a broken or hostile Verda ----------------------------------------------------------------


def writes_to_verda(fake: FakeVerda) -> list:
    return [r for r in fake.requests if r.method in ("POST", "PATCH", "DELETE") and r.path != "/oauth2/token"]


@pytest.mark.parametrize(
    ("path", "answer", "named"),
    [
        ("/secrets", {"secrets": []}, "GET /secrets"),
        ("/secrets", ["comfyui-worker-queue-manager-token"], "GET /secrets"),
        (f"/container-deployments/{NAME}", [NAME], f"GET /container-deployments/{NAME}"),
        (f"/container-deployments/{NAME}", {"name": NAME, "containers": 1}, "containers=1"),
        (f"/container-deployments/{NAME}/scaling", [0, 5], f"GET /container-deployments/{NAME}/scaling"),
    ],
)
async def test_an_answer_of_the_wrong_shape_exits_1_naming_the_call_not_a_traceback(
    fake: FakeVerda, deploy_env, capsys, path: str, answer: object, named: str
) -> None:
    """Before, a list where Verda answers an object (or the reverse) raised TypeError or AttributeError out of
    ./deploy-serverless.sh: a traceback that named neither Verda nor the call."""
    assert await deploy_main([], deploy_env) == 0
    fake.fail_next(path, 200, method="GET", body=answer)
    capsys.readouterr()
    writes = len(writes_to_verda(fake))
    assert await deploy_main([], deploy_env) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Verda API error 200 unexpected_answer") and named in err, err
    assert writes_to_verda(fake)[writes:] == [], "nothing is written on an answer not understood"


async def test_an_answer_past_the_read_limit_exits_1_naming_verda(fake: FakeVerda, deploy_env, capsys) -> None:
    """Before, AnswerTooLarge went uncaught: a traceback."""
    fake.fail_next("/secrets", 200, method="GET", body=[{"name": "x"}] * 400_000)  # ~5.6 MB, past the 4 MiB read
    assert await deploy_main([], deploy_env) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Verda answered GET /v1/secrets with more than"), err
    assert fake.deployments == {}


@pytest.mark.parametrize(
    ("path", "variable", "value"),
    [
        ("/secrets", "QUEUE_MANAGER_TOKEN", "queue-token-value-do-not-log"),
        ("/oauth2/token", "VERDA_CLIENT_SECRET", "test-secret-do-not-log"),
        ("/secrets", "QUEUE_MANAGER_URL", "https://queue.example.com/?token=url-password-do-not-log"),
    ],
)
async def test_a_secret_quoted_in_verdas_error_is_masked_in_the_error_printed(
    fake: FakeVerda, deploy_env, capsys, path: str, variable: str, value: str
) -> None:
    """Verda's 4xx may echo what was sent. Before, `error: …` was printed as Verda wrote it: the log scrubber masks
    log lines, and the secrets were registered with it only by main(), not the printed error."""
    fake.fail_next(path, 400, method="POST", body={"code": "invalid_request", "message": f"invalid value {value}"})
    assert await deploy_main([], {**deploy_env, variable: value}) == 1
    out, err = capsys.readouterr()
    assert "invalid value " in err, err
    assert "do-not-log" not in out + err


@pytest.mark.parametrize(
    ("variable", "value", "spec_lines"),
    [
        ("HF_TOKEN", "hf-value-do-not-log", ["[secrets]", 'HF_TOKEN = "comfyui-worker-hf-token"']),
        ("CIVITAI_API_KEY", "civitai-key-do-not-log", ["[secrets]", 'CIVITAI_API_KEY = "comfyui-worker-civitai"']),
    ],
)
async def test_the_value_of_any_secret_the_deploy_creates_is_masked_in_the_error_printed(
    fake: FakeVerda, deploy_env, tmp_path: Path, capsys, variable: str, value: str, spec_lines: list[str]
) -> None:
    """Before, only QUEUE_MANAGER_TOKEN (and credentials in URLs) were masked: a Verda error quoting the value of
    another [secrets] entry, which the deploy creates a Verda secret from, was printed as Verda wrote it."""
    section, line = spec_lines
    text = (REPO / "verda" / "deployment.toml").read_text().replace(section, f"{section}\n{line}", 1)
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    fake.secrets["comfyui-worker-queue-manager-token"] = "created-before"  # only the new secret is created
    fake.fail_next("/secrets", 400, method="POST", body={"code": "invalid_request", "message": f"invalid {value}"})
    assert await deploy_main(["--spec", str(spec)], {**deploy_env, variable: value}) == 1
    out, err = capsys.readouterr()
    assert "error: Verda API error 400 invalid_request on POST /v1/secrets: invalid " in err, err
    assert "do-not-log" not in out + err


async def test_two_secrets_entries_naming_one_secret_with_different_values_are_refused(
    fake: FakeVerda, deploy_env, tmp_path: Path, capsys
) -> None:
    """Before: the Verda secret of QUEUE_MANAGER_TOKEN was created from $HF_TOKEN (the entry listed first), and
    the second create reported "created by another deploy": exit 0, every replica polling with the Hugging Face
    token (401). Two entries of one value may share a secret."""
    spec = edited_spec(tmp_path, "[secrets]\n", '[secrets]\nHF_TOKEN = "comfyui-worker-queue-manager-token"\n')
    assert await deploy_main(["--spec", str(spec)], {**deploy_env, "HF_TOKEN": "hf-value-do-not-log"}) == 2
    out, err = capsys.readouterr()
    assert ("secrets: HF_TOKEN and QUEUE_MANAGER_TOKEN name the one secret 'comfyui-worker-queue-manager-token'"
            in err), err
    assert "do-not-log" not in out + err and fake.requests == []
    assert await deploy_main(["--spec", str(spec), "--dry-run"], {**deploy_env, "HF_TOKEN": QUEUE_TOKEN}) == 0


@pytest.mark.parametrize("options", [[], ["--dry-run"]], ids=["apply", "dry-run"])
async def test_a_secret_the_deploy_would_create_too_short_to_mask_is_refused_naming_it(
    fake: FakeVerda, deploy_env, tmp_path: Path, capsys, options: list[str]
) -> None:
    """Before: HF_TOKEN=hf12345 (7 characters, under what the scrubber masks) was sent to create the Verda secret,
    and a Verda error quoting it printed it in clear; the scaler refuses such a credential, naming it."""
    spec = edited_spec(tmp_path, "[secrets]\n", '[secrets]\nHF_TOKEN = "comfyui-worker-hf-token"\n')
    assert await deploy_main(["--spec", str(spec), *options], {**deploy_env, "HF_TOKEN": "hf12345"}) == 2
    out, err = capsys.readouterr()
    assert "secrets.HF_TOKEN: $HF_TOKEN is 7 characters; a credential needs at least 8" in err, err
    assert "hf12345" not in out + err and fake.requests == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_an_interrupted_deploy_says_so_and_exits_128_plus_the_signal(
    dripping_peer, deploy_env, signum: int, code: int
) -> None:
    """Before, Ctrl-C printed a 60-line KeyboardInterrupt traceback and SIGTERM ended it without a word."""
    env = {**os.environ, **deploy_env, "VERDA_API_URL": dripping_peer.url, "PYTHONPATH": str(REPO)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scaler.deploy", env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            while dripping_peer.requests == 0:  # it is waiting on Verda's answer to its first request
                await asyncio.sleep(0.05)
            process.send_signal(signum)
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == code, err.decode()
    assert out.decode() == "", "nothing was done, nothing is printed as done"
    last = err.decode().splitlines()[-1]
    assert last.startswith(f"interrupted ({signal.Signals(signum).name}): stopped before the end"), err.decode()
    assert "Traceback" not in err.decode()


async def test_delete_run_again_while_the_first_deletion_is_under_way_waits_for_it(
    fake: FakeVerda, deploy_env, capsys
) -> None:
    """The first run was interrupted (or gave up at its deadline) after Verda accepted its DELETE. Before, the
    second run's DELETE met Verda's 409 'is being deleted' and exited 1; now it waits for that deletion."""
    assert await deploy_main([], deploy_env) == 0
    fake.deployments[NAME].reads_until_gone = 4  # what the first run's DELETE started
    capsys.readouterr()
    assert await deploy_main(["delete", "--yes"], deploy_env) == 0, capsys.readouterr().err
    assert f"deployment {NAME}: deleted" in capsys.readouterr().out
    assert fake.deployments == {}


@pytest.mark.parametrize(
    ("override", "field", "problem"),
    [
        ({"VERDA_DEPLOYMENT_NAME": "comfy\n"}, "deployment.name", "U+000A"),
        ({"VERDA_IMAGE": "ghcr.io/acme/worker:0.1.0\n"}, "deployment.image", "U+000A"),
        ({"VERDA_COMPUTE": "H100\r"}, "compute.name", "U+000D"),
        ({"VERDA_REGISTRY_CREDENTIALS": "ghcr\x1b[2Jcred"}, "deployment.registry_credentials", "U+001B"),
        ({"VERDA_MODELS_VOLUME_ID": "sfs\x00models"}, "volume_mounts.0.volume_id", "U+0000"),
        ({"VERDA_OUTPUTS_VOLUME_ID": "x" * 40_000}, "volume_mounts.1.volume_id", "40000 characters"),
        ({"QUEUE_MANAGER_URL": "https://queue.example.com\nX-Injected: 1"}, "env_from_environment.QUEUE_MANAGER_URL",
         "U+000A"),
        ({"QUEUE_MANAGER_URL": "https://queue.example.com/\udcff"}, "env_from_environment.QUEUE_MANAGER_URL",
         "not valid UTF-8"),
        ({"QUEUE_MANAGER_TOKEN": "queue-token-value-do-not-log\n"}, "secrets.QUEUE_MANAGER_TOKEN", "U+000A"),
        ({"QUEUE_MANAGER_URL": "https://w:pass-do-not-log\t@queue.example.com"}, "secrets.QUEUE_MANAGER_URL", "U+0009"),
    ],
)
async def test_a_value_with_control_characters_or_past_the_size_is_refused_before_anything_is_sent(
    fake: FakeVerda, deploy_env, capsys, override: dict[str, str], field: str, problem: str
) -> None:
    """Before, each was accepted and sent as is (`$` in the name and image rules also matches before a trailing
    newline): a URL with a header in it, a token with a newline every worker would send, a 40 KB volume id, and
    bytes the environment could not decode, which crashed the JSON encoding with a traceback after the secrets
    were created."""
    assert await deploy_main([], {**deploy_env, **override}) == 2
    out, err = capsys.readouterr()
    assert f"  {field}: " in err and problem in err, err
    assert "do-not-log" not in out + err, "the value itself is not quoted"
    assert fake.requests == []


async def test_unicode_values_are_sent_as_they_are(fake: FakeVerda, deploy_env) -> None:
    assert await deploy_main([], {**deploy_env, "QUEUE_MANAGER_URL": "https://file-d'attente.exemple.fr/é"}) == 0
    env = {e["name"]: e for e in fake.deployments[NAME].body["containers"][0]["env"]}
    assert env["QUEUE_MANAGER_URL"]["value_or_reference_to_secret"] == "https://file-d'attente.exemple.fr/é"


SCALING = f"/container-deployments/{NAME}/scaling"


@pytest.mark.parametrize(
    ("method", "path", "existing"),
    [
        ("GET", "/secrets", False),
        ("POST", "/secrets", False),
        ("GET", f"/container-deployments/{NAME}", False),
        ("POST", "/container-deployments", False),
        ("PATCH", f"/container-deployments/{NAME}", True),
        ("GET", SCALING, True),
        ("PATCH", SCALING, True),
        ("GET", f"/container-deployments/{NAME}/status", True),
        ("GET", f"/container-deployments/{NAME}/replicas", False),
    ],
)
async def test_a_step_verda_keeps_failing_exits_1_naming_the_call_and_a_rerun_converges(
    fake: FakeVerda, deploy_env, capsys, monkeypatch, method: str, path: str, existing: bool
) -> None:
    """Before, the error said 'Verda API error 503 service_unavailable: injected 503': neither the call that
    failed nor what to do."""
    monkeypatch.setattr(verda_deploy, "VerdaClient", functools.partial(VerdaClient, sleep=RecordingSleep()))
    if existing:  # a deployment edited in the console: the deploy has a PATCH of each kind to send
        assert await deploy_main([], deploy_env) == 0
        fake.deployments[NAME].body["containers"][0]["image"] = "ghcr.io/acme/comfyui-worker-serverless:0.0.9"
        fake.deployments[NAME].body["scaling"]["scale_down_policy"] = {"delay_seconds": 60}
    fake.fail_next(path, 503, method=method, times=5)
    capsys.readouterr()
    assert await deploy_main([], deploy_env) == 1
    err = capsys.readouterr().err
    assert f"error: Verda API error 503 service_unavailable on {method} /v1{path}: " in err, err
    assert "run the same command again later" in err
    assert await deploy_main([], deploy_env) == 0, capsys.readouterr().err
    deployment = fake.deployments[NAME].body
    assert deployment["containers"][0]["image"] == deploy_env["VERDA_IMAGE"]
    assert deployment["scaling"]["scale_down_policy"] == {"delay_seconds": 300}
    assert fake.secrets == {"comfyui-worker-queue-manager-token": deploy_env["QUEUE_MANAGER_TOKEN"]}


async def test_a_deployment_edited_in_the_console_is_put_back_saying_what_was_changed(
    fake: FakeVerda, deploy_env, capsys
) -> None:
    """Before, every container edit read 'updated (containers)': an image someone put in by hand was replaced
    without a word about it. Env values are never printed (one typed in the console may be a secret)."""
    assert await deploy_main([], deploy_env) == 0
    container = fake.deployments[NAME].body["containers"][0]
    container["image"] = "ghcr.io/acme/comfyui-worker-serverless:0.0.9-hotfix"
    container["env"] = [e for e in container["env"] if e["name"] != "SERVERLESS_MODE"] + [
        {"name": "HF_TOKEN", "value_or_reference_to_secret": "console-value-do-not-log", "type": "plain"}
    ]
    next(e for e in container["env"] if e["name"] == "HEALTH_PORT")["value_or_reference_to_secret"] = "8001"
    capsys.readouterr()
    assert await deploy_main([], deploy_env) == 0
    out = capsys.readouterr().out
    assert (
        f"deployment {NAME}: updated (containers: image ghcr.io/acme/comfyui-worker-serverless:0.0.9-hotfix ->"
        f" {deploy_env['VERDA_IMAGE']}, env set SERVERLESS_MODE, env removed HF_TOKEN, env changed HEALTH_PORT)"
    ) in out, out
    assert "do-not-log" not in out


@pytest.mark.parametrize(
    ("variable", "url", "provider"),
    [
        ("VERDA_API_URL", "http://api.verda.com/v1", "verda"),
        ("VERDA_API_URL", "api.verda.com/v1", "verda"),
        ("RUNPOD_API_URL", "http://rest.runpod.io/v1", "runpod"),
    ],
)
async def test_an_api_url_that_would_send_the_credentials_in_clear_is_refused(
    deploy_env, capsys, variable: str, url: str, provider: str
) -> None:
    """Before, http://api.verda.com sent the client secret (and every secret's value) unencrypted. An invalid deploy
    variable exits 2, as the docs say (it was 1, as if the API had refused)."""
    env = {**deploy_env, variable: url, "RUNPOD_API_KEY": "rpa_key_do_not_log", "RUNPOD_VOLUME_ID": "vol",
           "RUNPOD_DATA_CENTER_IDS": "EU-RO-1"}
    assert await deploy_main(["--provider", provider, "status"], env) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {variable}: must be an https:// URL (http:// only to this machine: localhost, a loopback address, "
        "0.0.0.0 or ::)"
    ), err


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://api verda.com/v1", "its host name has characters no host name has"),
        ("https://api.verda.com:99999/v1", "not a URL (Port out of range"),
        ("https://api.verda.com:v1", "not a URL (Port could not be cast"),
        ("https://[::1/v1", "not a URL (Invalid IPv6 URL)"),
    ],
)
async def test_an_api_url_no_request_can_go_to_is_refused_before_anything_is_tried(
    fake: FakeVerda, deploy_env, capsys, monkeypatch, url: str, problem: str
) -> None:
    """Before: five tries over ten seconds (a DNS lookup of "api verda.com"), then exit 1 with "cannot reach the
    Verda API ...; run the same command again later", or "must be an https:// URL" for one that was https."""
    tried: list[object] = []

    async def refuse(self: object, request: httpx.Request) -> httpx.Response:
        tried.append(request)
        raise httpx.ConnectError("no request should be tried", request=request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", refuse)
    assert await deploy_main([], {**deploy_env, "VERDA_API_URL": url}) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: VERDA_API_URL: {problem}"), err
    assert tried == [] and fake.requests == []


async def test_the_user_name_of_the_queue_url_does_not_garble_what_is_printed(
    fake: FakeVerda, deploy_env, spec_without_token: Path, capsys
) -> None:
    """Its password is masked; its user name ("worker") is no secret, and masked it turned every "worker" in an
    error into *** (the deployment comfyui-***-serverless)."""
    url = "https://worker:url-password-do-not-log@queue.example.com"
    fake.fail_next(f"/container-deployments/{NAME}", 400, method="GET", body={
        "code": "invalid_request", "message": f"Deployment {NAME} is unreadable; url-password-do-not-log"
    })
    assert await deploy_main(["--spec", str(spec_without_token)], {**deploy_env, "QUEUE_MANAGER_URL": url}) == 1
    err = capsys.readouterr().err
    assert f"Deployment {NAME} is unreadable; ***" in err, err


async def test_a_connection_verda_keeps_dropping_is_named_with_its_call(deploy_env, capsys, monkeypatch) -> None:
    """Before: 'error: cannot reach the Verda API: RemoteProtocolError: Server disconnected without sending a
    response.': not which call, so not whether anything was done."""
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    monkeypatch.setattr(verda_deploy, "VerdaClient", functools.partial(VerdaClient, sleep=RecordingSleep()))
    try:
        assert await deploy_main([], {**deploy_env, "VERDA_API_URL": url}) == 1
    finally:
        server.close()
        await server.wait_closed()
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Verda API (POST /v1/oauth2/token): RemoteProtocolError: "), err
    assert "run the same command again later" in err


async def test_odd_container_fields_read_as_differing_and_are_put_back(fake: FakeVerda, deploy_env, capsys) -> None:
    """Before, a container whose env or volume_mounts Verda answered as a number raised TypeError: a traceback."""
    assert await deploy_main([], deploy_env) == 0
    assigned = fake.deployments[NAME].body["containers"][0]["name"]
    odd = {"name": NAME, "containers": [{"name": assigned, "image": deploy_env["VERDA_IMAGE"], "env": 5,
                                         "volume_mounts": 5}]}
    fake.fail_next(f"/container-deployments/{NAME}", 200, method="GET", body=odd)
    capsys.readouterr()
    assert await deploy_main([], deploy_env) == 0, capsys.readouterr().err
    assert "containers: env set HEALTH_PORT " in capsys.readouterr().out
    [patch] = fake.requests_to(f"/container-deployments/{NAME}", "PATCH")
    assert patch.json["containers"][0]["name"] == assigned


async def test_a_patch_answered_with_no_object_still_counts_as_done(fake: FakeVerda, deploy_env, capsys) -> None:
    """Before, an answer of "ok" (truthy, no object) replaced the deployment read: AttributeError, a traceback."""
    assert await deploy_main([], deploy_env) == 0
    image = "ghcr.io/acme/comfyui-worker-serverless:0.2.0"
    fake.fail_next(f"/container-deployments/{NAME}", 200, method="PATCH", body="ok", after_effect=True)
    capsys.readouterr()
    assert await deploy_main([], {**deploy_env, "VERDA_IMAGE": image}) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"deployment {NAME}: updated (containers: image" in out and "endpoint: https://" in out
    assert fake.deployments[NAME].body["containers"][0]["image"] == image


async def test_a_value_the_worker_would_refuse_is_refused_before_any_call(
    fake: FakeVerda, deploy_env, tmp_path: Path, capsys
) -> None:
    """Before: deployed as given, every replica's worker exited 2 at start, was restarted, and billed meanwhile."""
    refused = 'SERVERLESS_MAX_IDLE_POLLS = "-1"\nJOB_TIMEOUT_S = "soon"'
    spec = edited_spec(tmp_path, 'SERVERLESS_MAX_IDLE_POLLS = "0"', refused)
    env = {**deploy_env, "QUEUE_MANAGER_URL": "queue.example.com"}
    assert await deploy_main(["--spec", str(spec)], env) == 2
    err = capsys.readouterr().err
    for variable in ("QUEUE_MANAGER_URL", "SERVERLESS_MAX_IDLE_POLLS", "JOB_TIMEOUT_S"):
        assert f"{variable}: " in err and "every replica's worker would refuse this at start" in err, err
    assert "Traceback" not in err
    assert fake.requests == []


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
@pytest.mark.parametrize(
    ("typo", "setting"),
    [("SERVERLESS_MOD", "SERVERLESS_MODE"), ("SERVERLESS_MAX_IDLE_POLL", "SERVERLESS_MAX_IDLE_POLLS"),
     ("COMFYUI_STOP_TIMEOUT", "COMFYUI_STOP_TIMEOUT_S")],  # the last one the supervisor's
)
async def test_a_misspelt_setting_in_env_is_refused_before_any_call(
    fake: FakeVerda, deploy_env, tmp_path: Path, capsys, dry_run: list[str], typo: str, setting: str
) -> None:
    """Before: deployed as given; every replica ignored the variable (SERVERLESS_MOD = "true": replicas that never
    exit, billed), and only a warning in the container's log said so."""
    spec = edited_spec(tmp_path, 'HEALTH_PORT = "8000"\n', f'HEALTH_PORT = "8000"\n{typo} = "3"\n')
    assert await deploy_main([*dry_run, "--spec", str(spec)], deploy_env) == 2
    out, err = capsys.readouterr()
    assert f"env.{typo}: no setting has this name (every replica would ignore it): did you mean {setting}?" in err
    assert out == "" and fake.requests == []


async def test_a_misspelt_setting_among_the_secrets_or_the_copied_variables_is_refused(
    deploy_env, tmp_path: Path, capsys
) -> None:
    spec = edited_spec(tmp_path, 'names = ["QUEUE_MANAGER_URL"]', 'names = ["QUEUE_MANAGER_URL", "JOB_TIMEOUT"]')
    spec.write_text(spec.read_text().replace("[secrets]\n", '[secrets]\nWARMUP_WORKFLOWS = "warm-up"\n'))
    env = {**deploy_env, "JOB_TIMEOUT": "600"}
    assert await deploy_main(["--dry-run", "--spec", str(spec)], env) == 2
    err = capsys.readouterr().err
    assert "env_from_environment.JOB_TIMEOUT: no setting has this name" in err and "did you mean JOB_TIMEOUT_S?" in err
    assert "secrets.WARMUP_WORKFLOWS: no setting has this name" in err and "did you mean WARMUP_WORKFLOW?" in err


async def test_a_variable_for_someone_else_is_no_typo(deploy_env, tmp_path: Path, capsys) -> None:
    """Variables for ComfyUI, its custom nodes or the CUDA runtime are passed through, not taken for typos."""
    extra = 'PYTORCH_CUDA_ALLOC_CONF = "expandable_segments:True"\nHF_HUB_OFFLINE = "1"\nTZ = "UTC"\n'
    spec = edited_spec(tmp_path, 'HEALTH_PORT = "8000"\n', f'HEALTH_PORT = "8000"\n{extra}')
    assert await deploy_main(["--dry-run", "--spec", str(spec)], deploy_env) == 0, capsys.readouterr().err
    capsys.readouterr()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('COMFYUI_STOP_TIMEOUT_S = "-1"', "COMFYUI_STOP_TIMEOUT_S: Input should be greater than or equal to 0"),
        ('COMFYUI_STOP_TIMEOUT_S = "nan"', "COMFYUI_STOP_TIMEOUT_S: Input should be a finite number"),
        ('COMFYUI_URL = "http://gpu-1:8188"', "COMFYUI_URL: the supervisor runs ComfyUI on this machine"),
        ('SCRATCH_DIR = ""', "SCRATCH_DIR: is empty"),
        ('COMFYUI_EXTRA_ARGS = "--preview-method \'auto"', "COMFYUI_EXTRA_ARGS: No closing quotation"),
        ('COMFYUI_COMMAND = " "', "COMFYUI_COMMAND: must name the program that starts ComfyUI"),
    ],
)
async def test_a_value_the_supervisor_would_refuse_is_refused_before_any_call(
    fake: FakeVerda, deploy_env, tmp_path: Path, capsys, value: str, problem: str
) -> None:
    """Before: deployed as given, every replica's supervisor exited 2 at start, was restarted, and billed."""
    spec = edited_spec(tmp_path, 'HEALTH_PORT = "8000"\n', f'HEALTH_PORT = "8000"\n{value}\n')
    assert await deploy_main(["--spec", str(spec)], deploy_env) == 2
    err = capsys.readouterr().err
    assert f"{problem}" in err and "(every replica's supervisor would refuse this at start and exit)" in err, err
    assert fake.requests == []


async def test_the_program_comfyui_starts_with_is_looked_up_in_the_container_not_here(
    deploy_env, tmp_path: Path, capsys
) -> None:
    """The image has the program; the deploying machine need not: the supervisor looks it up at start."""
    command = 'COMFYUI_COMMAND = "/opt/venv-only-in-the-image/bin/python /opt/ComfyUI/main.py"'
    spec = edited_spec(tmp_path, 'HEALTH_PORT = "8000"\n', f'HEALTH_PORT = "8000"\n{command}\n')
    assert await deploy_main(["--dry-run", "--spec", str(spec)], deploy_env) == 0, capsys.readouterr().err
    capsys.readouterr()


async def test_the_settings_of_the_deploying_machine_are_not_what_is_judged(deploy_env, monkeypatch, capsys) -> None:
    """The container's environment is judged alone: not the deploying shell's variables or .env file."""
    monkeypatch.setenv("SERVERLESS_MAX_IDLE_POLLS", "-1")
    assert await deploy_main(["--dry-run"], deploy_env) == 0
    capsys.readouterr()


async def test_a_secret_whose_value_is_not_known_here_is_not_judged(deploy_env, tmp_path: Path, capsys) -> None:
    """A URL kept in an existing Verda secret (its value not in the deploying shell) cannot be checked: not refused."""
    spec = edited_spec(tmp_path, 'names = ["QUEUE_MANAGER_URL"]\n', "names = []\n")
    spec.write_text(spec.read_text().replace("[secrets]\n", '[secrets]\nQUEUE_MANAGER_URL = "existing-queue-url"\n'))
    env = {name: value for name, value in deploy_env.items() if name != "QUEUE_MANAGER_URL"}
    assert await deploy_main(["--dry-run", "--spec", str(spec)], env) == 0, capsys.readouterr().err


@pytest.mark.parametrize("count", ["101", "100000000000000000000"])
async def test_a_replica_cap_no_scaler_can_drive_is_refused(fake: FakeVerda, deploy_env, count: str, capsys) -> None:
    """Before: a cap of 101 or 10**20 was sent to Verda as the deployment's; the scaler drives at most 100."""
    assert await deploy_main([], {**deploy_env, "VERDA_MAX_REPLICAS": count}) == 2
    assert "scaling.max_replica_count" in capsys.readouterr().err
    assert fake.requests == []
