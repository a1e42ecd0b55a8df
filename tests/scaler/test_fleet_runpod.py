"""The fleet over the fake Verda and the fake RunPod, both on loopback: fallback both ways and kill-all."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from demo.providers import POD_BODY
from scaler.cli import main
from scaler.config import load_settings
from scaler.deploy.spec import DEFAULT_SPEC_PATH
from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig
from scaler.providers import VerdaBackend
from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from scaler.wiring import stop_all, stop_provider
from standins.runpod import FakeRunPod
from standins.verda import FakeVerda

from .conftest import DEPLOYMENT, RUNPOD_KEY, FloodingPeer, StubQueue, operator_env_with

GPU = POD_BODY["gpu"]["id"]


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def start_pods(fake_runpod: FakeRunPod, make_verda_client, count: int = 2) -> None:
    """``count`` pods on the fake RunPod and one replica on the fake Verda, as a running fleet leaves them."""
    runpod = RunPodBackend(RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url), DEPLOYMENT, POD_BODY)
    await runpod.apply(count)
    await runpod.aclose()
    verda = VerdaBackend(make_verda_client(), DEPLOYMENT)
    await verda.apply(1)
    await verda.aclose()
    assert len(fake_runpod.live_pods()) == count


async def test_verda_quota_falls_back_to_runpod_then_drains_back(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod, wall, verda_scaling
):
    fleet = make_fleet(fake_runpod, verda_price=2.30, runpod_price=2.99)
    try:
        fake_verda.set_status(DEPLOYMENT, "quota_reached")
        await fleet.observe()
        await fleet.apply(2)
        assert fleet.state.targets == {"verda": 0, "runpod": 2}
        assert len(fake_runpod.live_pods()) == 2
        wall.advance(30)
        await fleet.observe()
        charged = fleet.ledger.spent_since(wall() - 3600, "runpod")
        assert charged == pytest.approx(2 * 2.99 * 30 / 3600, rel=0.05), "per second (createdAt is to the second)"

        fake_verda.set_status(DEPLOYMENT, None)
        wall.advance(61)
        await fleet.observe()
        assert verda_scaling() == (2, 2)
        assert len(fake_runpod.live_pods()) == 2, "RunPod's pods stay until Verda's replicas are up"
        wall.advance(15)
        await fleet.observe()
        assert fleet.state.targets == {"verda": 2, "runpod": 0}
        assert [m.reason for m in fleet.last_allocation.moves] == ["drain"]
        assert fake_runpod.live_pods() == []
    finally:
        await fleet.aclose()


async def test_runpod_refusing_capacity_sends_its_shortfall_to_verda(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod, wall, verda_scaling
):
    fake_runpod.capacity[GPU] = 1
    fleet = make_fleet(fake_runpod, verda_price=2.30, runpod_price=0.44)
    try:
        await fleet.observe()
        await fleet.apply(3)  # RunPod is cheaper: all three asked of it; it places one and refuses the rest
        assert len(fake_runpod.live_pods()) == 1
        wall.advance(15)
        await fleet.observe()
        assert fleet.state.health["runpod"].degraded == "quota_reached"
        assert fleet.state.targets == {"runpod": 1, "verda": 2}
        assert verda_scaling() == (2, 2)
        assert fleet.last_allocation.fallback_engaged
    finally:
        await fleet.aclose()


@pytest.mark.parametrize(
    "runpod_key_in", ["environment", "dot-env-file", "environment-without-queue-url", "deployment-name-in-dot-env"]
)
async def test_stop_all_stops_verda_and_runpod_and_confirms_both(
    monkeypatch, qm, fake_verda: FakeVerda, fake_runpod: FakeRunPod, verda_credentials, make_verda_client,
    tmp_path: Path, restore_logging, capsys, runpod_key_in,
):
    """RUNPOD_API_KEY in the .env file (docs/scaler.md: settings come from either) passed the settings check, but
    the RunPod backend read os.environ alone: `run` refused to start and `stop --all` left RunPod's pods running.
    Without QUEUE_MANAGER_URL, which the kill switch does not read, the spec's env_from_environment refused too.
    VERDA_DEPLOYMENT_NAME in the .env file named Verda's deployment but not RunPod's pods: those were looked for
    under the spec's deployment.name, none found, "runpod: stopped: 0 replicas" and exit 0 with both running."""
    env = {
        "QUEUE_MANAGER_URL": qm.url,
        "VERDA_CLIENT_ID": verda_credentials[0],
        "VERDA_CLIENT_SECRET": verda_credentials[1],
        "VERDA_API_URL": fake_verda.url,
        "RUNPOD_API_KEY": RUNPOD_KEY,
        "RUNPOD_API_URL": fake_runpod.url,
        "RUNPOD_VOLUME_ID": "vol-demo",
        "RUNPOD_DATA_CENTER_IDS": "US-TX-3",
        "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.1.0",
        "SCALER_PROVIDERS": "verda,runpod",
        "SCALER_ALERT_DRY_RUN": "true",
        "LOG_FORMAT": "json",
    }
    monkeypatch.chdir(tmp_path)
    if runpod_key_in == "dot-env-file":
        (tmp_path / ".env").write_text(f"RUNPOD_API_KEY={env.pop('RUNPOD_API_KEY')}\n")
        monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    if runpod_key_in == "deployment-name-in-dot-env":
        spec = tmp_path / "deployment.toml"
        spec.write_text(DEFAULT_SPEC_PATH.read_text().replace(f'name = "{DEPLOYMENT}"', 'name = "spec-name"', 1))
        env["SCALER_DEPLOY_SPEC"] = str(spec)
        (tmp_path / ".env").write_text(f"VERDA_DEPLOYMENT_NAME={DEPLOYMENT}\n")
        monkeypatch.delenv("VERDA_DEPLOYMENT_NAME", raising=False)
    if runpod_key_in == "environment-without-queue-url":
        del env["QUEUE_MANAGER_URL"]
        monkeypatch.delenv("QUEUE_MANAGER_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    await start_pods(fake_runpod, make_verda_client)
    capsys.readouterr()

    assert await asyncio.to_thread(main, ["stop", "--all"]) == 0
    out = capsys.readouterr().out
    assert "verda: stopped" in out and "runpod: stopped" in out
    assert fake_runpod.live_pods() == []
    assert fake_verda.deployments[DEPLOYMENT].replicas == []
    assert RUNPOD_KEY not in out


async def test_a_running_fleet_holds_every_provider_at_zero_while_the_kill_switch_is_set(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod, wall, verda_scaling, tmp_path
):
    fleet = make_fleet(fake_runpod, verda_price=2.99, runpod_price=0.44)
    fleet.stop_file = tmp_path / "ledger.json.stopped"
    fake_runpod.capacity[GPU] = 1
    try:
        await fleet.observe()
        await fleet.apply(3)
        wall.advance(15)
        await fleet.observe()
        assert len(fake_runpod.live_pods()) == 1 and verda_scaling() == (2, 2)

        fleet.stop_file.write_text("stopped\n")  # what `comfy-scaler stop --all` leaves for a running scaler
        view = await fleet.observe()
        assert view.status == "paused"
        assert fake_runpod.live_pods() == [], "RunPod has no pause: the running fleet terminates and holds zero"
        assert verda_scaling() == (0, 0)
        assert fake_verda.deployments[DEPLOYMENT].status == "paused"
        await fleet.observe()
        assert fake_runpod.live_pods() == [], "and does not create pods again while the switch is set"

        fleet.stop_file.unlink()  # `comfy-scaler resume`
        view = await fleet.observe()
        assert view.status != "paused"
        assert fake_verda.deployments[DEPLOYMENT].status == "healthy"
        assert verda_scaling() == (0, 0), "nothing placed before the loop decides again"
        await fleet.apply(3)
        assert verda_scaling() == (3, 3), "RunPod is still in its quota back-off: Verda takes all three"
        assert fleet.state.health["verda"].degraded is None, "paused by the kill switch is not a degradation"
    finally:
        await fleet.aclose()


async def test_replicas_kept_up_through_the_kill_switch_show_above_the_zero_asked_for(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod, wall, tmp_path
):
    """Before: paused, the decision holds the count it sees (hold_paused) and comfy_scaler_desired_replicas
    followed the replicas listed, so replicas Verda kept up after `comfy-scaler stop --all` never raised
    ComfyReplicasNotStopping (actual 2, desired 2). The stop asked for none: desired is 0 while paused."""
    fleet = make_fleet(fake_runpod, verda_price=0.44, runpod_price=2.99)
    fleet.stop_file = tmp_path / "ledger.json.stopped"
    queue = StubQueue()
    queue.pending = 2
    loop = ScalerLoop(ScalingConfig(billing_aware=False, target_wait_s=None), fleet, queue, clock=wall)
    sample = loop.metrics.registry.get_sample_value
    try:
        await loop.tick()
        kept = list(fake_verda.deployments[DEPLOYMENT].replicas)
        assert len(kept) == 2
        fleet.stop_file.write_text("stopped\n")
        wall.advance(15)
        assert (await loop.tick()).reason == "hold_paused"
        fake_verda.deployments[DEPLOYMENT].replicas[:] = kept  # Verda took the stop and kept the replicas up
        wall.advance(15)
        assert (await loop.tick()).reason == "hold_paused"
        assert (sample("comfy_scaler_actual_replicas"), sample("comfy_scaler_desired_replicas")) == (2, 0)

        fleet.stop_file.unlink()  # `comfy-scaler resume`: the decision's count again
        wall.advance(15)
        decision = await loop.tick()
        assert sample("comfy_scaler_desired_replicas") == decision.desired == 2
    finally:
        await fleet.aclose()


# --- the kill switch reads only what stopping RunPod's pods needs ------------------------------------------------

SPEC = (Path(__file__).resolve().parents[2] / "verda" / "deployment.toml").read_text()


@pytest.fixture
def stop_env(cli_env, monkeypatch, fake_runpod: FakeRunPod, tmp_path: Path) -> dict[str, str]:
    """The operator's environment with Verda and RunPod as a fleet, RunPod's pods built from the repo's spec;
    nothing of the spec's own variables (VERDA_IMAGE, RUNPOD_VOLUME_ID, ...) set."""
    return operator_env_with(cli_env, monkeypatch, {
        "SCALER_PROVIDERS": "verda,runpod",
        "RUNPOD_API_KEY": RUNPOD_KEY,
        "RUNPOD_API_URL": fake_runpod.url,
        "SCALER_LEDGER_FILE": str(tmp_path / "ledger.json"),
        "SCALER_ALERT_DRY_RUN": "true",
    })


def write_spec(tmp_path: Path, text: str) -> str:
    path = tmp_path / "deployment.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "broken",
    ["repo-spec-as-shipped", "unset-env-variable", "image-not-a-string", "no-runpod-table", "no-queue-url"],
)
async def test_stop_terminates_runpod_pods_whatever_else_the_deploy_spec_lacks(
    stop_env, monkeypatch, fake_runpod: FakeRunPod, fake_verda: FakeVerda, make_verda_client, tmp_path, capsys,
    broken,
):
    """Stopping needs the API key and the pods' name. Before, the whole spec had to validate: with the image
    placeholder, an unset variable or no volume id the kill switch printed `runpod: NOT STOPPED` and the pods
    ran on, billed."""
    await start_pods(fake_runpod, make_verda_client)
    if broken == "unset-env-variable":
        monkeypatch.setenv("SCALER_DEPLOY_SPEC", write_spec(tmp_path, SPEC.replace(
            'names = ["QUEUE_MANAGER_URL"]', 'names = ["QUEUE_MANAGER_URL", "HF_TOKEN"]')))
        for name, value in (("VERDA_IMAGE", "ghcr.io/acme/comfyui-worker-serverless:0.1.0"),
                            ("RUNPOD_VOLUME_ID", "vol-demo"), ("RUNPOD_DATA_CENTER_IDS", "US-TX-3")):
            monkeypatch.setenv(name, value)
    elif broken == "image-not-a-string":
        monkeypatch.setenv("SCALER_DEPLOY_SPEC", write_spec(tmp_path, SPEC.replace(
            'image = "ghcr.io/OWNER/comfyui-worker-serverless:0.1.0"', "image = 42")))
    elif broken == "no-runpod-table":
        monkeypatch.setenv("SCALER_DEPLOY_SPEC", write_spec(tmp_path, SPEC.split("[runpod]")[0]))
    elif broken == "no-queue-url":
        monkeypatch.delenv("QUEUE_MANAGER_URL")
    capsys.readouterr()

    assert await cli("stop") == 0
    captured = capsys.readouterr()
    assert "runpod: stopped: 0 replicas" in captured.out and "verda: stopped" in captured.out
    assert fake_runpod.live_pods() == []
    assert RUNPOD_KEY not in captured.out + captured.err
    if broken != "no-queue-url":
        assert await cli("status") == 1, "status (like run) still refuses the spec"
        assert "runpod: invalid deployment spec" in capsys.readouterr().err


async def test_the_scaler_refuses_a_misspelt_runpod_variable_as_the_deploy_does_and_still_stops(
    stop_env, monkeypatch, fake_runpod: FakeRunPod, fake_verda: FakeVerda, make_verda_client, capsys,
):
    """`deploy-serverless.sh --provider runpod` refused RUNPOD_GUP=...; `comfy-scaler run` read the same spec
    without a word and created its pods on the spec's GPU. The kill switch reads neither: it still stops."""
    for name, value in (("VERDA_IMAGE", "ghcr.io/acme/comfyui-worker-serverless:0.1.0"),
                        ("RUNPOD_VOLUME_ID", "vol-demo"), ("RUNPOD_DATA_CENTER_IDS", "US-TX-3"),
                        ("RUNPOD_HEALTH_URL", fake_runpod.health_url)):
        monkeypatch.setenv(name, value)
    assert await cli("status") == 0, capsys.readouterr().err
    await start_pods(fake_runpod, make_verda_client)
    monkeypatch.setenv("RUNPOD_GUP", "NVIDIA H100 80GB HBM3")
    capsys.readouterr()

    assert await cli("status") == 1
    err = capsys.readouterr().err
    assert "runpod: " in err and "RUNPOD_GUP: the deploy reads no variable of this name" in err, err
    assert "did you mean RUNPOD_GPU?" in err, err
    assert await cli("stop") == 0
    assert "runpod: stopped: 0 replicas" in capsys.readouterr().out
    assert fake_runpod.live_pods() == []


async def test_inside_a_runpod_pod_the_scaler_refuses_that_pods_variables_and_still_stops(
    stop_env, monkeypatch, fake_runpod: FakeRunPod, fake_verda: FakeVerda, make_verda_client, capsys,
):
    """RunPod sets RUNPOD_CPU_COUNT, RUNPOD_GPU_COUNT and RUNPOD_VOLUME_ID in every pod: before, a scaler there
    stopped with "RUNPOD_CPU_COUNT: … did you mean RUNPOD_GPU_COUNT?". Now it says why. The kill switch reads no
    pod settings: it still stops (with a key that may; RunPod's pod-scoped one may not)."""
    for name, value in (("VERDA_IMAGE", "ghcr.io/acme/comfyui-worker-serverless:0.1.0"),
                        ("RUNPOD_VOLUME_ID", "vol-demo"), ("RUNPOD_DATA_CENTER_IDS", "US-TX-3"),
                        ("RUNPOD_HEALTH_URL", fake_runpod.health_url), ("RUNPOD_POD_ID", "4qbhkxh0hvkfy3"),
                        ("RUNPOD_CPU_COUNT", "8"), ("RUNPOD_GPU_COUNT", "1")):
        monkeypatch.setenv(name, value)
    await start_pods(fake_runpod, make_verda_client)
    capsys.readouterr()

    assert await cli("status") == 1
    err = capsys.readouterr().err
    assert "runpod: RUNPOD_POD_ID is set: this runs inside a RunPod pod" in err and "did you mean" not in err, err
    assert await cli("stop") == 0
    assert "runpod: stopped: 0 replicas" in capsys.readouterr().out
    assert fake_runpod.live_pods() == []


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (SPEC.replace('name = "comfyui-worker-serverless"', ""), "deployment.name"),
        (SPEC.replace('name = "comfyui-worker-serverless"', f'name = "{"a" * 60}"'), "deployment.name"),
        ('[deployment]\nname = "comfyui-worker-serverless"\n', None),  # the name is all the kill switch reads
    ],
    ids=["no-name", "name-too-long-for-runpod", "name-only"],
)
async def test_stop_names_the_one_spec_field_it_needs_when_it_is_missing(
    stop_env, monkeypatch, fake_runpod: FakeRunPod, fake_verda: FakeVerda, make_verda_client, tmp_path, capsys,
    spec, named,
):
    await start_pods(fake_runpod, make_verda_client)
    monkeypatch.setenv("SCALER_DEPLOY_SPEC", write_spec(tmp_path, spec))
    capsys.readouterr()
    assert await cli("stop", "--all") == (1 if named else 0)
    captured = capsys.readouterr()
    assert "verda: stopped" in captured.out
    if named is None:
        assert fake_runpod.live_pods() == []
        return
    said = captured.err.split("runpod: NOT STOPPED: ")[1].split("stop --all: could not stop")[0]
    assert named in said and "image" not in said and "volume_id" not in said, "only what stopping needs"
    assert len(fake_runpod.live_pods()) == 2


@pytest.mark.parametrize("missing", ["RUNPOD_API_KEY", "VERDA_CLIENT_SECRET"])
async def test_a_provider_without_its_credential_is_not_stopped_and_the_others_are(
    stop_env, monkeypatch, fake_runpod: FakeRunPod, fake_verda: FakeVerda, make_verda_client, verda_scaling,
    capsys, missing,
):
    """Before, a fleet missing one provider's key exited 2 and stopped nothing, not even the provider whose
    credentials were there."""
    await start_pods(fake_runpod, make_verda_client)
    monkeypatch.delenv(missing)
    capsys.readouterr()
    assert await cli("stop", "--all") == 1
    captured = capsys.readouterr()
    not_stopped, stopped = ("runpod", "verda") if missing == "RUNPOD_API_KEY" else ("verda", "runpod")
    assert f"{stopped}: stopped" in captured.out
    line = next(line for line in captured.err.splitlines() if line.startswith(f"{not_stopped}: NOT STOPPED"))
    assert missing in line
    assert "the kill switch reads none of those" not in captured.err, "it reads the credentials"
    assert (fake_runpod.live_pods() == []) == (stopped == "runpod")
    assert (verda_scaling() == (0, 0)) == (stopped == "verda")
    assert await cli("status") == 2, "status (like run) still refuses the missing credential"
    assert missing in capsys.readouterr().err


async def test_stop_all_terminates_the_pods_whose_stop_runpod_accepted_and_never_carried_out(
    stop_env, fake_runpod: FakeRunPod, fake_verda: FakeVerda, make_verda_client
):
    """Before: RunPod answered each stop (200, still RUNNING) and kept the pods running; `stop --all` stopped them
    again at every read, then `runpod: NOT STOPPED: 2 replicas still listed` after its 120 s, and without a running
    scaler nothing ended them: 2 pods billed for ever. Now what is still live half way is terminated as it is."""
    await start_pods(fake_runpod, make_verda_client)
    pods = sorted(pod.id for pod in fake_runpod.live_pods())
    for pod_id in pods:
        answer = {"id": pod_id, "name": fake_runpod.pods[pod_id].body["name"], "status": "RUNNING"}
        fake_runpod.fail_next(f"/pods/{pod_id}/action", 200, method="POST", body=answer, times=1000)
    async with asyncio.timeout(30):
        results = await stop_all(load_settings(), ["verda", "runpod"], timeout_s=2, poll_s=0.05)
    runpod = next(result for result in results if result.provider == "runpod")
    assert runpod.stopped, runpod.detail
    assert runpod.detail.startswith("0 replicas, status paused; terminated without their stop (still live 1 s "
                                    "after it): "), runpod.detail
    assert sorted(runpod.detail.rsplit(": ", 1)[1].split(", ")) == pods
    assert fake_runpod.live_pods() == [] and sorted(fake_runpod.terminated) == pods
    assert all(fake_runpod.requests_to(f"/pods/{pod_id}/action", "POST") for pod_id in pods), "stopped first"


class Recorded:
    """A backend wrapping another, as a recorder or a health record would: it has what the backend it wraps has."""

    def __init__(self, backend: RunPodBackend) -> None:
        self.backend = backend

    def __getattr__(self, name: str):
        return getattr(self.backend, name)


async def test_the_kill_switch_ends_a_stop_never_carried_out_by_what_the_backend_does_not_its_class(
    fake_runpod: FakeRunPod, make_verda_client
):
    """Before, only an object of the class RunPodBackend had its pods terminated half way: the same backend wrapped
    was left with its 2 pods listed RUNNING after their stop (`not confirmed after 2 s`), billed until someone
    ended them. Now any backend that can end them (OutlivesItsStop) does."""
    await start_pods(fake_runpod, make_verda_client)
    pods = sorted(pod.id for pod in fake_runpod.live_pods())
    for pod_id in pods:
        answer = {"id": pod_id, "name": fake_runpod.pods[pod_id].body["name"], "status": "RUNNING"}
        fake_runpod.fail_next(f"/pods/{pod_id}/action", 200, method="POST", body=answer, times=1000)
    backend = Recorded(RunPodBackend(RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url), DEPLOYMENT, POD_BODY))
    try:
        async with asyncio.timeout(30):
            result = await stop_provider("runpod", backend, timeout_s=2, poll_s=0.05)
    finally:
        await backend.aclose()
    assert result.stopped, result.detail
    assert fake_runpod.live_pods() == [] and sorted(fake_runpod.terminated) == pods


def listed_pod(status: str | None) -> dict:
    """One of our pods as a RunPod listing shows it, with the status given."""
    return {"id": "p1", "name": f"{DEPLOYMENT}-0123abcd", "status": status, "cost": 0.69,
            "createdAt": "2026-12-01T01:00:00Z", "gpu": {"id": GPU, "count": 1}}


@pytest.mark.parametrize("status", ["MIGRATING", None, "absent"])
async def test_a_pod_in_a_status_runpod_does_not_document_is_not_reported_stopped(status):
    """A pod whose status the client did not know (a new one, null, or none in the answer) was not counted as
    live: the kill switch read `0 replicas` and said `stopped` while RunPod still listed it, and billed it.
    (The fake RunPod knows only the documented statuses: a peer answering that listing stands in.)"""
    pod = listed_pod(status)
    if status == "absent":
        del pod["status"]
    async with FloodingPeer({"/pods": {"pods": [pod]}, "/pods/p1/action": pod, "/pods/p1": {}}) as peer:
        backend = RunPodBackend(RunPodClient(RUNPOD_KEY, base_url=peer.url, max_attempts=1), DEPLOYMENT, POD_BODY)
        try:
            result = await stop_provider("runpod", backend, timeout_s=2, poll_s=0.05)
        finally:
            await backend.aclose()
    assert not result.stopped
    assert "1 replicas still listed" in result.detail


async def test_the_kill_switch_asks_no_pods_health_while_it_stops_them():
    """RunPod's stop is asynchronous: a pod still listed RUNNING was probed through RunPod's public proxy at
    every confirming read (3 s each against a proxy that hangs), though it was on its way out."""
    pod = listed_pod("RUNNING")
    answers = {"/pods": {"pods": [pod]}, "/pods/p1/action": pod, "/pods/p1": {}}  # its DELETE taken, not carried out
    async with FloodingPeer(answers, flood_bytes=1024 * 1024) as peer:
        health = PodHealthProbe(f"{peer.url}/health/{{pod_id}}")  # any path not answered: a flood
        client = RunPodClient(RUNPOD_KEY, base_url=peer.url, max_attempts=1)
        backend = RunPodBackend(client, DEPLOYMENT, POD_BODY, health=health)
        try:
            result = await stop_provider("runpod", backend, timeout_s=2, poll_s=0.05)
        finally:
            await backend.aclose()
    assert not result.stopped and "1 replicas still listed" in result.detail
    assert peer.sent == 0, "no pod's /health was asked"


async def test_a_write_decided_before_stop_all_and_landing_after_it_is_undone_in_the_same_tick(
    make_fleet, make_verda_client, fake_verda: FakeVerda, fake_runpod: FakeRunPod, wall, verda_scaling, tmp_path
):
    """A running fleet's tick read no kill switch, then `stop --all` wrote it, stopped both providers and
    confirmed them empty; the tick's write landed after: RunPod has no pause, so 3 pods were created and ran
    (billed per second) until the next tick, for good if the scaler was stopped before it; Verda kept 3/3."""
    fleet = make_fleet(fake_runpod, verda_price=2.99, runpod_price=0.44)
    fleet.stop_file = tmp_path / "ledger.json.stopped"
    stoppers = {"verda": VerdaBackend(make_verda_client(), DEPLOYMENT),
                "runpod": RunPodBackend(RunPodClient(RUNPOD_KEY, base_url=fake_runpod.url), DEPLOYMENT, POD_BODY)}
    try:
        await fleet.observe()  # the tick reads: no kill switch yet
        fleet.stop_file.write_text("stopped\n")  # `comfy-scaler stop --all`: the file first, then each provider
        for name, stopper in stoppers.items():
            assert (await stop_provider(name, stopper, timeout_s=5, poll_s=0.05)).stopped
        await fleet.apply(3)  # the tick's write, decided before the stop
        assert fake_runpod.live_pods() == [], "pods created after `runpod: stopped`"
        assert verda_scaling() == (0, 0) and fake_verda.deployments[DEPLOYMENT].status == "paused"
        assert (await fleet.observe()).status == "paused"
    finally:
        await fleet.aclose()
        for stopper in stoppers.values():
            await stopper.aclose()


async def test_a_released_kill_switch_places_nothing_before_the_scaler_decides_again(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod, wall, verda_scaling, tmp_path
):
    """The fleet re-placed the count from before the stop at the tick that saw the kill switch gone, and the
    loop's decision from the (empty) queue took it back in the same tick: 3 pods created and terminated."""
    fleet = make_fleet(fake_runpod, verda_price=2.99, runpod_price=0.44)
    fleet.stop_file = tmp_path / "ledger.json.stopped"
    queue = StubQueue()
    queue.pending = 3
    loop = ScalerLoop(ScalingConfig(billing_aware=False, target_wait_s=None), fleet, queue, clock=wall)
    try:
        await loop.tick()
        assert len(fake_runpod.live_pods()) == 3
        fleet.stop_file.write_text("stopped\n")
        queue.pending = 0
        wall.advance(15)
        assert (await loop.tick()).reason == "hold_paused"
        assert fake_runpod.live_pods() == []
        created = len(fake_runpod.requests_to("/pods", "POST"))
        fleet.stop_file.unlink()  # `comfy-scaler resume`
        wall.advance(15)
        assert (await loop.tick()).desired == 0
        assert len(fake_runpod.requests_to("/pods", "POST")) == created, "pods created for an empty queue"
        assert verda_scaling() == (0, 0) and fake_verda.deployments[DEPLOYMENT].status == "healthy"
        queue.pending = 2
        wall.advance(15)
        await loop.tick()
        assert len(fake_runpod.live_pods()) == 2, "and the fleet places what the loop decides"
    finally:
        await fleet.aclose()


async def test_a_runpod_pod_the_queue_no_longer_needs_leaves_at_the_next_tick_while_verda_waits_for_its_boundary(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod, wall, verda_scaling, queue
):
    """RunPod bills per second, yet the policy held its idle pods, as it holds Verda's, until 180 s before a
    10-minute "boundary" counted from their start: a pod 60 s old when the queue emptied ran on, billed, for
    360 s more (up to 420 s). Verda's replicas, paid to their boundary, still wait for it."""
    fleet = make_fleet(fake_runpod, verda_price=2.30, runpod_price=2.99)
    loop = ScalerLoop(ScalingConfig(max_replicas=4, price_per_replica_hour=0.0), fleet, queue, clock=wall)
    try:
        queue.pending = 4
        await loop.tick()
        assert fleet.state.targets == {"verda": 3, "runpod": 1}
        queue.pending, queue.running = 0, 4
        for _ in range(4):
            wall.advance(15)
            await loop.tick()
        assert len(fake_runpod.live_pods()) == 1 and verda_scaling() == (3, 3)

        queue.running = 0  # the last jobs end: the queue is empty
        ticks = 0
        while fake_runpod.live_pods() and ticks < 40:  # bounded: 10 minutes of ticks, past any boundary
            wall.advance(15)
            await loop.tick()
            ticks += 1
        assert ticks == 1, "released at the first tick the queue does not need it (before: 24 ticks, 360 s)"
        assert verda_scaling() == (3, 3), "Verda's replicas keep the interval they are paid for"
    finally:
        await fleet.aclose()
