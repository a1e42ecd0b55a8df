"""`comfy-scaler stop --all` and the fleet's `status`, against the fake Verda on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from demo.replicas import free_loopback_port
from scaler.cli import main
from scaler.config import load_settings
from scaler.policy import Replica
from scaler.providers import LocalBackend, VerdaBackend
from scaler.providers.base import BackendView
from scaler.providers.runpod.backend import RunPodBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.wiring import build_fleet, stop_all, stop_provider

from ..conftest import served
from .conftest import CALL_CUT_OFF_S, DEPLOYMENT, Wrapped, running_scaler, sigterm_and_wait


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def verda_replicas(make_verda_client, count: int) -> None:
    """The deployment scaled to ``count`` replicas, as a running scaler would have left it."""
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT)
    await backend.apply(count)
    await backend.aclose()


async def test_stop_all_pins_zero_pauses_and_confirms_from_the_providers_state(
    fleet_env, make_verda_client, fake_verda, verda_scaling, capsys, tmp_path
):
    await verda_replicas(make_verda_client, 2)
    assert len(fake_verda.deployments[DEPLOYMENT].replicas) == 2
    capsys.readouterr()
    assert await cli("stop", "--all") == 0
    assert verda_scaling() == (0, 0)
    assert fake_verda.deployments[DEPLOYMENT].status == "paused"
    assert fake_verda.deployments[DEPLOYMENT].replicas == []
    out = capsys.readouterr().out
    assert "verda: stopped: 0 replicas, status paused" in out
    sent = [line for line in out.splitlines() if line.startswith("alert (dry run")]
    assert len(sent) == 1 and "kill switch used" in sent[0]
    assert json.loads((tmp_path / "ledger.json").read_text())["alerts"]["sent"] == ["kill_switch"]
    assert (tmp_path / "ledger.json.stopped").exists(), "the kill switch a running scaler watches"
    assert await cli("stop", "--all") == 0
    assert "alert (dry run" not in capsys.readouterr().out, "the kill switch alert goes out once a day"
    assert await cli("resume") == 0
    assert not (tmp_path / "ledger.json.stopped").exists()
    assert fake_verda.deployments[DEPLOYMENT].status == "healthy"
    out = capsys.readouterr().out
    assert "resumed. The scaler sets the replica count at its next tick." in out
    assert "comfy-scaler once" not in out, "a fleet's `once` exits 2: the hint sent the operator to a refusal"


async def test_stop_all_exits_1_naming_the_providers_it_could_not_stop(
    fleet_env, monkeypatch, fake_verda, capsys
):
    monkeypatch.setenv("SCALER_PROVIDERS", "local,verda")
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/pause", 400, times=5)
    assert await cli("stop", "--all") == 1
    err = capsys.readouterr().err
    assert "local: NOT STOPPED" in err and "inside `comfy-scaler run`" in err
    assert "verda: NOT STOPPED: 0 replicas, status healthy, but pause failed: VerdaAPIError" in err
    assert "could not stop local, verda" in err
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert "kill_switch_engaged" not in [entry["event"] for entry in logged], "not said engaged when it was not"
    [incomplete] = [entry for entry in logged if entry["event"] == "kill_switch_incomplete"]
    assert (incomplete["stopped"], incomplete["not_stopped"]) == ([], ["local", "verda"])


async def test_stop_all_still_stops_every_provider_when_the_kill_switch_file_cannot_be_written(
    fleet_env, monkeypatch, make_verda_client, fake_verda, verda_scaling, capsys, tmp_path
):
    """The disk that filled up at 2 a.m. must not turn the emergency stop into a traceback that stops nothing."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SCALER_LEDGER_FILE", str(tmp_path / "a-file" / "ledger.json"))  # like a full disk
    await verda_replicas(make_verda_client, 2)
    assert await cli("stop", "--all") == 1
    assert verda_scaling() == (0, 0) and fake_verda.deployments[DEPLOYMENT].status == "paused"
    captured = capsys.readouterr()
    assert "verda: stopped" in captured.out
    assert "kill switch file" in captured.err and "a running scaler" in captured.err


async def test_stop_all_stops_every_provider_when_the_ledger_cannot_be_read(
    fleet_env, monkeypatch, make_verda_client, fake_verda, verda_scaling, capsys, tmp_path
):
    """A ledger the scaler's user may not read (here a directory) stops `run` with exit 1; the kill switch goes
    on without it, and leaves it as it is."""
    (tmp_path / "ledger").mkdir()
    monkeypatch.setenv("SCALER_LEDGER_FILE", str(tmp_path / "ledger"))
    await verda_replicas(make_verda_client, 2)
    assert await cli("stop", "--all") == 0
    assert verda_scaling() == (0, 0) and fake_verda.deployments[DEPLOYMENT].status == "paused"
    captured = capsys.readouterr()
    assert "verda: stopped" in captured.out
    assert "cost_ledger_unreadable" in captured.err and "IsADirectoryError" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger", "ledger.stopped"]
    assert list((tmp_path / "ledger").iterdir()) == []
    assert await cli("run") == 1
    assert f"run: SCALER_LEDGER_FILE {tmp_path / 'ledger'} cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("content", [
    b"\xff\xfe{\x00}\x00", b'{"buckets": {}, "billed": {}, "updated_at": "yesterday"}',
], ids=["not-utf-8", "updated-as-text"])
async def test_a_corrupt_ledger_is_set_aside_and_stop_status_and_run_go_on(
    fleet_env, qm, make_verda_client, fake_verda, verda_scaling, capsys, tmp_path, wait, content
):
    """Before, a ledger that was not UTF-8 crashed `stop` (the kill switch stopped nothing), `status` and `run`
    with a UnicodeDecodeError traceback."""
    ledger = tmp_path / "ledger.json"
    ledger.write_bytes(content)
    await verda_replicas(make_verda_client, 2)
    assert await cli("status") == 0
    assert ledger.read_bytes() == content, "status moves nothing"
    capsys.readouterr()
    assert await cli("stop") == 0
    assert verda_scaling() == (0, 0) and fake_verda.deployments[DEPLOYMENT].status == "paused"
    assert "cost_ledger_unreadable" in capsys.readouterr().err
    [aside] = tmp_path.glob("ledger.json.corrupt-*")
    assert aside.read_bytes() == content
    assert await cli("resume") == 0
    ledger.write_bytes(content)
    qm.store.submit("alice", {"1": {"class_type": "Noop", "inputs": {}}})
    env = {**os.environ, **fleet_env, "SCALER_INTERVAL_S": "1"}
    async with running_scaler(env) as process:
        await wait(lambda: verda_charged(ledger), timeout=20)
        err = await sigterm_and_wait(process)
    assert process.returncode == 0 and b"cost_ledger_unreadable" in err


async def test_resume_with_a_kill_switch_it_cannot_remove_says_so_and_starts_nothing(
    fleet_env, fake_verda, verda_scaling, capsys, tmp_path
):
    """A kill switch on a read-only or broken volume: a traceback left the operator guessing what was resumed."""
    assert await cli("stop", "--all") == 0
    (tmp_path / "ledger.json.stopped").unlink()
    (tmp_path / "ledger.json.stopped").mkdir()  # exists, and unlink() fails (EISDIR) as on a read-only volume
    (tmp_path / "ledger.json.stopped" / "keep").write_text("")
    capsys.readouterr()
    assert await cli("resume") == 1
    err = capsys.readouterr().err
    assert "resume failed: cannot remove the kill switch" in err and "ledger.json.stopped" in err
    assert "Traceback" not in err
    assert fake_verda.deployments[DEPLOYMENT].replicas == [] and verda_scaling() == (0, 0)


async def test_resume_removes_a_kill_switch_that_is_a_symlink_to_nothing(fleet_env, fake_verda, capsys, tmp_path):
    """A running fleet holds at zero while the switch is a symlink, even to nothing: `resume` must remove it."""
    assert await cli("stop", "--all") == 0
    (tmp_path / "ledger.json.stopped").unlink()
    (tmp_path / "ledger.json.stopped").symlink_to(tmp_path / "nowhere")
    capsys.readouterr()
    assert await cli("resume") == 0
    assert "kill switch removed" in capsys.readouterr().out
    assert not (tmp_path / "ledger.json.stopped").is_symlink()


async def test_resume_removes_the_kill_switch_even_when_it_cannot_set_the_fleet_up(
    fleet_env, monkeypatch, fake_verda, capsys, tmp_path
):
    """Verda's price list down, no price set: `resume` cannot build the fleet, but the running fleet, which has
    its prices, resumes the providers itself once the kill switch file is gone."""
    assert await cli("stop", "--all") == 0
    monkeypatch.delenv("SCALER_VERDA_PRICE_PER_HOUR")
    fake_verda.fail_next("/container-types", 400, times=10)
    capsys.readouterr()
    assert await cli("resume") == 1
    assert "verda: price lookup failed" in capsys.readouterr().err
    assert not (tmp_path / "ledger.json.stopped").exists()


async def test_stop_is_not_confirmed_while_the_provider_still_lists_replicas(fleet_env, make_verda_client,
                                                                            fake_verda):
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT)
    await backend.apply(1)
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/replicas", 503, times=100)
    try:
        result = await stop_provider("verda", backend, timeout_s=2, poll_s=0.05)
    finally:
        await backend.aclose()
    assert not result.stopped
    assert "not confirmed after 2 s" in result.detail


async def test_stop_all_names_a_provider_without_a_backend(fleet_env, monkeypatch):
    monkeypatch.setenv("SCALER_PROVIDERS", "verda")
    results = await stop_all(load_settings(), ["verda", "kubernetes"], timeout_s=CALL_CUT_OFF_S, poll_s=0.05)
    assert [(r.provider, r.stopped) for r in results] == [("verda", True), ("kubernetes", False)]


async def test_status_json_shows_each_provider_and_the_ledger(fleet_env, make_verda_client, capsys):
    await verda_replicas(make_verda_client, 1)
    capsys.readouterr()
    assert await cli("status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    verda = report["fleet"]["providers"]["verda"]
    assert (verda["price_per_hour"], verda["billing"], verda["live"]) == (2.3, "started 10-minute intervals", 1)
    assert report["fleet"]["spend"]["total"]["last_hour"] == pytest.approx(2.3 / 6, abs=1e-4)
    assert report["price_source"] == "per provider"


def test_unknown_provider_is_a_configuration_error(fleet_env, monkeypatch, capsys):
    monkeypatch.setenv("SCALER_PROVIDERS", "verda,kubernetes")
    assert main(["status"]) == 2
    assert "SCALER_PROVIDERS: unknown ['kubernetes']" in capsys.readouterr().err


async def test_status_table_shows_providers_and_billed_cost(fleet_env, capsys):
    capsys.readouterr()
    assert await cli("status") == 0
    out = capsys.readouterr().out
    assert "providers (cheapest first is preferred)" in out and "billed cost (ledger)" in out
    assert "│ verda" in out and "│ total" in out


async def test_run_with_a_fleet_serves_provider_metrics_keeps_the_ledger_and_obeys_the_kill_switch(
    fleet_env, qm, fake_verda, verda_scaling, tmp_path, wait
):
    port = free_loopback_port()
    env = {**os.environ, **fleet_env, "SCALER_INTERVAL_S": "1", "SCALER_METRICS_PORT": str(port),
           "SCALER_METRICS_HOST": "127.0.0.1", "SCALER_IDLE_TO_ZERO_S": "0"}
    qm.store.submit("alice", {"1": {"class_type": "Noop", "inputs": {}}})
    async with running_scaler(env) as process:
        await wait(lambda: verda_scaling() == (1, 1), timeout=20)
        await wait(lambda: verda_charged(tmp_path / "ledger.json"), timeout=20)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            metrics = (await http.get("/metrics")).text
            assert 'comfy_scaler_provider_target_replicas{provider="verda"} 1.0' in metrics
            assert 'comfy_scaler_provider_spend{provider="total",window="last_day"}' in metrics
            assert await cli("stop", "--all") == 0
            decided = await decisions_made(http)
            async with asyncio.timeout(20):  # two ticks of the running scaler, the second begun with the switch set
                while await decisions_made(http) < decided + 2:
                    await asyncio.sleep(0.1)
        assert verda_scaling() == (0, 0), "the running scaler does not undo the kill switch"
        err = await sigterm_and_wait(process)
    assert process.returncode == 0
    assert b"kill_switch_seen" in err
    assert verda_charged(tmp_path / "ledger.json"), "the ledger file keeps the day's charges"


async def decisions_made(http: httpx.AsyncClient) -> float:
    lines = (await http.get("/metrics")).text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("comfy_scaler_decisions_total{"))


def verda_charged(ledger_file: Path) -> bool:
    try:
        return bool(json.loads(ledger_file.read_text())["buckets"].get("verda"))
    except (OSError, ValueError, KeyError):
        return False


async def test_stop_all_works_when_settings_it_does_not_read_are_invalid(
    fleet_env, make_verda_client, fake_verda, monkeypatch, capsys
):
    await verda_replicas(make_verda_client, 2)
    monkeypatch.setenv("SCALER_FALLBACK_RETRY_S", "600")  # above SCALER_FALLBACK_RETRY_MAX_S: a check across both
    monkeypatch.setenv("SCALER_FALLBACK_RETRY_MAX_S", "300")
    capsys.readouterr()
    assert await cli("stop", "--all") == 0
    assert fake_verda.deployments[DEPLOYMENT].status == "paused"
    assert fake_verda.deployments[DEPLOYMENT].replicas == []
    err = capsys.readouterr().err
    assert "SCALER_FALLBACK_RETRY_MAX_S" in err


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (None, "no-such-spec.toml"),
        (b'deployment = "a string, not a table"\n', "deployment: must be a table"),
        ('[deployment]\nname = "x"\n'.encode("utf-16"), "spec.toml"),
    ],
    ids=["missing", "wrong-shape", "not-utf8"],
)
async def test_stop_all_stops_the_other_providers_when_the_runpod_deploy_spec_is_broken(
    fleet_env, make_verda_client, fake_verda, verda_scaling, monkeypatch, tmp_path, capsys, spec, named
):
    """A deploy spec RunPod's backend cannot be built from (missing, of the wrong shape, not UTF-8) was a
    traceback that stopped nothing, not even Verda listed beside it."""
    await verda_replicas(make_verda_client, 2)
    path = tmp_path / ("no-such-spec.toml" if spec is None else "spec.toml")
    if spec is not None:
        path.write_bytes(spec)
    monkeypatch.setenv("SCALER_PROVIDERS", "runpod,verda")
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-test-key")
    monkeypatch.setenv("SCALER_DEPLOY_SPEC", str(path))
    capsys.readouterr()
    assert await cli("stop", "--all") == 1
    assert verda_scaling() == (0, 0) and fake_verda.deployments[DEPLOYMENT].status == "paused"
    captured = capsys.readouterr()
    assert "verda: stopped" in captured.out
    assert "runpod: NOT STOPPED" in captured.err and named in captured.err


# --- the kill switch against an API that misbehaves ----------------------------------------------------------


async def test_stop_provider_ends_within_its_bound_when_the_api_never_answers(silent_peer):
    """A RunPod API that accepts and never answers held `stop --all` for 5 attempts of 30 s per request (pin,
    pause, then each poll): minutes at 2 a.m., longer with more pods. Now each half is bounded."""
    backend = RunPodBackend(RunPodClient("rpa_silent_test_key", base_url=silent_peer), DEPLOYMENT, {})
    started = time.monotonic()
    try:
        async with asyncio.timeout(20):
            result = await stop_provider("runpod", backend, timeout_s=0.5, poll_s=0.05)
    finally:
        await backend.aclose()
    assert time.monotonic() - started < 5
    assert not result.stopped and "no answer within" in result.detail


@pytest.mark.parametrize(("command", "said"), [
    ("stop", "stop failed: pause: TimeoutError: no answer within 0.25 s"),
    # `resume` had no bound: against a Verda dripping one byte every 5 s it was still running after 200 s.
    ("resume", "resume failed: no answer within 0.5 s: the deployment may or may not be resumed"),
])
async def test_stop_and_resume_end_within_their_bound_when_verda_never_answers(
    cli_env, silent_peer, monkeypatch, capsys, command, said
):
    monkeypatch.setenv("VERDA_API_URL", silent_peer)
    monkeypatch.setattr("scaler.cli.KILL_CONFIRM_TIMEOUT_S", 0.5)
    async with asyncio.timeout(20):
        assert await cli(command) == 1
    assert said in capsys.readouterr().err


async def test_stop_of_a_verda_answering_too_much_fails_cleanly(cli_env, flooding_peer, monkeypatch, capsys):
    """A Verda (or a wrong VERDA_API_URL) answering 64 MiB and more: `stop` ended in an AnswerTooLarge traceback."""
    monkeypatch.setenv("VERDA_API_URL", flooding_peer.url)
    assert await cli("stop") == 1
    err = capsys.readouterr().err
    assert "stop failed: pin to 0: AnswerTooLarge" in err and "Traceback" not in err
    assert await cli("resume") == 1  # the flood goes on where it was cut: a JSON error this time
    assert "resume failed: " in capsys.readouterr().err


@pytest.mark.parametrize("command", [["stop"], ["stop", "--all"]])
async def test_stop_never_prints_a_secret_the_provider_echoes(cli_env, fake_verda, monkeypatch, capsys, command):
    """print() is not the log scrubber: a Verda error echoing the client secret went to the terminal as is."""
    secret = cli_env["VERDA_CLIENT_SECRET"]
    fake_verda.fail_next("/oauth2/token", 401, times=10,
                         body={"code": "unauthorized_request", "message": f"no client with secret {secret}"})
    assert await cli(*command) == 1
    captured = capsys.readouterr()
    assert "unauthorized_request" in captured.err and "***" in captured.err
    assert secret not in captured.out + captured.err


@pytest.mark.parametrize("command", [["status"], ["resume"]])
async def test_a_price_list_echoing_the_secret_never_prints_it(fleet_env, fake_verda, monkeypatch, capsys, command):
    """A provider that cannot be set up (its price list refusing) is printed as `<command>: verda: price lookup
    failed (...)`: print() is not the log scrubber, and a Verda error echoing the client secret reached the terminal
    as is (`run` and `status` printed it, `resume` too)."""
    secret = fleet_env["VERDA_CLIENT_SECRET"]
    monkeypatch.delenv("SCALER_VERDA_PRICE_PER_HOUR")
    fake_verda.fail_next("/oauth2/token", 401, times=10,
                         body={"code": "unauthorized_request", "message": f"no client with secret {secret}"})
    assert await cli(*command) == 1
    captured = capsys.readouterr()
    assert "verda: price lookup failed" in captured.err and "unauthorized_request" in captured.err, captured.err
    assert secret not in captured.out + captured.err


@pytest.mark.parametrize("padding", [0, 170], ids=["path-whole", "path-across-the-cut"])
async def test_a_webhook_echoing_its_path_never_reaches_the_log(fleet_env, monkeypatch, capsys, padding):
    """A webhook's path is its secret (Slack: /services/T…/B…/<token>). A server refusing the POST commonly names
    the path (Express: "Cannot POST /services/…"), and `alert_not_delivered` logged that answer as is: only the
    whole URL was a registered secret, so the path, alone in the text, went through. The answer is cut at 200
    characters: cut before it was scrubbed, a secret across the cut kept its first half."""
    secret_path = "/services/T0ACME/B0ACME/webhook-path-do-not-log"

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=404, text=f"{'.' * padding}<pre>Cannot POST {request.path}</pre>")

    app = web.Application()
    app.router.add_post("/{tail:.*}", refuse)
    async with served(app, access_log=None) as url:  # the access log would name the secret path
        monkeypatch.setenv("SCALER_ALERT_WEBHOOK_URL", f"{url}{secret_path}")
        monkeypatch.setenv("SCALER_ALERT_DRY_RUN", "false")
        assert await cli("stop", "--all") == 0
    captured = capsys.readouterr()
    assert "alert_not_delivered" in captured.err and "Cannot POST" in captured.err, captured.err
    assert "/services/T0" not in captured.out + captured.err


@pytest.mark.parametrize("command", [["stop"], ["stop", "--all"]])
async def test_a_refused_pin_to_zero_still_pauses(fleet_env, make_verda_client, fake_verda, monkeypatch, capsys,
                                                  command):
    """Verda refusing the scaling PATCH (a 400, a 409 while it updates) made the kill switch give up before the
    pause, which alone would have stopped the replicas: they ran on. Now it pauses, and still says what failed."""
    if command == ["stop"]:
        monkeypatch.delenv("SCALER_PROVIDERS")
    await verda_replicas(make_verda_client, 2)
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/scaling", 400, method="PATCH", times=10)
    capsys.readouterr()
    assert await cli(*command) == 1
    assert fake_verda.deployments[DEPLOYMENT].status == "paused"
    assert fake_verda.deployments[DEPLOYMENT].replicas == []
    err = capsys.readouterr().err
    if command == ["stop"]:
        assert "stop failed: pin to 0: VerdaAPIError: Verda API error 400" in err and "done: pause" in err
    else:
        assert "verda: NOT STOPPED: 0 replicas, status paused, but pin to 0 failed: VerdaAPIError" in err


@pytest.mark.parametrize("command", [["stop"], ["stop", "--all"]])
async def test_a_pin_to_zero_that_gets_no_answer_in_time_still_pauses(
    fleet_env, make_verda_client, fake_verda, monkeypatch, capsys, command
):
    """Verda answering GET .../scaling with a 503 and Retry-After (or not at all): the pin to 0 waited out the one
    bound around both steps, the pause was never sent and 3 replicas ran on, at every `stop`. Each step now has
    half the bound."""
    if command == ["stop"]:
        monkeypatch.delenv("SCALER_PROVIDERS")
    monkeypatch.setattr("scaler.cli.KILL_CONFIRM_TIMEOUT_S", 0.5)
    await verda_replicas(make_verda_client, 2)
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/scaling", 503, method="GET", retry_after="30")
    capsys.readouterr()
    started = time.monotonic()
    assert await cli(*command) == 1
    assert time.monotonic() - started < 5
    assert fake_verda.requests_to(f"/container-deployments/{DEPLOYMENT}/pause", "POST")
    assert fake_verda.deployments[DEPLOYMENT].status == "paused"
    assert fake_verda.deployments[DEPLOYMENT].replicas == []
    err = capsys.readouterr().err
    if command == ["stop"]:
        assert "stop failed: pin to 0: TimeoutError: no answer within 0.25 s" in err and "done: pause" in err
    else:
        assert "verda: NOT STOPPED: 0 replicas, status paused, but pin to 0 failed: TimeoutError" in err


class ListsOnceThenFails:
    """A provider that takes the stop's writes and lists one replica, then fails every listing (a proxy going
    down mid-stop, or a list slower than what is left of the deadline on a loaded machine)."""

    def __init__(self) -> None:
        self.listings = 0

    async def apply(self, count: int) -> None:
        pass

    async def pause(self) -> None:
        pass

    async def observe(self) -> BackendView:
        self.listings += 1
        if self.listings > 1:
            raise ConnectionError("proxy gone")
        return BackendView(replicas=(Replica("r1", 0.0),), status="paused")


async def test_an_unconfirmed_stop_names_the_replicas_last_seen_listed():
    """Before: only the last call's failure was said ("ConnectionError: proxy gone"), not that a replica was still
    listed when the provider last answered; under load the RunPod kill-switch test saw that and failed."""
    provider = ListsOnceThenFails()
    # A second listing must come before the time is up: within 0.5 s, a stall of a loaded machine once beat it.
    result = await stop_provider("verda", provider, timeout_s=CALL_CUT_OFF_S, poll_s=0.05)
    assert not result.stopped and provider.listings > 1
    assert result.detail == (f"not confirmed after {CALL_CUT_OFF_S:g} s: 1 replicas still listed (status paused), "
                             "then ConnectionError: proxy gone"), result.detail


async def test_a_ledger_a_newer_scaler_wrote_beside_a_running_fleet_is_left_as_it_is(fleet_env, fake_verda, tmp_path):
    """Before: read loosely for its alerts, then written over in the old shape at the fleet's next tick, what the
    newer scaler kept in it lost without a word."""
    fleet = await build_fleet(load_settings())
    try:
        await fleet.observe()
        path = tmp_path / "ledger.json"
        newer = json.loads(path.read_text()) | {"version": 2, "kept_by_version_2": {"a": 1}}
        path.write_text(json.dumps(newer))
        with capture_logs() as logs:
            await fleet.observe()
        assert json.loads(path.read_text()) == newer
        failed = [entry for entry in logs if entry["event"] == "cost_ledger_save_failed"]
        assert len(failed) == 1 and "written by a newer comfy-scaler (ledger version 2" in failed[0]["error"], logs
    finally:
        await fleet.aclose()


async def test_the_kill_switch_alert_stays_in_the_book_a_running_fleet_saves_every_tick(
    fleet_env, fake_verda, capsys, tmp_path
):
    """`stop --all` books its alert in the ledger; the running fleet wrote its own book over it at its next tick,
    and a second `stop --all` that day sent the alert again."""
    fleet = await build_fleet(load_settings())
    try:
        await fleet.observe()
        assert await cli("stop", "--all") == 0
        await fleet.observe()  # the running scaler's next tick: sees the kill switch, saves the ledger
        assert json.loads((tmp_path / "ledger.json").read_text())["alerts"]["sent"] == ["kill_switch"]
        assert await cli("resume") == 0
        await fleet.observe()
        capsys.readouterr()
        assert await cli("stop", "--all") == 0
        assert "alert (dry run" not in capsys.readouterr().out, "the kill switch alert goes out once a day"
    finally:
        await fleet.aclose()


async def test_the_kill_switch_leaves_local_workers_to_their_scaler_by_what_the_backend_does_not_its_class():
    """Before, only an object of the class LocalBackend was refused: a wrapped one, built in `comfy-scaler stop`
    with no workers of its own, was pinned, paused, read empty and reported `stopped` (0 replicas) while the running
    scaler's workers ran on. Now any backend whose replicas live in its own process (RunsItsReplicasHere) is not
    stopped, and the operator is told which process to stop."""
    backend = Wrapped(LocalBackend({}))
    try:
        async with asyncio.timeout(30):
            result = await stop_provider("local", backend, timeout_s=2, poll_s=0.05)
    finally:
        await backend.aclose()
    assert not result.stopped
    assert "inside `comfy-scaler run`" in result.detail
