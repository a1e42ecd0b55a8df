"""`deploy --provider runpod`: the [runpod] spec, the exact dry-run body, and apply/status/delete against the fake."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from scaler.deploy.command import deploy_main
from scaler.deploy.errors import DeployError
from scaler.deploy.runpod import (
    CLIENT_ENV,
    ENV_OVERRIDES,
    backend_from_spec,
    build_pod_body,
    load_runpod_spec,
    stop_backend_from_spec,
)
from scaler.deploy.spec import DEFAULT_SPEC_PATH, SpecError
from standins.runpod import FakeRunPod

from .conftest import API_KEY, GPU, pod_body

REPO = Path(__file__).resolve().parents[3]
NAME = "comfyui-worker-serverless"
QUEUE_TOKEN = "queue-token-value-do-not-log"
SECRET_REF = "{{ RUNPOD_SECRET_comfyui-worker-queue-manager-token }}"


@pytest.fixture
def deploy_env(fake: FakeRunPod) -> dict[str, str]:
    """What an operator sets before ./deploy-serverless.sh --provider runpod, pointed at the fake API."""
    return {
        "RUNPOD_API_KEY": API_KEY,
        "RUNPOD_API_URL": fake.url,
        "RUNPOD_HEALTH_URL": fake.health_url,
        "RUNPOD_VOLUME_ID": "vol-models",
        "RUNPOD_DATA_CENTER_IDS": "US-TX-3",
        "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.1.0",
        "QUEUE_MANAGER_URL": "https://queue.example.com",
        "QUEUE_MANAGER_TOKEN": QUEUE_TOKEN,
    }


def runpod_args(*args: str) -> list[str]:
    return ["--provider", "runpod", *args]


def test_body_from_the_shared_spec(deploy_env) -> None:
    spec, settings = load_runpod_spec(DEFAULT_SPEC_PATH, deploy_env)
    body = build_pod_body(spec, settings)
    assert body["image"] == "ghcr.io/acme/comfyui-worker-serverless:0.1.0"
    assert body["gpu"] == {"id": GPU, "count": 1} and body["cloud"] == "SECURE"
    assert body["ports"] == ["8000/http"]  # /health on 8000, reachable through RunPod's proxy
    assert body["mounts"] == {"network": [{"volumeId": "vol-models", "path": "/runpod-volume"}]}
    assert body["dataCenterIds"] == ["US-TX-3"]
    env = body["env"]
    assert env["QUEUE_MANAGER_URL"] == "https://queue.example.com" and env["QUEUE_MANAGER_TOKEN"] == SECRET_REF
    assert env["HEALTH_PORT"] == "8000" and env["SERVERLESS_MODE"] == "true"
    assert env["MODELS_DIR"] == "/runpod-volume/models" and env["OUTPUTS_PATH"] == "/runpod-volume/outputs"
    assert env["INFERENCE_PROVIDER"] == "runpod-pod"
    assert QUEUE_TOKEN not in json.dumps(body)
    assert "COMFYUI_INPUT_DIR" not in env  # the replica's own input folder, as on Verda


def test_uploads_set_for_verda_are_the_volume_s_inputs_folder_on_a_pod(deploy_env, tmp_path: Path) -> None:
    """COMFYUI_INPUT_DIR = "/inputs" names Verda's uploads volume; a pod has one network volume, so there the
    uploads are its inputs/ folder, beside models/ and outputs/."""
    text = DEFAULT_SPEC_PATH.read_text().replace('OUTPUTS_PATH = "/outputs"',
                                                 'OUTPUTS_PATH = "/outputs"\nCOMFYUI_INPUT_DIR = "/inputs"')
    spec_path = tmp_path / "deployment.toml"
    spec_path.write_text(text)

    body = build_pod_body(*load_runpod_spec(spec_path, deploy_env))

    assert body["env"]["COMFYUI_INPUT_DIR"] == "/runpod-volume/inputs"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"RUNPOD_VOLUME_ID": ""}, "runpod.volume_id"),
        ({"RUNPOD_DATA_CENTER_IDS": " , "}, "runpod.data_center_ids"),
        ({"RUNPOD_CLOUD": "ALL"}, "runpod.cloud"),
        ({"RUNPOD_GPU_COUNT": "0"}, "runpod.gpu_count"),
        # Before: 1e400 as a whole number was an OverflowError traceback (the price per pod), 100000 "ready" at
        # $69000.00/h per pod.
        ({"RUNPOD_GPU_COUNT": "1" + "0" * 400}, "runpod.gpu_count"),
        ({"RUNPOD_GPU_COUNT": "100000"}, "runpod.gpu_count"),
        ({"VERDA_DEPLOYMENT_NAME": "a" * 60}, "deployment.name"),
        ({"RUNPOD_GPU": "NVIDIA GeForce RTX 4090\n"}, "runpod.gpu"),  # before: sent as is
        ({"RUNPOD_VOLUME_ID": "vol\x00models"}, "runpod.volume_id"),  # before: sent as is
    ],
)
def test_invalid_settings_are_reported_by_field(deploy_env, override, field) -> None:
    with pytest.raises(SpecError) as caught:
        load_runpod_spec(DEFAULT_SPEC_PATH, {**deploy_env, **override})
    assert [p.split(":")[0] for p in caught.value.problems] == [field]


def test_a_container_disk_past_any_real_one_is_refused_naming_the_field(tmp_path: Path, deploy_env) -> None:
    """Before: disk_gb = 50000 (a typo for 50) went to RunPod as the pod's disk."""
    typo = tmp_path / "typo.toml"
    typo.write_text(DEFAULT_SPEC_PATH.read_text().replace("disk_gb = 50", "disk_gb = 50000"))
    with pytest.raises(SpecError) as caught:
        load_runpod_spec(typo, deploy_env)
    assert [p.split(":")[0] for p in caught.value.problems] == ["runpod.disk_gb"]


def test_unknown_runpod_key_and_missing_table_are_named(tmp_path: Path, deploy_env) -> None:
    text = DEFAULT_SPEC_PATH.read_text()
    typo = tmp_path / "typo.toml"
    typo.write_text(text.replace("disk_gb = 50", "disk_gib = 50"))
    with pytest.raises(SpecError, match=r"runpod\.disk_gib"):
        load_runpod_spec(typo, deploy_env)
    bare = tmp_path / "bare.toml"
    bare.write_text(text.split("[runpod]")[0])
    with pytest.raises(SpecError, match=r"runpod: .* has no \[runpod\] table"):
        load_runpod_spec(bare, deploy_env)


def test_verda_volume_ids_are_not_needed_for_runpod(deploy_env) -> None:
    assert not any(name.startswith("VERDA_") and "VOLUME" in name for name in deploy_env)
    load_runpod_spec(DEFAULT_SPEC_PATH, deploy_env)


def test_a_queue_url_with_credentials_becomes_a_secret_reference(deploy_env, spec_without_token) -> None:
    url = "https://worker:url-password-do-not-log@queue.example.com"
    spec, settings = load_runpod_spec(spec_without_token, {**deploy_env, "QUEUE_MANAGER_URL": url})
    body = build_pod_body(spec, settings)
    assert body["env"]["QUEUE_MANAGER_URL"].startswith("{{ RUNPOD_SECRET_")
    assert "url-password-do-not-log" not in json.dumps(body)


async def test_dry_run_prints_the_exact_body_without_network(fake: FakeRunPod, deploy_env, capsys) -> None:
    assert await deploy_main(runpod_args("--dry-run"), deploy_env) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    spec, settings = load_runpod_spec(DEFAULT_SPEC_PATH, deploy_env)
    assert printed.pop("name").startswith(f"{NAME}-")
    assert printed == build_pod_body(spec, settings)
    assert "comfyui-worker-queue-manager-token" in err
    assert QUEUE_TOKEN not in out + err and API_KEY not in out + err
    assert fake.requests == []


@pytest.mark.parametrize("action", ["status", "delete"])
async def test_dry_run_is_refused_for_anything_but_apply(fake: FakeRunPod, deploy_env, action: str, capsys) -> None:
    assert await deploy_main(runpod_args(action, "--dry-run", "--yes"), deploy_env) == 2
    assert "--dry-run applies to apply only" in capsys.readouterr().err
    assert fake.requests == []


async def test_a_misspelt_setting_is_refused_before_any_call(
    fake: FakeRunPod, deploy_env, tmp_path: Path, capsys
) -> None:
    """The spec's [env] is RunPod's too: SERVERLESS_MOD = "true" made pods that never exit, as on Verda."""
    spec = tmp_path / "deployment.toml"
    spec.write_text(DEFAULT_SPEC_PATH.read_text().replace('SERVERLESS_MODE = "true"', 'SERVERLESS_MOD = "true"'))
    assert await deploy_main(runpod_args("--dry-run", "--spec", str(spec)), deploy_env) == 2
    out, err = capsys.readouterr()
    assert "env.SERVERLESS_MOD: no setting has this name" in err and "did you mean SERVERLESS_MODE?" in err
    assert out == "" and fake.requests == []


async def test_the_queue_managers_worker_token_variable_is_refused_before_any_call(
    fake: FakeRunPod, deploy_env, tmp_path: Path, capsys
) -> None:
    """Before: pods were given QUEUE_MANAGER_WORKER_TOKEN, which the worker never reads: each polled with no token,
    was refused (401) and exited 2 ("QUEUE_MANAGER_TOKEN is unset"). Now exit 2 naming the entry, as on Verda."""
    spec = tmp_path / "deployment.toml"
    spec.write_text(DEFAULT_SPEC_PATH.read_text().replace(
        'QUEUE_MANAGER_TOKEN = "comfyui', 'QUEUE_MANAGER_WORKER_TOKEN = "comfyui'))
    for options in (["--dry-run"], []):
        assert await deploy_main(runpod_args(*options, "--spec", str(spec)), deploy_env) == 2
        out, err = capsys.readouterr()
        assert "secrets.QUEUE_MANAGER_WORKER_TOKEN: the worker reads its token from QUEUE_MANAGER_TOKEN only" in err
        assert out == ""
    assert fake.requests == []


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("RUNPOD_GPUU", "RUNPOD_GPU"),
        ("RUNPOD_DATA_CENTER_ID", "RUNPOD_DATA_CENTER_IDS"),
        ("runpod_cloud", "RUNPOD_CLOUD"),
        ("RUNPOD_HEALTH_URI", "RUNPOD_HEALTH_URL"),
        ("VERDA_IMAGES", "VERDA_IMAGE"),
    ],
)
async def test_a_misspelt_deploy_variable_is_refused_not_replaced_by_the_specs_value(
    fake: FakeRunPod, deploy_env, typo: str, meant: str, capsys
) -> None:
    """Before, RUNPOD_GPUU="NVIDIA A100 80GB PCIe" was ignored: the spec's GPU was checked and shown, exit 0,
    nothing said. Now exit 2 naming it, as the Verda deploy does, before any call."""
    for options in (["--dry-run"], []):
        assert await deploy_main(runpod_args(*options), {**deploy_env, typo: "NVIDIA A100 80GB PCIe"}) == 2
        out, err = capsys.readouterr()
        assert f"{typo}: the deploy reads no variable of this name" in err and f"did you mean {meant}?" in err, err
        assert out == ""
    assert fake.requests == []


@pytest.mark.parametrize("cpu_count_set", [True, False])
async def test_inside_a_runpod_pod_the_deploy_refuses_to_take_that_pods_variables_as_its_own(
    fake: FakeRunPod, deploy_env, capsys, cpu_count_set: bool
) -> None:
    """RunPod sets RUNPOD_POD_ID, RUNPOD_API_KEY (scoped to that pod), RUNPOD_GPU_COUNT, RUNPOD_CPU_COUNT and
    RUNPOD_VOLUME_ID in every pod. Before: exit 2 with "RUNPOD_CPU_COUNT: … did you mean RUNPOD_GPU_COUNT?", which
    hides the cause; without that one variable, the dry run showed pods on that pod's own volume, exit 0."""
    pod = {"RUNPOD_POD_ID": "4qbhkxh0hvkfy3", "RUNPOD_GPU_COUNT": "1", "RUNPOD_VOLUME_ID": "vol-of-the-scaler-pod",
           "RUNPOD_API_KEY": "pod-scoped-key", **({"RUNPOD_CPU_COUNT": "8"} if cpu_count_set else {})}  # fmt: skip
    for options in (["--dry-run"], []):
        assert await deploy_main(runpod_args(*options), {**deploy_env, **pod}) == 2
        out, err = capsys.readouterr()
        assert "RUNPOD_POD_ID is set: this runs inside a RunPod pod" in err, err
        assert "RUNPOD_API_KEY, RUNPOD_GPU_COUNT, RUNPOD_VOLUME_ID" in err and "did you mean" not in err, err
        assert out == "" and "pod-scoped-key" not in err
    assert fake.requests == []


def test_shell_wrapper_takes_the_provider(deploy_env) -> None:
    env = {**os.environ, **deploy_env}
    done = subprocess.run(
        [str(REPO / "deploy-serverless.sh"), "--provider", "runpod", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["gpu"]["id"] == GPU


async def test_apply_checks_placement_and_creates_nothing(fake: FakeRunPod, deploy_env, capsys) -> None:
    assert await deploy_main(runpod_args(), deploy_env) == 0
    out = capsys.readouterr().out
    assert f"gpu: {GPU} x1, SECURE: $0.69/h per pod" in out
    assert "volume: vol-models (100 GB) in US-TX-3" in out
    assert "pods: 0 live" in out and "comfyui-worker-queue-manager-token" in out
    assert fake.requests_to("/pods", "POST") == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"RUNPOD_DATA_CENTER_IDS": "EU-RO-1"}, "runpod.data_center_ids: volume vol-models is in US-TX-3"),
        ({"RUNPOD_VOLUME_ID": "vol-missing"}, "runpod.volume_id: network volume 'vol-missing' not found"),
        ({"RUNPOD_GPU": "NVIDIA Imaginary"}, "runpod.gpu: RunPod has no GPU type 'NVIDIA Imaginary'"),
    ],
)
async def test_apply_names_what_cannot_be_placed(fake: FakeRunPod, deploy_env, capsys, override, message) -> None:
    assert await deploy_main(runpod_args(), {**deploy_env, **override}) == 1
    assert message in capsys.readouterr().err


async def test_control_characters_in_runpods_answers_reach_the_terminal_escaped(
    fake: FakeRunPod, deploy_env, capsys
) -> None:
    """Before: the volume's size and data centre were printed as RunPod sent them, ESC sequences and all (a
    recoloured, retitled or cleared terminal)."""
    volume = {"id": "vol-models", "name": "vol-models", "size": "100\x1b]0;owned\x07", "dataCenter": "US-TX-3"}
    fake.fail_next("/network-volumes/vol-models", 200, method="GET", body=volume)
    assert await deploy_main(runpod_args(), deploy_env) == 0
    out = capsys.readouterr().out
    assert "volume: vol-models (100\\x1b]0;owned\\x07 GB) in US-TX-3" in out and "\x1b" not in out, out
    fake.fail_next("/network-volumes/vol-models", 200, method="GET", body={**volume, "dataCenter": "US\x1b[2J"})
    assert await deploy_main(runpod_args(), deploy_env) == 1
    err = capsys.readouterr().err
    assert "volume vol-models is in US\\x1b[2J, not in" in err and "\x1b" not in err, err


async def test_bad_or_missing_key_is_explained_and_hidden(fake: FakeRunPod, deploy_env, capsys) -> None:
    assert await deploy_main(runpod_args("status"), {**deploy_env, "RUNPOD_API_KEY": "rpa_wrong_value"}) == 1
    err = capsys.readouterr().err
    assert "401" in err and "RUNPOD_API_KEY" in err and "rpa_wrong_value" not in err
    env = {k: v for k, v in deploy_env.items() if k != "RUNPOD_API_KEY"}
    assert await deploy_main(runpod_args("status"), env) == 2  # an invalid deploy variable, as the docs say
    assert "set RUNPOD_API_KEY" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "named"), [
    ("  ", "set RUNPOD_API_KEY"), ("rpa_x12", "RUNPOD_API_KEY: is 7 characters; a credential needs at least 8"),
])
async def test_a_blank_or_short_key_is_refused_naming_it_as_the_scaler_does(
    fake: FakeRunPod, deploy_env, capsys, value, named
) -> None:
    """Before: sent (RunPod's 401, exit 1), and a key under 8 characters is one the logs cannot mask; the scaler
    refuses both, naming RUNPOD_API_KEY."""
    assert await deploy_main(runpod_args("status"), {**deploy_env, "RUNPOD_API_KEY": value}) == 2
    assert named in capsys.readouterr().err
    assert fake.requests_to("/pods") == []


@pytest.mark.parametrize("value", ["rpa_abcd\u00e9fgh", "rpa_abc\udcffdefgh", "rpa_abcdefgh\n"])
async def test_a_key_that_cannot_be_sent_as_a_header_is_refused_naming_it(fake: FakeRunPod, deploy_env, capsys, value):
    """Before: a letter outside ASCII (or bytes the environment could not decode) was a UnicodeEncodeError
    traceback, a newline pasted with it 'cannot reach the RunPod API: LocalProtocolError', exit 1."""
    assert await deploy_main(runpod_args("status"), {**deploy_env, "RUNPOD_API_KEY": value}) == 2
    assert "RUNPOD_API_KEY: must be printable ASCII with no space at either end" in capsys.readouterr().err
    assert fake.requests_to("/pods") == []


async def test_status_and_delete_touch_only_this_deployment(fake: FakeRunPod, deploy_env, capsys) -> None:
    backend = backend_from_spec(DEFAULT_SPEC_PATH, deploy_env)
    try:
        await backend.apply(2)
    finally:
        await backend.aclose()
    await _create_unrelated_pod(fake, pod_body(name="someone-elses-notebook"))
    capsys.readouterr()
    assert await deploy_main(runpod_args("status"), deploy_env) == 0
    out = capsys.readouterr().out
    assert "pods: 2 live" in out and out.count(f" {NAME}-") == 2 and "someone-elses-notebook" not in out
    assert await deploy_main(runpod_args("delete"), deploy_env) == 2
    assert len(fake.live_pods()) == 3
    assert await deploy_main(runpod_args("delete", "--yes"), deploy_env) == 0
    assert "every pod terminated" in capsys.readouterr().out
    assert [pod.name for pod in fake.live_pods()] == ["someone-elses-notebook"]


@pytest.mark.parametrize("url", ["https://{pod}-{port}.proxy.runpod.net/health", "https://{0}.example/health",
                                 "https://{pod_id:d}.example/health", "https://pods.example/health"])
async def test_a_health_url_that_names_no_pod_is_refused_naming_it(fake: FakeRunPod, deploy_env, capsys, url) -> None:
    """Before: `status` with a pod running was a KeyError/IndexError/ValueError traceback, as was every scaler
    observe (the probe formats the URL per pod); without {pod_id}, every pod's /health was asked at one address."""
    backend = backend_from_spec(DEFAULT_SPEC_PATH, deploy_env)
    try:
        await backend.apply(1)
    finally:
        await backend.aclose()
    assert [pod.status for pod in fake.live_pods()] == ["RUNNING"]
    env = {**deploy_env, "RUNPOD_HEALTH_URL": url}
    assert await deploy_main(runpod_args("status"), env) == 2
    assert "RUNPOD_HEALTH_URL: " in capsys.readouterr().err
    with pytest.raises(DeployError, match="RUNPOD_HEALTH_URL: "):
        backend_from_spec(DEFAULT_SPEC_PATH, env)
    stopper = stop_backend_from_spec(DEFAULT_SPEC_PATH, env)  # the kill switch is not kept from stopping pods
    try:
        await stopper.apply(0)
    finally:
        await stopper.aclose()
    assert fake.live_pods() == []


async def test_backend_from_spec_creates_pods_the_api_accepts(fake: FakeRunPod, deploy_env) -> None:
    backend = backend_from_spec(DEFAULT_SPEC_PATH, deploy_env)
    try:
        await backend.apply(1)
        view = await backend.observe()
    finally:
        await backend.aclose()
    assert len(view.replicas) == 1
    (pod,) = fake.pods.values()
    assert pod.body["env"]["QUEUE_MANAGER_TOKEN"] == SECRET_REF


async def test_delete_terminates_a_pod_whose_stop_is_accepted_but_never_taken(
    fake: FakeRunPod, deploy_env, capsys
) -> None:
    """Before: delete stopped each pod and terminated only those the stop had ended; a pod RunPod answered the stop
    of (200, still RUNNING) and kept running was stopped again and `delete --yes` failed (exit 1, "2 pods still
    live after terminating") at every run, the pods billed on. Now what the stop left live is terminated as it is."""
    backend = backend_from_spec(DEFAULT_SPEC_PATH, deploy_env)
    try:
        await backend.apply(2)
    finally:
        await backend.aclose()
    for pod in fake.live_pods():
        answer = {"id": pod.id, "name": pod.body["name"], "status": "RUNNING"}
        fake.fail_next(f"/pods/{pod.id}/action", 200, method="POST", body=answer, times=100)
    capsys.readouterr()
    assert await deploy_main(runpod_args("delete", "--yes"), deploy_env) == 0, capsys.readouterr().err
    assert "every pod terminated" in capsys.readouterr().out
    assert fake.live_pods() == []
    assert all(fake.requests_to(f"/pods/{pod_id}/action", "POST") for pod_id in fake.terminated), "stopped first"


async def test_delete_terminates_every_live_pod_whichever_refuses(fake: FakeRunPod, deploy_env, capsys) -> None:
    """Before: delete terminated the pods its stop left live one after another and ended at the first refusal: the
    pods listed after it were left running, billed (3 pods, the first refusing: 2 left live → 0)."""
    backend = backend_from_spec(DEFAULT_SPEC_PATH, deploy_env)
    try:
        await backend.apply(3)
    finally:
        await backend.aclose()
    pods = fake.live_pods()
    for pod in pods:
        answer = {"id": pod.id, "name": pod.body["name"], "status": "RUNNING"}
        fake.fail_next(f"/pods/{pod.id}/action", 200, method="POST", body=answer, times=100)
    fake.fail_next(f"/pods/{pods[0].id}", 403, method="DELETE", times=100)
    capsys.readouterr()
    assert await deploy_main(runpod_args("delete", "--yes"), deploy_env) == 1
    assert "403" in capsys.readouterr().err
    assert [pod.id for pod in fake.live_pods()] == [pods[0].id]


async def _create_unrelated_pod(fake: FakeRunPod, body: dict) -> None:
    async with httpx.AsyncClient(base_url=fake.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        assert (await http.post("/pods", json=body)).status_code == 201


def test_the_docs_name_exactly_the_variables_read() -> None:
    section = (REPO / "docs" / "providers.md").read_text().split("## RunPod", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(RUNPOD_[A-Z_]+)[`=]", section))
    # The official SDK's, quoted as evidence; and the one RunPod sets in its pods, read to refuse running in one.
    runpods_own = {"RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_WEBHOOK_PING", "RUNPOD_POD_ID"}
    assert named - runpods_own == set(CLIENT_ENV) | set(ENV_OVERRIDES)
    source = (REPO / "scaler" / "deploy" / "runpod.py").read_text()
    assert set(re.findall(r'"(RUNPOD_[A-Z_]+)"', source)) - runpods_own == set(CLIENT_ENV) | set(ENV_OVERRIDES)


@pytest.mark.parametrize(
    ("path", "status", "answer", "printed"),
    [
        ("/network-volumes/vol-models", 200, ["vol-models"], "RunPod API error 200 on GET /network-volumes/{id}"),
        ("/pods", 200, {"pods": [{}] * 1_500_000}, "error: RunPod answered GET /v2/pods with more than"),
        ("/pods", 403, {"title": "Forbidden", "detail": f"key {API_KEY} may not list pods"}, "key *** may not"),
    ],
)
async def test_a_broken_answer_exits_1_with_one_line_and_no_key(
    fake: FakeRunPod, deploy_env, capsys, path: str, status: int, answer: object, printed: str
) -> None:
    """Before, a volume answered as a list raised AttributeError and an answer past the read limit AnswerTooLarge:
    tracebacks; and an error body quoting the API key was printed as RunPod wrote it."""
    fake.fail_next(path, status, method="GET", body=answer)
    assert await deploy_main(runpod_args(), deploy_env) == 1
    out, err = capsys.readouterr()
    assert err.startswith(printed) or printed in err, err
    assert API_KEY not in out + err
    assert fake.requests_to("/pods", "POST") == []
