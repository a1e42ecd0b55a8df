"""`comfy-scaler status` of a fleet tells what the running scaler does: the kill switch, the providers it degraded.

`status` is a process of its own (a dry run): it must read what the running scaler left in SCALER_LEDGER_FILE
and its kill switch file, never write to a provider, and say plainly when it cannot know.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from demo.providers import POD_BODY
from scaler.cli import main
from scaler.config import load_settings
from scaler.health_record import STOPPED, HealthRecord
from scaler.ledger import CostLedger
from scaler.policy import Replica
from scaler.providers.base import BackendView
from scaler.wiring import build_fleet
from standins.runpod import FakeRunPod
from standins.verda import FakeVerda

from .conftest import RUNPOD_KEY, operator_env_with, running_scaler, sigterm_and_wait

GPU = POD_BODY["gpu"]["id"]


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


@pytest.fixture
def runpod_fleet_env(cli_env, monkeypatch, fake_runpod: FakeRunPod, tmp_path: Path) -> dict[str, str]:
    """The operator's environment with RunPod (cheaper) and Verda as a fleet, and a ledger file."""
    return operator_env_with(cli_env, monkeypatch, {
        "SCALER_PROVIDERS": "runpod,verda",
        "RUNPOD_API_KEY": RUNPOD_KEY,
        "RUNPOD_API_URL": fake_runpod.url,
        "RUNPOD_HEALTH_URL": fake_runpod.health_url,  # the pods' /health through the stand-in's proxy
        "RUNPOD_VOLUME_ID": "vol-demo",
        "RUNPOD_DATA_CENTER_IDS": "US-TX-3",
        "RUNPOD_GPU": GPU,
        "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.1.0",
        "SCALER_RUNPOD_PRICE_PER_HOUR": "0.44",
        "SCALER_VERDA_PRICE_PER_HOUR": "2.99",
        "SCALER_LEDGER_FILE": str(tmp_path / "ledger.json"),
        "SCALER_ALERT_DRY_RUN": "true",
    })


def writes(fake_runpod: FakeRunPod, fake_verda: FakeVerda) -> int:
    """Every request but a read (or Verda's token) either provider has had."""
    requests = [*fake_runpod.requests, *fake_verda.requests]
    return sum(1 for r in requests if r.method != "GET" and not r.path.endswith("/oauth2/token"))


async def test_status_of_a_fleet_reports_the_kill_switch_as_the_running_scaler_holds_it(
    runpod_fleet_env, qm, fake_runpod: FakeRunPod, fake_verda: FakeVerda, tmp_path, capsys
):
    """Drill: RunPod and Verda, 2 jobs waiting, `comfy-scaler stop`: the running scaler held every provider at 0
    (`hold_paused`), and `status` printed `change 0 → 1: wake_from_zero`, deployment `healthy`: RunPod has no
    paused state a fresh process could read, and the dry run did not look at the kill switch file."""
    for _ in range(2):
        qm.store.submit("alice", {"1": {"class_type": "Noop", "inputs": {}}})
    assert await cli("stop") == 0
    stop_file = tmp_path / "ledger.json.stopped"
    assert stop_file.exists()
    written, ledger = writes(fake_runpod, fake_verda), (tmp_path / "ledger.json").read_bytes()
    capsys.readouterr()

    assert await cli("status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queue"]["pending_jobs"] == 2
    decision = report["decision"]
    assert (decision["reason"], decision["desired"], decision["changed"]) == ("hold_paused", 0, False), decision
    assert report["deployment"]["status"] == "paused"
    assert report["fleet"]["kill_switch"] == str(stop_file)

    assert await cli("status") == 0
    out = capsys.readouterr().out
    assert "keep 0 → 0: hold_paused" in out and "kill switch on" in out, out

    assert stop_file.exists(), "status only reports the kill switch"
    assert writes(fake_runpod, fake_verda) == written, "status wrote to a provider"
    assert fake_runpod.live_pods() == []
    assert (tmp_path / "ledger.json").read_bytes() == ledger, "status wrote the ledger file"

    assert await cli("resume") == 0
    capsys.readouterr()
    assert await cli("status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decision"]["reason"] == "wake_from_zero" and report["fleet"]["kill_switch"] is None


# --- which provider the running scaler degraded ------------------------------------------------------------------


async def test_status_shows_the_provider_the_running_scaler_degraded_why_and_until_when(
    runpod_fleet_env, fake_runpod: FakeRunPod, fake_verda: FakeVerda, capsys
):
    """Drill: RunPod out of capacity, the running scaler degraded it (quota_reached) and fell back to Verda;
    `status`, a fresh fleet that never asked RunPod for a pod, showed RunPod `healthy`, its degraded column empty."""
    fake_runpod.capacity[GPU] = 1
    running = await build_fleet(load_settings())  # the running scaler's fleet, as `comfy-scaler run` builds it
    try:
        await running.observe()
        await running.apply(3)  # RunPod is cheaper: all three asked of it; it places one and refuses the rest
        await running.observe()
        assert running.state.health["runpod"].degraded == "quota_reached"
        retry_at = running.state.health["runpod"].retry_at
        capsys.readouterr()

        assert await cli("status", "--json") == 0
        report = json.loads(capsys.readouterr().out)
        runpod, verda = report["fleet"]["providers"]["runpod"], report["fleet"]["providers"]["verda"]
        assert runpod["status"] == "healthy", "what a fresh read of RunPod says: the refusal is not listed"
        assert runpod["degraded"] == "quota_reached"
        assert runpod["degraded_detail"] == "provider reports quota_reached"
        assert runpod["retry_at"] == datetime.fromtimestamp(retry_at, UTC).isoformat(timespec="seconds")
        assert 0 < runpod["retry_in_s"] <= 300  # SCALER_FALLBACK_RETRY_S's default: the first back-off
        assert verda["degraded"] is None
        health = report["fleet"]["health"]
        assert health["known"] and health["unknown"] is None and health["age_s"] is not None

        assert await cli("status") == 0
        out = capsys.readouterr().out
        assert "quota_reached: provider reports quota_reached; back-off until" in out, out
        assert "as the running scaler saved it at" in out
    finally:
        await running.aclose()


def save_ledger(path: Path, health: object) -> CostLedger:
    ledger = CostLedger()
    ledger.buckets["verda"] = {int(time.time() // 60 * 60): 0.5}
    ledger.health = health
    ledger.save(path)
    return ledger


@pytest.mark.parametrize(("health", "said"), [
    (None, "no record in SCALER_LEDGER_FILE"),  # a ledger saved before the record was (old format), or by `stop`
    ("not a record", "unreadable"),
    ({"at": "yesterday", "degraded": {}}, "unreadable"),
    ({"at": 1.0, "degraded": []}, "unreadable"),
    ({"at": 4e9, "degraded": {}}, "ahead of this machine's clock"),
    ({"at": "now", "degraded": {"runpod": {"reason": "errors", "retry_at": 1e300}}}, "unreadable"),
    ({"at": "stale", "degraded": {"runpod": {"reason": "quota_reached", "retry_at": None}}}, "s old (more than"),
], ids=["old-format", "not-a-dict", "at-not-a-time", "degraded-not-a-dict", "from-the-future", "retry-at-absurd",
        "stale"])
async def test_status_says_it_cannot_know_without_a_fresh_readable_record(
    runpod_fleet_env, tmp_path, capsys, health, said
):
    """Not healthy: unknown, and why. A record of the wrong shape costs neither `status` nor the day's spend."""
    if isinstance(health, dict) and health["at"] in ("stale", "now"):
        # "stale": no `comfy-scaler run` has saved for an hour
        health = {**health, "at": time.time() - (3600 if health["at"] == "stale" else 0)}
    path = tmp_path / "ledger.json"
    save_ledger(path, health)
    assert await cli("status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert {row["degraded"] for row in report["fleet"]["providers"].values()} == {"unknown"}
    assert not report["fleet"]["health"]["known"] and said in report["fleet"]["health"]["unknown"]
    assert report["fleet"]["spend"]["verda"]["last_hour"] == 0.5, "the ledger was read, not set aside"
    assert json.loads(path.read_text())["health"] == health, "status wrote the ledger file"

    assert await cli("status") == 0
    assert "degraded: unknown" in capsys.readouterr().out

    running = await build_fleet(load_settings())  # `run` starts from it, and writes its own record over it
    try:
        assert running.ledger.spent_since(time.time() - 3600, "verda") == 0.5
        await running.observe()
        record = json.loads(path.read_text())["health"]
        assert record["degraded"] == {} and record["at"] <= time.time()
    finally:
        await running.aclose()


async def test_status_without_a_ledger_file_says_it_cannot_know(runpod_fleet_env, monkeypatch, capsys):
    monkeypatch.delenv("SCALER_LEDGER_FILE")
    assert await cli("status", "--json") == 0
    health = json.loads(capsys.readouterr().out)["fleet"]["health"]
    assert not health["known"] and "no SCALER_LEDGER_FILE" in health["unknown"]


def saved_health(path: Path) -> dict:
    try:
        return json.loads(path.read_text()).get("health") or {}
    except (OSError, ValueError):
        return {}


async def test_the_drill_status_beside_a_running_scaler_shows_its_fallback_then_its_kill_switch(
    runpod_fleet_env, qm, fake_runpod: FakeRunPod, tmp_path, capsys, wait
):
    """The morning's drill end to end, `comfy-scaler run` as its own process: RunPod (cheaper) out of capacity
    after one pod, the running scaler degrades it and falls back to Verda; then `comfy-scaler stop`."""
    fake_runpod.capacity[GPU] = 1
    for _ in range(3):
        qm.store.submit("alice", {"1": {"class_type": "Noop", "inputs": {}}})
    env = {**os.environ, **runpod_fleet_env, "SCALER_INTERVAL_S": "1", "SCALER_IDLE_TO_ZERO_S": "0"}
    ledger = tmp_path / "ledger.json"
    async with running_scaler(env) as process:
        await wait(lambda: "runpod" in saved_health(ledger).get("degraded", {}), timeout=30)
        capsys.readouterr()
        assert await cli("status", "--json") == 0
        report = json.loads(capsys.readouterr().out)
        assert report["fleet"]["providers"]["runpod"]["degraded"] == "quota_reached"
        assert report["fleet"]["providers"]["verda"]["degraded"] is None
        assert report["fleet"]["health"]["known"]

        assert await cli("stop") == 0
        stopped_at = time.time()
        # Two saves since the stop: the second one's tick began after it, and read the kill switch file.
        await wait(lambda: saved_health(ledger).get("at", 0) > stopped_at, timeout=30)
        first = saved_health(ledger)["at"]
        await wait(lambda: saved_health(ledger).get("at", 0) > first, timeout=30)
        assert fake_runpod.live_pods() == []
        capsys.readouterr()
        assert await cli("status", "--json") == 0
        report = json.loads(capsys.readouterr().out)
        assert report["decision"]["reason"] == "hold_paused" and report["deployment"]["status"] == "paused"
        err = await sigterm_and_wait(process)
    assert process.returncode == 0, err.decode()[-2000:]
    assert b"kill_switch_seen" in err


async def test_status_moves_and_removes_nothing_an_unreadable_file_or_a_killed_write_left(
    runpod_fleet_env, qm, tmp_path, monkeypatch, capsys
):
    """`status` is a dry run: it saves nothing, so it must not tidy either. Before, it set an unreadable ledger or
    state file aside as `<name>.corrupt-<time>` and removed the scratch files of killed writes, under the feet
    of the running scaler that owns them."""
    monkeypatch.setenv("SCALER_STATE_FILE", str(tmp_path / "scaler.json"))
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    folder = {
        "ledger.json": '{"buckets": {"runpod": {"1": 0.5',
        "scaler.json": '{"applied": "two"}',
        f".ledger.json.{dead.pid}.0badc0de.tmp": "a killed write",
        f".scaler.json.{dead.pid}.0badc0de.tmp": "a killed write",
    }
    for name, text in folder.items():
        (tmp_path / name).write_text(text)
    before = {path.name: path.read_text() for path in tmp_path.iterdir() if path.is_file()}
    assert await cli("status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["fleet"]["providers"].keys() == {"runpod", "verda"}
    assert {path.name: path.read_text() for path in tmp_path.iterdir() if path.is_file()} == before


async def test_a_back_off_just_ended_reads_due_now_never_a_negative_wait(runpod_fleet_env, tmp_path, capsys):
    """Drill: between the end of RunPod's back-off and the running scaler's next tick (up to SCALER_INTERVAL_S),
    `status` read `retry_in_s: -3` and `back-off until … (in -3 s)`."""
    now = time.time()
    save_ledger(tmp_path / "ledger.json", {"at": now - 5, "degraded": {"runpod": {
        "reason": "quota_reached", "detail": "provider reports quota_reached", "since": now - 305,
        "retry_at": now - 3}}})
    assert await cli("status", "--json") == 0
    runpod = json.loads(capsys.readouterr().out)["fleet"]["providers"]["runpod"]
    assert (runpod["degraded"], runpod["retry_in_s"]) == ("quota_reached", 0)

    assert await cli("status") == 0
    out = capsys.readouterr().out
    assert "(due now)" in out and "in -" not in out, out


async def test_the_overview_of_a_fleet_names_each_provider_its_kind_and_price(runpod_fleet_env, capsys):
    """Drill: with SCALER_PROVIDERS=runpod,verda the overview read `deployment comfyui-… (verda): healthy` and
    `price 0.0/h (per provider)`: one Verda deployment, free, as if no fleet ran."""
    assert await cli("status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["deployment"]["backend"] == "fleet"
    assert report["deployment"]["providers"] == [
        {"name": "runpod", "kind": "RunPod pods", "price_per_hour": 0.44},
        {"name": "verda", "kind": "Verda containers", "price_per_hour": 2.99},
    ]
    assert (report["price_per_replica_hour"], report["price_source"]) == (None, "per provider")

    assert await cli("status") == 0
    out = capsys.readouterr().out
    assert "(verda)" not in out and "0.0/h" not in out, out
    assert "RunPod pods, 0.44/h" in out and "Verda containers, 2.99/h" in out, out


def creates(fake_runpod: FakeRunPod) -> int:
    return sum(1 for r in fake_runpod.requests if r.method == "POST")


async def test_a_restarted_scaler_keeps_the_degradation_its_predecessor_recorded_until_its_back_off_ends(
    runpod_fleet_env, fake_runpod: FakeRunPod, fake_verda: FakeVerda, tmp_path, capsys
):
    """Drill: RunPod out of capacity, degraded (quota_reached), the scaler restarted: its first save recorded
    "nothing degraded", `status` showed RunPod in service again, and the next scale-up asked RunPod for pods it
    had just refused."""
    fake_runpod.capacity[GPU] = 1
    first = await build_fleet(load_settings())
    try:
        await first.observe()
        await first.apply(3)
        await first.observe()
        assert first.state.health["runpod"].degraded == "quota_reached"
        retry_at, backoff_s = first.state.health["runpod"].retry_at, first.state.health["runpod"].backoff_s
    finally:
        await first.aclose()

    asked = creates(fake_runpod)
    restarted = await build_fleet(load_settings())
    try:
        assert restarted.state.health["runpod"].degraded == "quota_reached"
        assert (restarted.state.health["runpod"].retry_at, restarted.state.health["runpod"].backoff_s) == (
            retry_at, backoff_s), "the same back-off, doubling on a relapse as before"
        await restarted.observe()  # its first save
        record = json.loads((tmp_path / "ledger.json").read_text())["health"]
        assert record["degraded"]["runpod"]["reason"] == "quota_reached"
        assert record["degraded"]["runpod"]["retry_at"] == retry_at
        await restarted.apply(3)
        assert creates(fake_runpod) == asked, "RunPod was asked for pods during its back-off"
        assert restarted.state.targets["verda"] >= 2
        capsys.readouterr()
        assert await cli("status", "--json") == 0
        runpod = json.loads(capsys.readouterr().out)["fleet"]["providers"]["runpod"]
        assert runpod["degraded"] == "quota_reached" and runpod["retry_in_s"] > 0
    finally:
        await restarted.aclose()


@pytest.mark.parametrize(("degraded", "why"), [
    ({"reason": "quota_reached", "since": 1.0, "retry_at": 2.0}, "back-off over"),
    ({"reason": "paused", "since": "now", "retry_at": "later"}, "a pause is read again"),
    ({"reason": "crash_loop", "since": "now", "retry_at": "later"}, "its local workers died with the scaler"),
    ({"reason": "struck_by_lightning", "since": "now", "retry_at": "later"}, "not a reason of ours"),
])
async def test_a_restarted_scaler_keeps_no_degradation_that_is_over_or_not_its_own(
    runpod_fleet_env, tmp_path, degraded, why
):
    now = time.time()
    times = {"now": now, "later": now + 300}
    degraded = {key: times.get(value, value) for key, value in degraded.items()}
    save_ledger(tmp_path / "ledger.json", {"at": now - 1, "degraded": {"runpod": degraded}})
    restarted = await build_fleet(load_settings())
    try:
        assert restarted.state.health.get("runpod") is None, why
    finally:
        await restarted.aclose()


@pytest.fixture
def local_fleet_env(fleet_env, monkeypatch) -> dict[str, str]:
    """`local` (free: placed first) and the Verda stand-in; 2 replicas wanted. COLUMNS: no cell of the table cut."""
    return operator_env_with(fleet_env, monkeypatch, {
        "SCALER_PROVIDERS": "local,verda", "SCALER_MIN_REPLICAS": "2", "COLUMNS": "200",
    })


TWO_LOCAL_WORKERS = BackendView((Replica("local-worker-1", 1.0), Replica("local-worker-2", 1.0)), "healthy", ready=2)


def record_local_workers(path: Path, view: BackendView, age_s: float) -> None:
    """The record `comfy-scaler run` saves in SCALER_LEDGER_FILE, its `local` workers read ``age_s`` ago."""
    save_ledger(path, HealthRecord.of({}, {}, time.time() - age_s, views={"local": view}).to_json())


PROVIDER_COLUMNS = ("provider", "price/h", "billing", "max", "live", "ready", "status", "read", "degraded")


async def status_now(capsys) -> tuple[dict, dict[str, str], dict[str, dict[str, str]], str]:
    """`status --json` and `status`: the report; from the text, the overview's values and each provider's row by
    column; and the text."""
    assert await cli("status", "--json") == 0, "Verda was read"
    report = json.loads(capsys.readouterr().out)
    assert await cli("status") == 0
    text = capsys.readouterr().out
    overview, providers = {}, {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 2 and cells[0]:
            overview[cells[0]] = cells[1]
        elif len(cells) == len(PROVIDER_COLUMNS) and cells[0]:
            providers[cells[0]] = dict(zip(PROVIDER_COLUMNS, cells, strict=True))
    return report, overview, providers, text


async def test_status_of_a_fleet_counts_the_local_workers_the_running_scaler_read(local_fleet_env, tmp_path, capsys):
    """A fresh `local` backend in `status` listed none: 0 live and `change 0 → 2` while the running scaler kept 2."""
    record_local_workers(tmp_path / "ledger.json", TWO_LOCAL_WORKERS, age_s=1)
    report, overview, providers, text = await status_now(capsys)
    local = report["fleet"]["providers"]["local"]
    assert (local["live"], local["ready"], local["status"]) == (2, 2, "healthy"), local
    assert local["read_age_s"] >= 1 and local["read_at"]
    assert (report["decision"]["current"], report["decision"]["desired"]) == (2, 2)
    cells = providers["local"]
    assert (cells["live"], cells["ready"], cells["status"]) == ("2", "2", "healthy")
    assert re.fullmatch(r"\d+\.\d s ago", cells["read"]), cells
    assert providers["verda"]["read"] == "now", "Verda is read by `status` itself"
    assert overview["replicas"] == "2" and overview["decision"] == "keep 2 → 2: steady", text
    assert "unknown on" not in text


@pytest.mark.parametrize("ledger", ["stale", "no record"])
async def test_status_of_a_fleet_shows_local_unknown_and_counts_none_of_it_without_a_fresh_record(
    local_fleet_env, tmp_path, capsys, ledger
):
    """A scaler killed an hour ago (its workers died with it), or none ever ran: not 0, not 2 workers, unknown."""
    if ledger == "stale":
        record_local_workers(tmp_path / "ledger.json", TWO_LOCAL_WORKERS, age_s=3600)
    else:
        save_ledger(tmp_path / "ledger.json", None)
    report, overview, providers, text = await status_now(capsys)
    local = report["fleet"]["providers"]["local"]
    assert {local[key] for key in ("live", "ready", "status", "read_at", "read_age_s")} == {None}, local
    why = "s old (more than" if ledger == "stale" else "no record in SCALER_LEDGER_FILE"
    assert why in local["error"]
    assert report["decision"]["current"] == 0, "none of the recorded workers counted"
    cells = providers["local"]
    assert (cells["live"], cells["ready"], cells["status"], cells["read"]) == ("unknown", "unknown", "unknown", "-")
    assert overview["replicas"] == "0 + unknown on local (not counted)", text
    said = [line for line in text.splitlines() if line.startswith("+ unknown on local (not counted")]
    assert len(said) == 1 and why in said[0], text


async def test_status_of_a_fleet_believes_a_stopped_scaler_s_record_however_old(local_fleet_env, tmp_path, capsys):
    """Nothing restarts the workers of a scaler that stopped: its last word stands a day later."""
    record_local_workers(tmp_path / "ledger.json", BackendView((), STOPPED), age_s=86_400)
    report, overview, providers, text = await status_now(capsys)
    local = report["fleet"]["providers"]["local"]
    assert (local["live"], local["ready"], local["status"], local["error"]) == (0, 0, STOPPED, None), local
    assert local["read_age_s"] >= 86_400
    cells = providers["local"]
    assert (cells["live"], cells["status"]) == ("0", STOPPED)
    assert re.fullmatch(r"86\d\d\d\.\d s ago", cells["read"]), cells
    assert overview["replicas"] == "0" and "unknown on" not in text, text


async def test_status_of_a_fleet_on_an_80_column_terminal_cuts_no_provider_s_cell(
    local_fleet_env, tmp_path, monkeypatch, capsys
):
    """At 80 columns the providers table showed `healt…`, `unkno…`: too narrow for it, a line per provider."""
    monkeypatch.setenv("COLUMNS", "80")
    record_local_workers(tmp_path / "ledger.json", TWO_LOCAL_WORKERS, age_s=1)
    assert await cli("status") == 0
    text = capsys.readouterr().out
    assert "…" not in text, text
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if line.startswith("  ")}
    local_line = r"  local: status healthy, live 2, ready 2, read \d+\.\d s ago; 0\.00/h, max 2"
    assert re.match(local_line, lines["local"]), text
    assert lines["verda"].startswith("  verda: status healthy, live 0, ready 0, read now; 2.30/h, max 5"), text
    assert max(len(line) for line in text.splitlines()) <= 80, text
