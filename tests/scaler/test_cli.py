"""`comfy-scaler` against the queue manager and the fake Verda on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import uuid
from pathlib import Path

import pytest

from scaler.cli import main
from scaler.config import ConfigError, load_settings
from scaler.loop import save_policy_state
from scaler.policy import PolicyState
from standins.verda import CONTAINER_TYPES

from .conftest import DEPLOYMENT, running_scaler, sigterm_and_wait

QUEUE_TOKEN = "queue-token-do-not-log"
WORKFLOW = {"1": {"class_type": "Noop", "inputs": {}}}


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


def test_bad_configuration_exits_2_naming_every_bad_variable(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QUEUE_MANAGER_URL", raising=False)
    monkeypatch.setenv("SCALER_INTERVAL_S", "soon")
    monkeypatch.setenv("SCALER_JOBS_PER_REPLICA", "0")
    monkeypatch.setenv("SCALER_BACKEND", "kubernetes")
    assert main(["once"]) == 2
    err = capsys.readouterr().err
    for name in ("QUEUE_MANAGER_URL", "SCALER_INTERVAL_S", "SCALER_JOBS_PER_REPLICA", "SCALER_BACKEND"):
        assert name in err


def test_an_activation_threshold_under_the_default_wait_target_is_refused_naming_both(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SCALER_BACKEND", "local")
    monkeypatch.setenv("SCALER_ACTIVATION_THRESHOLD", "3")
    with pytest.raises(ConfigError, match=r"SCALER_ACTIVATION_THRESHOLD.*SCALER_TARGET_WAIT_S"):
        load_settings()
    monkeypatch.setenv("SCALER_TARGET_WAIT_S", "none")
    assert load_settings().scaling_config().activation_threshold == 3


def test_missing_verda_credentials_are_named(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("VERDA_CLIENT_ID", raising=False)
    monkeypatch.delenv("VERDA_CLIENT_SECRET", raising=False)
    monkeypatch.setenv("SCALER_MIN_REPLICAS", "6")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "VERDA_CLIENT_ID" in err and "VERDA_CLIENT_SECRET" in err
    assert "SCALER_MIN_REPLICAS" in err and "SCALER_MAX_REPLICAS" in err


async def test_a_budget_of_0_with_a_floor_of_replicas_is_refused_naming_both(cli_env, monkeypatch, capsys,
                                                                             scaling_patches):
    """Accepted, the budget won without a word: the 2 replicas the operator asked to keep were never started."""
    monkeypatch.setenv("SCALER_MIN_REPLICAS", "2")
    monkeypatch.setenv("SCALER_MAX_SPEND_PER_HOUR", "0")
    for command in ("once", "run", "status"):
        assert await cli(command) == 2
        err = capsys.readouterr().err
        assert "SCALER_MIN_REPLICAS=2" in err and "SCALER_MAX_SPEND_PER_HOUR=0" in err
    assert scaling_patches() == []


def test_a_fleets_budget_is_checked_against_its_cheapest_provider(monkeypatch, tmp_path):
    """SCALER_PRICE_PER_REPLICA_HOUR does not price a fleet: each provider has its own, and local ones are free."""
    monkeypatch.chdir(tmp_path)
    for name, value in {"QUEUE_MANAGER_URL": "http://127.0.0.1:9", "SCALER_PROVIDERS": "local",
                        "SCALER_MIN_REPLICAS": "2", "SCALER_MAX_SPEND_PER_HOUR": "0"}.items():
        monkeypatch.setenv(name, value)
    assert load_settings().min_replicas == 2, "local workers cost nothing: a budget of 0 pays for them"
    monkeypatch.setenv("SCALER_LOCAL_PRICE_PER_HOUR", "0.5")
    monkeypatch.setenv("SCALER_MAX_SPEND_PER_HOUR", "0.8")
    refused = r"SCALER_MAX_SPEND_PER_HOUR=0.8 cannot pay for SCALER_MIN_REPLICAS=2 .*= 1\.00"
    with pytest.raises(ConfigError, match=refused):
        load_settings()


async def test_a_budget_below_the_floor_at_verdas_price_is_refused_before_anything_is_written(
    cli_env, monkeypatch, capsys, scaling_patches
):
    """Verda's price (2.30/h for the fake's H100) is only known once read: 2 replicas need 4.60/h, 110.40/day."""
    monkeypatch.setenv("SCALER_MIN_REPLICAS", "2")
    monkeypatch.setenv("SCALER_MAX_SPEND_PER_DAY", "100")
    for command in ("once", "run"):
        assert await cli(command) == 2
        err = capsys.readouterr().err
        assert "SCALER_MAX_SPEND_PER_DAY=100" in err and "SCALER_MIN_REPLICAS=2" in err and "110.40" in err
        [logged] = [json.loads(line) for line in err.splitlines() if '"budget_below_min_replicas"' in line]
        assert logged["price_per_replica_hour"] == 2.3
    assert scaling_patches() == []
    monkeypatch.setenv("SCALER_MAX_SPEND_PER_DAY", "110.40")
    monkeypatch.setenv("SCALER_MAX_SPEND_PER_HOUR", "4.60")
    assert await cli("once") == 0, "a budget that pays for the floor exactly is accepted"
    assert [patch.json for patch in scaling_patches()] == [{"min_replica_count": 2, "max_replica_count": 2}]


async def test_once_dry_run_decides_and_writes_nothing(cli_env, qm, fake_verda, verda_scaling, scaling_patches, capsys):
    for _ in range(2):
        qm.store.submit("alice", WORKFLOW)
    assert await cli("once", "--dry-run") == 0
    assert verda_scaling() == (0, 5)
    assert scaling_patches() == []
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [decision] = [entry for entry in logged if entry["event"] == "Scaling decision"]
    assert (decision["desired"], decision["reason"], decision["apply"]) == (2, "wake_from_zero", "skipped_dry_run")


async def test_once_applies_and_remembers_its_state(cli_env, qm, verda_scaling, monkeypatch, tmp_path):
    state_file = tmp_path / "scaler-state.json"
    monkeypatch.setenv("SCALER_STATE_FILE", str(state_file))
    qm.store.submit("alice", WORKFLOW)
    assert await cli("once") == 0
    assert verda_scaling() == (1, 1)
    saved = json.loads(state_file.read_text())
    assert saved["applied"] == 1 and saved["last_work_seen_at"] is not None


async def test_once_run_with_another_billing_interval_converts_the_intervals_the_state_file_counted(
    cli_env, qm, verda_scaling, monkeypatch, tmp_path, capsys
):
    """The state file kept the intervals charged as counts, read back in whatever SCALER_BILLING_INTERVAL_S the
    next run had: it now says the rule it counted in, and a run under another converts them and says so."""
    state_file = tmp_path / "scaler-state.json"
    monkeypatch.setenv("SCALER_STATE_FILE", str(state_file))
    qm.store.submit("alice", WORKFLOW)
    for _ in range(3):  # the first starts a replica, the second charges its first interval, the third reads it back
        assert await cli("once") == 0
    saved = json.loads(state_file.read_text())
    assert saved["billing"] == {"interval_s": 600.0, "anchor": "started_at"} and len(saved["ledger"]["billed"]) == 1
    assert "policy_state_billing_changed" not in capsys.readouterr().err, "the runs after the first counted in its rule"
    monkeypatch.setenv("SCALER_BILLING_INTERVAL_S", "3600")
    assert await cli("once") == 0
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [changed] = [entry for entry in logged if entry["event"] == "policy_state_billing_changed"]
    assert changed["setting"] == "SCALER_BILLING_INTERVAL_S"
    assert "policy_state_unreadable" not in [entry["event"] for entry in logged], "converted, not started afresh"
    assert json.loads(state_file.read_text())["billing"]["interval_s"] == 3600.0


@pytest.mark.parametrize("content", [
    b'{"demand_samples": [[1, Infinity]]}', b'{"opening_load": [0, 1e400]}',
    b'{"ledger": {"billed": [[["r", 1], 1e999]]}}',
    b"\xff\xfe{\x00}\x00",
], ids=["sample-count-infinite", "opening-count-infinite", "billed-count-infinite", "not-utf-8"])
async def test_a_corrupt_state_file_is_set_aside_by_once_and_left_by_status_neither_crashing(
    cli_env, qm, verda_scaling, monkeypatch, tmp_path, capsys, content
):
    """Before, these raised OverflowError or UnicodeDecodeError: `run`, `once` and `status` exited 1 with a
    traceback and left the file, so a scaler under systemd's Restart=always crashed on it for ever."""
    state_file = tmp_path / "scaler-state.json"
    state_file.write_bytes(content)
    monkeypatch.setenv("SCALER_STATE_FILE", str(state_file))
    assert await cli("status") == 0
    assert state_file.read_bytes() == content, "status saves nothing and moves nothing"
    qm.store.submit("alice", WORKFLOW)
    capsys.readouterr()
    assert await cli("once") == 0
    assert verda_scaling() == (1, 1)
    assert "policy_state_unreadable" in capsys.readouterr().err
    [aside] = tmp_path.glob("scaler-state.json.corrupt-*")
    assert aside.read_bytes() == content
    assert json.loads(state_file.read_text())["applied"] == 1, "a good file again"


async def test_once_exits_1_and_holds_when_the_queue_is_unreachable(
    cli_env, monkeypatch, verda_scaling, scaling_patches
):
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://127.0.0.1:9")
    assert await cli("once") == 1
    assert scaling_patches() == []


async def test_once_exits_1_when_the_platform_refuses_its_write(cli_env, qm, fake_verda, verda_scaling, capsys):
    """From cron the exit code is all there is: a scale-up the platform refused exited 0, as if it had landed."""
    qm.store.submit("alice", WORKFLOW)
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/scaling", 503, method="PATCH", times=100)
    assert await cli("once") == 1
    assert verda_scaling() == (0, 5)
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [decision] = [entry for entry in logged if entry["event"] == "Scaling decision"]
    assert (decision["desired"], decision["apply"]) == (1, "failed")


async def test_once_from_cron_releases_the_replicas_once_the_queue_outage_outlasts_the_hold(
    cli_env, qm, verda_scaling, monkeypatch, tmp_path
):
    """Each `once` started the outage's clock afresh, so from cron a queue manager that stayed down held the
    replicas (and their bill) for the whole outage. The outage's start is now kept in the state file."""
    monkeypatch.setenv("SCALER_STATE_FILE", str(tmp_path / "scaler-state.json"))
    monkeypatch.setenv("SCALER_QUEUE_OUTAGE_HOLD_S", "1")
    for _ in range(2):
        qm.store.submit("alice", WORKFLOW)
    assert await cli("once") == 0
    assert verda_scaling() == (2, 2)
    qm.faults.inject("queue-status", status=503, times=1000)
    assert await cli("once") == 1, "the first failed read: held"
    assert verda_scaling() == (2, 2)
    await asyncio.sleep(1.1)
    assert await cli("once") == 1
    assert verda_scaling() == (0, 0), "down past the hold: released to the floor"


async def test_status_json_shows_queue_deployment_and_the_decision(cli_env, qm, monkeypatch, capsys):
    monkeypatch.setenv("QUEUE_MANAGER_TOKEN", QUEUE_TOKEN)
    qm.store.submit("alice", WORKFLOW)
    assert await cli("status", "--json") == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert report["queue"]["pending_jobs"] == 1
    assert report["deployment"]["status"] == "healthy"
    assert (report["deployment"]["min_replica_count"], report["deployment"]["max_replica_count"]) == (0, 5)
    assert report["decision"]["desired"] == 1
    assert report["decision"]["reason"] == "wake_from_zero"
    assert (report["price_per_replica_hour"], report["price_source"]) == (2.3, "verda")
    assert cli_env["VERDA_CLIENT_SECRET"] not in out and QUEUE_TOKEN not in out


async def test_status_decides_from_what_verda_holds_not_from_a_stale_state_file(cli_env, monkeypatch, tmp_path,
                                                                               capsys):
    """The state file remembers 3 replicas; Verda holds 0 and the queue is empty. Before: `status` showed the
    decision of 3 the run would no longer make (reason hold_until_billing_boundary)."""
    state_file = tmp_path / "state.json"
    save_policy_state(state_file, PolicyState(applied=3))
    monkeypatch.setenv("SCALER_STATE_FILE", str(state_file))
    assert await cli("status", "--json") == 0
    decision = json.loads(capsys.readouterr().out)["decision"]
    assert (decision["current"], decision["desired"]) == (0, 0)


async def test_a_daily_budget_without_a_file_to_keep_its_spend_is_warned_of(cli_env, monkeypatch, tmp_path, capfd):
    """Without SCALER_STATE_FILE a restart forgets the day's spend: a $20 budget, restarted after $13.42, had spent
    $24.92 two hours later. Before, nothing said so."""
    monkeypatch.setenv("SCALER_MAX_SPEND_PER_DAY", "150")
    assert await cli("once") == 0
    assert '"budget_spend_not_kept"' in capfd.readouterr().err
    monkeypatch.setenv("SCALER_STATE_FILE", str(tmp_path / "state.json"))
    assert await cli("once") == 0
    assert "budget_spend_not_kept" not in capfd.readouterr().err


async def test_a_setting_the_wait_target_planner_does_not_read_is_warned_of_when_set(cli_env, monkeypatch, capfd):
    """SCALER_IDLE_TO_ZERO_S=1800, set to keep a replica warm, did nothing beside the default wait target, unsaid
    (the demo's replica went to zero 0.95 s idle with 600 s set). The cooldown is read here: not billing-aware."""

    def ignored() -> list[str]:
        lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
        return [line["setting"] for line in lines if line["event"] == "setting_ignored"]

    assert await cli("once", "--dry-run") == 0
    assert ignored() == [], "not set: nothing to say"
    monkeypatch.setenv("SCALER_IDLE_TO_ZERO_S", "1800")
    monkeypatch.setenv("SCALER_STABILIZATION_WINDOW_S", "300")
    monkeypatch.setenv("SCALER_ACTIVATION_MAX_WAIT_S", "60")
    monkeypatch.setenv("SCALER_SCALE_DOWN_COOLDOWN_S", "60")
    in_flight_rule_only = ["SCALER_IDLE_TO_ZERO_S", "SCALER_STABILIZATION_WINDOW_S", "SCALER_ACTIVATION_MAX_WAIT_S"]
    for command in (("once", "--dry-run"), ("once",)):
        assert await cli(*command) == 0
        assert ignored() == in_flight_rule_only
    monkeypatch.setenv("SCALER_BILLING_AWARE", "true")
    assert await cli("once", "--dry-run") == 0
    assert ignored() == [*in_flight_rule_only, "SCALER_SCALE_DOWN_COOLDOWN_S"]
    monkeypatch.setenv("SCALER_TARGET_WAIT_S", "none")
    assert await cli("once") == 0
    assert ignored() == [], "the in-flight rule reads them"


async def test_a_setting_the_in_flight_rule_does_not_read_is_warned_of_when_set(cli_env, monkeypatch, capfd):
    """SCALER_JOBS_PER_REPLICA=2 needs SCALER_TARGET_WAIT_S=none, and then SCALER_TIMETABLE pre-warmed nothing,
    unsaid: the in-flight rule does not read it."""
    monkeypatch.setenv("SCALER_TARGET_WAIT_S", "none")
    monkeypatch.setenv("SCALER_JOBS_PER_REPLICA", "2")
    monkeypatch.setenv("SCALER_TIMETABLE", "09:00-09:50*3")
    monkeypatch.setenv("SCALER_EARLY_RELEASE_S", "120")
    assert await cli("once", "--dry-run") == 0
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    ignored = [line for line in lines if line["event"] == "setting_ignored"]
    assert [line["setting"] for line in ignored] == ["SCALER_TIMETABLE", "SCALER_EARLY_RELEASE_S"]
    assert "SCALER_TARGET_WAIT_S" in ignored[0]["hint"]


async def test_a_password_in_the_queue_url_never_shows(cli_env, qm, monkeypatch, capsys):
    """`https://user:pass@…`: masked in `status --json` and in every log line, whatever carries it."""
    monkeypatch.setenv("QUEUE_MANAGER_URL", qm.url.replace("http://", "http://worker:url-pass-do-not-log@"))
    assert await cli("status", "--json") == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["queue"]["url"].startswith("http://***@127.0.0.1:")
    assert report["settings"]["queue_manager_url"].startswith("http://***@127.0.0.1:")
    assert "url-pass-do-not-log" not in out + err
    # The user name beside the password is no secret: masked, every "worker" read *** (comfyui-***-serverless).
    assert report["deployment"]["name"] == DEPLOYMENT and "worker" in DEPLOYMENT
    monkeypatch.setenv("QUEUE_MANAGER_URL", f"{qm.url}/?token=url-pass-do-not-log")
    await cli("status", "--json")  # the queue answers 404 to paths after a query; the URL is still shown
    out, err = capsys.readouterr()
    assert json.loads(out)["queue"]["url"].endswith("?token=***")
    assert "url-pass-do-not-log" not in out + err
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://worker:url-pass-do-not-log@127.0.0.1:9")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert await cli("once") == 1
    out, err = capsys.readouterr()
    assert "Scaling decision" in err and "url-pass-do-not-log" not in out + err


async def test_status_table_is_readable(cli_env, capsys):
    assert await cli("status") == 0
    out = capsys.readouterr().out
    assert "0 pending, 0 running" in out
    assert f"{DEPLOYMENT} (verda): healthy" in out


async def test_status_on_an_80_column_terminal_cuts_no_replica_s_cell(cli_env, qm, fake_verda, monkeypatch, capsys):
    """At 80 columns the replicas table cut ids as long as a UUID (Verda does not document its replicas' ids; the
    fake's are 16 characters): `9373b1e7-8a02-467b-bd20-…`, with their start to the microsecond beside them."""
    for _ in range(2):
        qm.store.submit("alice", WORKFLOW)
    assert await cli("once") == 0
    replicas = fake_verda.deployments[DEPLOYMENT].replicas
    for replica in replicas:
        replica.id = str(uuid.uuid4())
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    assert await cli("status") == 0
    text = capsys.readouterr().out
    assert "…" not in text, text
    starts = {line.split(":")[0].strip(): line for line in text.splitlines() if ": started_at" in line}
    assert set(starts) == {replica.id for replica in replicas}, text
    assert max(len(line) for line in text.splitlines()) <= 80, text


async def test_status_prints_what_peers_send_as_text_never_as_rich_markup(cli_env, qm, fake_verda, capsys):
    """Replica ids, error texts and names come from the providers and the queue: rich read `[/x]` in one as a
    closing tag and `status` died with MarkupError, and `[bold]` vanished from the id it was part of."""
    for _ in range(2):
        qm.store.submit("alice", WORKFLOW)
    assert await cli("once") == 0
    first, second = fake_verda.deployments[DEPLOYMENT].replicas
    first.id, second.id = "[bold]r-1", "r-2[/x]"
    capsys.readouterr()
    assert await cli("status") == 0
    out = capsys.readouterr().out
    assert "[bold]r-1" in out and "r-2[/x]" in out, out


async def test_status_on_an_80_column_terminal_folds_a_long_queue_url_instead_of_cutting_it(cli_env, qm, monkeypatch,
                                                                                             capsys):
    """A word longer than the overview's value column (a queue URL over ~61 characters) was cut to `…`."""
    url = f"{qm.url}/behind/a/reverse/proxy/with/a/long/prefix/for/the/queue-manager-of-the-workshop"
    monkeypatch.setenv("QUEUE_MANAGER_URL", url)
    monkeypatch.setenv("COLUMNS", "80")
    await cli("status")
    out = capsys.readouterr().out
    assert "…" not in out, out
    folded = "".join(line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 3)
    assert url in folded, out


async def test_stop_pins_zero_and_pauses_then_resume(cli_env, qm, fake_verda, verda_scaling):
    qm.store.submit("alice", WORKFLOW)
    assert await cli("once") == 0
    assert verda_scaling() == (1, 1)
    assert await cli("stop") == 0
    assert verda_scaling() == (0, 0)
    assert fake_verda.deployments[DEPLOYMENT].status == "paused"
    assert await cli("once") == 0, "a paused deployment is left alone"
    assert verda_scaling() == (0, 0)
    assert await cli("resume") == 0
    assert fake_verda.deployments[DEPLOYMENT].status == "healthy"
    assert await cli("once") == 0
    assert verda_scaling() == (1, 1)


async def test_run_takes_over_and_exits_cleanly_on_sigterm(cli_env, verda_scaling, scaling_patches, wait):
    env = {**os.environ, **cli_env, "SCALER_INTERVAL_S": "1"}
    async with running_scaler(env) as process:
        await wait(lambda: len(scaling_patches()) == 1, timeout=15)
        assert verda_scaling() == (0, 0)
        err = await sigterm_and_wait(process)
    assert process.returncode == 0
    assert b"scaler_stopped" in err
    assert cli_env["VERDA_CLIENT_SECRET"].encode() not in err


def _container_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


async def test_run_raises_its_open_file_limit_for_the_connections_its_metrics_server_may_hold(
    cli_env, scaling_patches, wait
):
    """The metrics server lets 1000 connections wait (common.waiting_connections); at a container's usual soft
    limit of 1024 open files, with none raised, the scaler could hold only about half of them."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open-file limit ({hard}) leaves no room above 1024")
    env = {**os.environ, **cli_env, "SCALER_INTERVAL_S": "1"}
    async with running_scaler(env, _container_file_limit) as process:
        await wait(lambda: len(scaling_patches()) == 1, timeout=15)
        err = await sigterm_and_wait(process)
    assert process.returncode == 0
    assert b"open_files_limit_raised" in err


async def test_a_price_list_of_the_wrong_shape_exits_1_saying_so_and_writes_nothing(
    cli_env, fake_verda, scaling_patches, capsys
):
    fake_verda.fail_next("/container-types", 200, body={"container_types": "H100 2.30"})
    assert await cli("once") == 1
    assert scaling_patches() == []
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [failed] = [entry for entry in logged if entry["event"] == "price_lookup_failed"]
    assert "SCALER_PRICE_PER_REPLICA_HOUR" in failed["hint"]


@pytest.mark.parametrize("price", ["NaN", "Infinity", "-2.30", "1e-320", "1e308"])  # 1e-320: every scale-up raised
async def test_a_price_that_is_no_price_exits_1_naming_it_and_writes_nothing(
    cli_env, fake_verda, scaling_patches, capsys, price
):
    h100 = {**CONTAINER_TYPES[0], "serverless_price": price}
    fake_verda.fail_next("/container-types", 200, body=[h100])
    assert await cli("once") == 1
    assert scaling_patches() == []
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [failed] = [entry for entry in logged if entry["event"] == "price_lookup_failed"]
    assert f"the price list answered {float(price)!r} an hour" in failed["error"]


async def test_a_metrics_port_that_cannot_be_bound_exits_1_naming_the_settings(cli_env, scaling_patches):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = {**os.environ, **cli_env, "SCALER_METRICS_HOST": "127.0.0.1", "SCALER_METRICS_PORT": port}
        async with running_scaler(env) as process:
            async with asyncio.timeout(30):
                _, err = await process.communicate()
    assert process.returncode == 1
    logged = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    [failed] = [entry for entry in logged if entry["event"] == "metrics_server_failed"]
    assert "SCALER_METRICS_PORT" in failed["hint"] and "SCALER_METRICS_HOST" in failed["hint"]
    assert b"Traceback" not in err
    assert scaling_patches() == [], "nothing is decided without the metrics it was asked to serve"


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".example"])
async def test_a_metrics_host_that_is_no_host_name_exits_2_naming_it(cli_env, scaling_patches, host):
    """An empty or over-long label in SCALER_METRICS_HOST failed in IDNA encoding (UnicodeError), a traceback; then
    `metrics_server_failed` once /metrics started (exit 1); now the settings refuse it."""
    env = {**os.environ, **cli_env, "SCALER_METRICS_HOST": host, "SCALER_METRICS_PORT": "1"}
    async with running_scaler(env) as process:
        async with asyncio.timeout(30):
            _, err = await process.communicate()
    assert process.returncode == 2
    assert "SCALER_METRICS_HOST: cannot listen on" in err.decode()
    assert b"Traceback" not in err
    assert scaling_patches() == []


@pytest.mark.parametrize(("lead", "interval"), [("0", "15"), ("10", "15"), ("30", "60")])
def test_a_scale_down_lead_shorter_than_a_tick_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lead: str, interval: str
) -> None:
    """Ticks keep their phase to the billing boundaries, so a lead shorter than a tick can miss every one: with
    the in-flight rule, a replica started 12 s after a tick, at a 10 s lead and 15 s ticks, was never released
    (4 h of ticks through decide)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SCALER_BACKEND", "local")
    monkeypatch.setenv("SCALER_SCALE_DOWN_LEAD_S", lead)
    monkeypatch.setenv("SCALER_INTERVAL_S", interval)
    with pytest.raises(ConfigError, match=r"SCALER_SCALE_DOWN_LEAD_S \(\d+\) must be >= SCALER_INTERVAL_S"):
        load_settings()
    monkeypatch.setenv("SCALER_BILLING_AWARE", "false")
    assert load_settings().scale_down_lead_s == float(lead), "without billing awareness the lead is not used"
    monkeypatch.delenv("SCALER_BILLING_AWARE")
    monkeypatch.setenv("SCALER_SCALE_DOWN_LEAD_S", interval)
    assert load_settings().scale_down_lead_s == float(interval)


# Settings `stop` does not read, broken each in its own way; pydantic runs the checks across settings only once
# every setting passed its own, so they are two cases.
BROKEN_ONE_BY_ONE = {"QUEUE_MANAGER_URL": None, "SCALER_TARGET_WAIT_S": "soon", "LOG_FORMAT": "xml"}
BROKEN_ACROSS = {  # a budget that cannot pay for the floor; a lead the ticks can miss
    "SCALER_MIN_REPLICAS": "2", "SCALER_MAX_SPEND_PER_HOUR": "0", "SCALER_SCALE_DOWN_LEAD_S": "1",
    "SCALER_BILLING_AWARE": "true",
}


def _break(monkeypatch, settings: dict[str, str | None]) -> None:
    for name, value in settings.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)


@pytest.mark.parametrize(("broken", "named"), [
    (BROKEN_ONE_BY_ONE, BROKEN_ONE_BY_ONE),
    (BROKEN_ACROSS, ["SCALER_MAX_SPEND_PER_HOUR", "SCALER_SCALE_DOWN_LEAD_S"]),
])
async def test_stop_works_when_settings_it_does_not_read_are_invalid(
    cli_env, qm, fake_verda, verda_scaling, monkeypatch, capsys, broken, named
):
    """Before, at 2 a.m. a typo in a policy knob made the kill switch refuse to start: the bill ran on."""
    qm.store.submit("alice", WORKFLOW)
    assert await cli("once") == 0
    assert verda_scaling() == (1, 1)
    _break(monkeypatch, broken)
    capsys.readouterr()
    assert await cli("stop") == 0
    assert verda_scaling() == (0, 0)
    assert fake_verda.deployments[DEPLOYMENT].status == "paused"
    err = capsys.readouterr().err
    for name in named:
        assert name in err, name
    assert "the kill switch reads none of those" in err
    assert cli_env["VERDA_CLIENT_SECRET"] not in err
    for command in ("once", "status", "resume"):
        assert await cli(command) == 2, f"{command} still refuses the invalid configuration"
    assert fake_verda.deployments[DEPLOYMENT].status == "paused"


@pytest.mark.parametrize(
    ("name", "value"),
    [("VERDA_CLIENT_SECRET", None), ("VERDA_API_URL", "not a url"), ("SCALER_BACKEND", "kubernetes"),
     ("VERDA_DEPLOYMENT_NAME", "Bad Name!")],
)
async def test_stop_refuses_a_setting_it_reads_naming_it(
    cli_env, fake_verda, verda_scaling, monkeypatch, capsys, name, value
):
    _break(monkeypatch, {**BROKEN_ONE_BY_ONE, name: value})
    assert await cli("stop") == 2
    err = capsys.readouterr().err
    assert name in err
    assert fake_verda.deployments[DEPLOYMENT].status != "paused"


@pytest.mark.parametrize(("command", "says"), [
    ("once", "`comfy-scaler status` shows the decision, `comfy-scaler run` applies it"),
    ("stop", "stop that process (Ctrl-C) to stop them"),
    ("resume", "the local backend is never paused"),
])
def test_a_command_the_local_backend_cannot_serve_says_what_to_run_instead(
    monkeypatch, tmp_path, capsys, restore_logging, command, says
):
    """`once --dry-run` with SCALER_BACKEND=local answered 'stop that process (Ctrl-C) to stop them'."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SCALER_BACKEND", "local")
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{command}: ") and says in err


@pytest.mark.parametrize("command", ["once", "run"])
async def test_a_state_file_that_cannot_be_read_stops_the_scaler_before_it_decides(
    cli_env, qm, verda_scaling, scaling_patches, monkeypatch, tmp_path, capsys, command
):
    """Not corrupt, only unreadable (here a directory; a file of another user's fails the same way): the scaler
    says which setting and why, and exits 1 before it decides anything, leaving the file as it is."""
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("SCALER_STATE_FILE", str(tmp_path / "state"))
    qm.store.submit("alice", WORKFLOW)
    assert await cli(command) == 1
    err = capsys.readouterr().err
    state = tmp_path / "state"
    assert f"{command}: SCALER_STATE_FILE {state} cannot be read (IsADirectoryError: Is a directory)" in err
    assert scaling_patches() == []
    assert [p.name for p in tmp_path.iterdir()] == ["state"]
