"""FleetBackend over real providers: the fake Verda API on loopback and local worker processes."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from scaler.alerts import AlertBook, AlertSender
from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.fleet import FleetBackend, Member
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING, CostLedger, SavedFileUnreadable
from scaler.loop import ScalerLoop
from scaler.metrics import ProviderMetrics, ScalerMetrics
from scaler.policy import ScalingConfig
from scaler.providers import LocalBackend, VerdaBackend
from standins.verda import FakeVerda

from ..conftest import ManualClock
from .conftest import DEPLOYMENT, tick_with_the_clock_two_days_ahead_and_back
from .test_loop import ten_minutes_of_failed_saves_then_two_that_work

SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")
STATUS_PATH = f"/container-deployments/{DEPLOYMENT}/status"


def metric(metrics: ScalerMetrics, line_start: str) -> float:
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def metrics() -> ScalerMetrics:
    return ScalerMetrics()


@pytest.fixture
async def fleet(make_verda_client, wall, metrics, tmp_path: Path):
    """Verda first (cheaper), local processes as the fallback (priced like RunPod, billed per second)."""
    local = LocalBackend(dict(os.environ), command=SLEEPER, clock=wall, stop_timeout_s=2.0)
    config = AllocatorConfig(
        providers=(
            ProviderSpec("local", max_replicas=3, price_per_hour=2.99, commit_s=15.0),
            ProviderSpec("verda", max_replicas=3, price_per_hour=2.30),
        ),
        error_ticks=2, start_deadline_s=120.0, retry_after_s=60.0,
    )
    members = [
        Member(config.providers[0], local, RUNPOD_BILLING),
        Member(config.providers[1], VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall), VERDA_BILLING),
    ]
    backend = FleetBackend(members, config, metrics=ProviderMetrics(metrics.registry), clock=wall,
                           ledger_file=tmp_path / "ledger.json")
    yield backend
    await backend.aclose()


async def test_quota_on_the_primary_falls_back_then_drains_back(fleet, fake_verda: FakeVerda, wall, metrics,
                                                                   verda_scaling, caplog):
    local = fleet.members["local"].backend
    fake_verda.set_status(DEPLOYMENT, "quota_reached")
    await fleet.observe()
    await fleet.apply(2)
    assert fleet.state.targets == {"verda": 0, "local": 2}
    assert len(local.pids) == 2
    assert verda_scaling() == (0, 0)
    assert fleet.last_allocation.fallback_engaged
    assert metric(metrics, "comfy_scaler_fallback_engaged") == 1
    assert metric(metrics, 'comfy_scaler_provider_degraded{provider="verda"}') == 1

    fake_verda.set_status(DEPLOYMENT, None)
    wall.advance(61)
    await fleet.observe()  # back-off over: Verda is asked again, the local replicas stay until Verda's are up
    assert verda_scaling() == (2, 2)
    assert fleet.state.targets == {"verda": 2, "local": 2}
    wall.advance(15)
    view = await fleet.observe()  # Verda lists both: the local ones are drained
    assert fleet.state.targets == {"verda": 2, "local": 0}
    assert metric(metrics, 'comfy_scaler_provider_moves_total{provider="local",reason="drain"}') == 1
    assert metric(metrics, 'comfy_scaler_provider_moves_total{provider="local",reason="fallback"}') == 1
    assert sorted(r.id.split("/")[0] for r in view.replicas) == ["local", "local", "verda", "verda"]
    view = await fleet.observe()
    assert [r.id.split("/")[0] for r in view.replicas] == ["verda", "verda"]
    assert metric(metrics, "comfy_scaler_fallback_engaged") == 0


async def test_errors_for_n_ticks_degrade_the_provider(fleet, fake_verda: FakeVerda, wall, verda_scaling):
    await fleet.observe()
    await fleet.apply(1)
    assert fleet.state.targets == {"verda": 1, "local": 0}
    fake_verda.fail_next(STATUS_PATH, 503, times=100)
    wall.advance(15)
    await fleet.observe()
    assert fleet.state.targets == {"verda": 1, "local": 0}, "one failed read is not a degradation"
    await fleet.apply(2)
    assert fleet.state.health["verda"].degraded is None, "nor is it when the loop writes at the same tick"
    assert fleet.state.targets == {"verda": 2, "local": 0}
    wall.advance(15)
    await fleet.observe()
    assert fleet.state.health["verda"].degraded == "errors"
    # Verda's replicas were never seen: they are not counted (local covers the whole need) and not cut either.
    assert fleet.state.targets == {"verda": 2, "local": 2}
    assert verda_scaling() == (2, 2)


async def test_a_provider_that_cannot_be_read_exports_no_replica_count(
    fleet, fake_verda: FakeVerda, wall, metrics, verda_scaling
):
    """Before: comfy_scaler_provider_replicas kept the count of the last read through the outage (1, as if known).
    Now: NaN until the provider answers again, then its count."""
    await fleet.observe()
    await fleet.apply(1)
    wall.advance(15)
    await fleet.observe()
    live = 'comfy_scaler_provider_replicas{provider="verda",state="live"}'
    assert metric(metrics, live) == 1
    fake_verda.fail_next(STATUS_PATH, 503, times=2)  # both attempts of the client
    wall.advance(15)
    await fleet.observe()
    assert math.isnan(metric(metrics, live))
    assert math.isnan(metric(metrics, 'comfy_scaler_provider_replicas{provider="verda",state="ready"}'))
    wall.advance(15)
    await fleet.observe()
    assert metric(metrics, live) == 1


async def test_the_ledger_charges_each_provider_by_its_rule_and_survives_a_restart(fleet, wall, tmp_path):
    await fleet.observe()
    await fleet.apply(2)
    wall.advance(1)
    await fleet.observe()
    verda_interval = round(2 * 2.30 / 6, 4)
    assert fleet.ledger.summary(wall())["verda"]["last_hour"] == verda_interval
    wall.advance(120)
    await fleet.observe()
    spend = fleet.ledger.summary(wall())
    assert spend["verda"]["last_hour"] == verda_interval, "the 10-minute interval is charged once"
    restored = CostLedger.load(tmp_path / "ledger.json")
    assert restored.summary(wall()) == spend


def test_ledger_per_second_and_interval_rules():
    ledger = CostLedger()
    replica = type("R", (), {"id": "a", "started_at": 0.0})()
    ledger.charge("runpod", [replica], 90.0, price_per_hour=3.6, rule=RUNPOD_BILLING)
    ledger.charge("runpod", [replica], 150.0, price_per_hour=3.6, rule=RUNPOD_BILLING)
    assert ledger.spent_since(-1, "runpod") == pytest.approx(0.15)  # 150 s at 0.001/s, each second once
    ledger.charge("verda", [replica], 601.0, price_per_hour=6.0, rule=VERDA_BILLING)
    assert ledger.spent_since(-1, "verda") == pytest.approx(2.0)  # two started 10-minute intervals
    assert ledger.spent_since(-1) == pytest.approx(2.15)


@pytest.mark.parametrize("content", [
    "{not json", "[" * 100_000, '{"buckets": {"verda": {"0": NaN}}, "billed": {}}',
    '{"buckets": {}, "billed": {"verda": {"r1@0": Infinity}}}',
    '{"buckets": {}, "billed": {}, "alerts": "budget_80"}', '{"buckets": {}, "billed": {}, "alerts": {"sent": [[1]]}}',
    b'\xff\xfe{\x00}\x00', b'{"buckets": {}, "billed": {}, "x": "\xe9"}',
    '{"buckets": {}, "billed": {}, "updated_at": NaN}',
    '{"buckets": {}, "billed": {}, "updated_at": "yesterday"}',
    '{"buckets": {"verda": {"1%s": 1}}, "billed": {}}' % ("0" * 4000),
    '{"version": "2", "buckets": {}, "billed": {}}', '{"version": 0, "buckets": {}, "billed": {}}',
], ids=["not-json", "nested-past-the-parser", "spend-nan", "billed-infinite", "alerts-text", "alert-kind-a-list",
        "utf-16", "latin-1", "updated-nan", "updated-as-text", "bucket-past-any-float", "version-as-text",
        "version-0"])
def test_an_unreadable_ledger_is_kept_aside_not_overwritten(tmp_path, content):
    """A NaN kept would make every spend sum NaN, and a budget compared with NaN caps nothing. Bytes that are not
    UTF-8 escaped as UnicodeDecodeError (every command crashed, the kill switch too); a time kept as text failed
    every charge after the start."""
    path = tmp_path / "ledger.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert CostLedger.load(path).spent_since(0) == 0
    assert not path.exists()
    assert [p.name.startswith("ledger.json.corrupt-") for p in tmp_path.iterdir()] == [True]


def test_a_ledger_of_a_newer_version_is_refused_naming_it_and_left_as_it_is(tmp_path):
    """Read as version 1, it was written back in the old shape at the first save, what the newer scaler kept in it
    lost without a word."""
    path = tmp_path / "ledger.json"
    content = '{"version": 2, "buckets": {"verda": {"0": 1.5}}, "billed": {}, "kept_by_version_2": {"a": 1}}'
    path.write_text(content)
    with pytest.raises(SavedFileUnreadable, match=r"written by a newer comfy-scaler \(ledger version 2; this one "
                                                  r"reads 1\); nothing was changed"):
        CostLedger.load(path)
    assert path.read_text() == content and [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


def test_two_unreadable_ledgers_set_aside_in_the_same_second_are_both_kept(tmp_path, monkeypatch):
    """The aside's name had whole seconds only: a second corrupt file within the same second replaced the first,
    and the evidence of what went wrong went with it."""
    monkeypatch.setattr("scaler.ledger.time.time", lambda: 1_800_000_000.5)
    path = tmp_path / "ledger.json"
    for content in ("first", "second", "third"):
        path.write_text(content)
        CostLedger.load(path)
    kept = sorted(p.read_text() for p in tmp_path.glob("ledger.json.corrupt-*"))
    assert kept == ["first", "second", "third"]


def test_a_ledger_s_times_are_read_back_as_numbers(tmp_path):
    """Kept as text, they failed every charge (the clock-step check) or every alert after the start."""
    path = tmp_path / "ledger.json"
    path.write_text('{"buckets": {}, "billed": {}, "updated_at": "5", "alerts": {"day": "86400"}}')
    ledger = CostLedger.load(path)
    assert (ledger.updated_at, ledger.alerts["day"]) == (5.0, 86400.0)


def test_a_count_saved_under_a_rule_it_cannot_be_dated_in_is_dropped_not_failing_every_charge(tmp_path):
    """2 intervals of 1e308 s end past any float: converting them to today's rule raised OverflowError at every
    charge. The replica is charged afresh instead."""
    path = tmp_path / "ledger.json"
    path.write_text('{"buckets": {}, "billed": {"verda": {"a@0.000": 2}}, '
                    '"rules": {"verda": {"interval_s": 1e308, "anchor": "started_at"}}}')
    ledger = CostLedger.load(path)
    replica = type("R", (), {"id": "a", "started_at": 0.0})()
    assert ledger.charge("verda", [replica], 601.0, price_per_hour=6.0, rule=VERDA_BILLING) == pytest.approx(2.0)


async def test_the_loop_drives_the_fleet_as_one_backend(fleet, queue, wall, verda_scaling):
    loop = ScalerLoop(ScalingConfig(max_replicas=4, price_per_replica_hour=0), fleet, queue, clock=wall)
    queue.pending = 4
    await loop.tick()
    assert fleet.state.targets == {"verda": 3, "local": 1}, "Verda (cheaper) to its max, the rest local"
    assert verda_scaling() == (3, 3)


async def test_a_fleet_s_spend_and_budgets_are_what_the_spend_alerts_and_the_dashboard_read(
    fleet, queue, wall, metrics
):
    """Before: in a fleet the policy prices nothing (fleet_policy_config), so comfy_scaler_estimated_spend stayed 0
    and comfy_scaler_budget was never set while the providers billed: ComfySpendOverBudget and ComfySpendNearBudget
    could not fire, and the dashboard's "Spend and budget" showed 0; the "Scaling decision" line said 0 too."""
    fleet.config = replace(fleet.config, max_spend_per_hour=9.0, max_spend_per_day=40.0)
    loop = ScalerLoop(fleet_policy_config_for_test(), fleet, queue, clock=wall, metrics=metrics)
    queue.pending = 2
    await loop.tick()
    wall.advance(15)
    with capture_logs() as logs:
        await loop.tick()
    sample = metrics.registry.get_sample_value
    billed = fleet.ledger.summary(wall())["total"]
    assert billed["last_day"] > 0
    [decision] = [entry["details"] for entry in logs if entry["event"] == "Scaling decision"]
    assert (decision["spend_last_hour"], decision["spend_last_day"]) == (billed["last_hour"], billed["last_day"])
    assert sample("comfy_scaler_estimated_spend", {"window": "day"}) == billed["last_day"]
    assert sample("comfy_scaler_estimated_spend", {"window": "hour"}) == billed["last_hour"]
    assert sample("comfy_scaler_budget", {"window": "day"}) == 40.0
    assert sample("comfy_scaler_budget", {"window": "hour"}) == 9.0


def fleet_policy_config_for_test() -> ScalingConfig:
    """What `comfy-scaler run` gives the loop of a fleet (scaler.wiring.fleet_policy_config): no price, no budget."""
    return ScalingConfig(max_replicas=4, price_per_replica_hour=0.0, max_spend_per_hour=None, max_spend_per_day=None)


async def test_a_kill_switch_seen_while_the_api_is_down_is_retried_until_it_lands(
    fleet, fake_verda: FakeVerda, wall, verda_scaling, tmp_path
):
    fleet.stop_file = tmp_path / "ledger.json.stopped"
    await fleet.observe()
    await fleet.apply(2)
    assert verda_scaling() == (2, 2)
    fleet.stop_file.write_text("stopped\n")
    scaling = f"/container-deployments/{DEPLOYMENT}/scaling"
    fake_verda.fail_next(scaling, 503, method="PATCH", times=2)  # both attempts of the client
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/pause", 503, times=2)
    wall.advance(15)
    await fleet.observe()
    assert verda_scaling() == (2, 2), "the API was down: nothing landed yet"
    wall.advance(15)
    view = await fleet.observe()
    assert verda_scaling() == (0, 0), "the kill switch is written again once the API answers"
    assert fake_verda.deployments[DEPLOYMENT].status == "paused"
    assert view.status == "paused"


@pytest.mark.parametrize("unreadable", [False, True])
async def test_a_kill_switch_that_is_a_dangling_symlink_or_cannot_be_looked_for_holds_every_provider_at_zero(
    fleet, fake_verda: FakeVerda, wall, verda_scaling, tmp_path, unreadable
):
    """A symlink to nothing read as "off": the replicas ran on, billed. A switch that could not be looked for
    (PermissionError in a folder that cannot be searched; here ENAMETOOLONG, which root meets too) failed every
    tick with scaler_tick_failed, the count left as it stood."""
    await fleet.observe()
    await fleet.apply(2)
    assert verda_scaling() == (2, 2)
    if unreadable:
        fleet.stop_file = tmp_path / ("ledger.json" + "x" * 250 + ".stopped")
    else:
        fleet.stop_file = tmp_path / "ledger.json.stopped"
        fleet.stop_file.symlink_to(tmp_path / "nowhere")
    with capture_logs() as logs:
        for _ in range(2):
            wall.advance(15)
            view = await fleet.observe()
    assert verda_scaling() == (0, 0) and fake_verda.deployments[DEPLOYMENT].status == "paused"
    assert view.status == "paused"
    said = [entry for entry in logs if entry["event"] == "kill_switch_unreadable"]
    assert len(said) == (1 if unreadable else 0), "said once, not at every tick"
    if unreadable:
        assert said[0]["log_level"] == "error" and str(fleet.stop_file) == said[0]["stop_file"]


async def test_a_ledger_that_cannot_be_saved_is_logged_and_the_fleet_still_scales(fleet, wall, verda_scaling, tmp_path):
    (tmp_path / "a-file").write_text("")
    fleet.ledger_file = tmp_path / "a-file" / "ledger.json"  # a full disk fails the same way
    with capture_logs() as logs:
        await fleet.observe()
        await fleet.apply(1)
        wall.advance(15)
        view = await fleet.observe()
    assert verda_scaling() == (1, 1) and len(view.replicas) == 1
    assert fleet.ledger.spent_since(wall() - 3600) > 0, "the charges are kept in memory"
    assert "cost_ledger_save_failed" in [entry["event"] for entry in logs if entry["log_level"] == "error"]


async def test_a_ledger_file_replaced_by_a_fifo_does_not_hold_the_save_for_good(fleet, tmp_path):
    """The save reads the ledger file when another process wrote it (`stop --all` books its alert there): a FIFO
    in its place held every save, and the tick with it, in the open for good. Now written over, as a file that
    cannot be read is."""
    fleet.alerts = AlertSender(None)
    path = tmp_path / "ledger.json"
    os.mkfifo(path)
    saving = threading.Thread(target=fleet.save, daemon=True)
    saving.start()
    saving.join(timeout=30)
    if saving.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # ends the read held in the open
        saving.join(timeout=30)
        pytest.fail("the save was held in the FIFO's open")
    assert path.is_file() and CostLedger.load(path).alerts == AlertBook().to_json()


async def test_a_ledger_that_cannot_be_saved_is_logged_at_most_every_ten_minutes_and_its_recovery_once(
    fleet, wall, tmp_path
):
    """At an error line every tick, a full disk wrote 5 760 lines a day at 15 s."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    fleet.ledger_file = blocker / "ledger.json"
    logs = await ten_minutes_of_failed_saves_then_two_that_work(fleet.observe, wall, blocker)
    failed = [entry for entry in logs if entry["event"] == "cost_ledger_save_failed"]
    assert [entry["more_since_last"] for entry in failed] == [0, 39]
    [again] = [entry for entry in logs if entry["event"] == "cost_ledger_saved_again"]
    assert again["failures"] == 41 and (blocker / "ledger.json").exists()


async def test_a_kill_switch_released_while_the_api_is_down_resumes_the_provider_once_it_answers(
    fleet, fake_verda: FakeVerda, wall, tmp_path
):
    fleet.stop_file = tmp_path / "ledger.json.stopped"
    await fleet.observe()
    await fleet.apply(1)
    fleet.stop_file.write_text("stopped\n")
    wall.advance(15)
    await fleet.observe()
    assert fake_verda.deployments[DEPLOYMENT].status == "paused"
    fleet.stop_file.unlink()  # comfy-scaler resume, whose own resume call failed too
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/resume", 503, times=2)
    wall.advance(15)
    await fleet.observe()
    assert fake_verda.deployments[DEPLOYMENT].status == "paused", "the API was down: nothing landed yet"
    wall.advance(15)
    await fleet.observe()
    assert fake_verda.deployments[DEPLOYMENT].status == "healthy", "resumed once the API answers"


async def test_a_write_cut_short_by_a_cancellation_is_not_taken_for_a_write(fleet, verda_scaling, monkeypatch):
    """A provider call that ends in CancelledError did not set the count: the fleet must not record it as written
    (and skip writing it again) but let the cancellation through, as observe and the price lookups do."""
    await fleet.observe()

    async def cut_short(target: int) -> bool:
        raise asyncio.CancelledError

    monkeypatch.setattr(fleet.members["verda"].backend, "apply", cut_short)
    with pytest.raises(asyncio.CancelledError):
        await fleet.apply(2)
    assert "verda" not in fleet._written


# A local worker that refuses its settings (exits 2 at once); with STAY set it is fixed, and runs.
LOCAL_WORKER = ("sh", "-c", 'if [ -n "$STAY" ]; then exec sleep 600; fi; exit 2')


async def test_a_crash_looping_local_provider_is_degraded_and_the_fleet_falls_back(
    make_verda_client, wall, verda_scaling, wait
):
    """Operator drill: local workers refusing their settings (exit 2) were started again at every tick and
    counted as serving, so with SCALER_PROVIDERS=local,verda the local provider was never judged broken and the
    jobs never ran; then it was judged at the start deadline only, reading healthy for 2 min (10 by default) while
    its workers were held back after failing. Now local is degraded as crash-looping at its first back-off, well
    before the start deadline, and Verda takes the count;
    tried again after its back-off, local fails again and Verda's replicas are not drained for it. Once the
    setting is fixed, local comes back and Verda is drained."""
    setting: dict[str, str] = {}
    local = LocalBackend(dict(os.environ), command=LOCAL_WORKER, clock=wall, stop_timeout_s=2.0,
                         replica_env=lambda _: setting)
    config = AllocatorConfig(
        providers=(ProviderSpec("local", max_replicas=2, price_per_hour=0.0, commit_s=15.0),
                   ProviderSpec("verda", max_replicas=3, price_per_hour=2.30)),
        error_ticks=2, start_deadline_s=120.0, retry_after_s=60.0,
    )
    verda = VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall)
    fleet = FleetBackend([Member(config.providers[0], local, RUNPOD_BILLING),
                          Member(config.providers[1], verda, VERDA_BILLING)], config, clock=wall)

    async def tick() -> None:  # 3 s later, once the local workers started have exited (unless fixed)
        await wait(lambda: setting or all(replica.exited for replica in local._live), timeout=10)
        wall.advance(3)
        await fleet.observe()

    try:
        await fleet.observe()
        await fleet.apply(2)
        began = wall()
        assert fleet.state.targets == {"local": 2, "verda": 0}
        with capture_logs() as logs:
            for _ in range(60):
                await tick()
                if fleet.state.health["local"].degraded:
                    break
            assert fleet.state.health["local"].degraded == "crash_loop"
            assert wall() - began <= 3 * 3, "at the first back-off, not at the start deadline (2 min)"
            assert fleet.state.targets == {"local": 0, "verda": 2} and verda_scaling() == (2, 2)
            assert local.starts <= 12, f"{local.starts} starts of 2 local replicas in {wall() - began:g} s"
            for _ in range(70):  # through local's back-off (60 s), its retry and its failing again
                await tick()
                assert fleet.state.targets["verda"] == 2, "Verda is not drained for local workers that fail"
        assert verda_scaling() == (2, 2)
        lines = [(e["event"], e.get("provider"), e.get("reason")) for e in logs]
        assert ("Provider degraded", "local", "crash_loop") in lines
        assert ("Provider move", "verda", "fallback") in lines
        assert ("Provider back in service", "local", None) in lines, "local was tried again"
        assert fleet.state.health["local"].degraded == "crash_loop", "and degraded again"

        setting["STAY"] = "1"  # fixed: the workers started from now on run
        for _ in range(150):  # past local's second back-off (120 s), and more than a start deadline on
            await tick()
        assert fleet.state.health["local"].degraded is None
        assert fleet.state.targets == {"local": 2, "verda": 0} and verda_scaling() == (0, 0), "Verda drained"
    finally:
        await fleet.aclose()


async def test_scale_ups_are_not_capped_after_the_clock_was_two_days_ahead(make_verda_client, wall, queue,
                                                                           verda_scaling, tmp_path):
    """Before: the tick while the wall clock was 2 days ahead charged the Verda replica 2 days of intervals
    ($165.60), dated in the future; once NTP set the clock back they read as today's spend, and the $20 daily cap
    held every scale-up until real time passed them."""
    spec = ProviderSpec("verda", max_replicas=3, price_per_hour=3.45)
    config = AllocatorConfig(providers=(spec,), error_ticks=2, start_deadline_s=120.0, retry_after_s=60.0,
                             max_spend_per_day=20.0)
    monotonic = ManualClock(0.0)
    member = Member(spec, VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall), VERDA_BILLING)
    fleet = FleetBackend([member], config, clock=wall, monotonic=monotonic, ledger_file=tmp_path / "ledger.json")
    loop = ScalerLoop(fleet_policy_config_for_test(), fleet, queue, clock=wall)
    try:
        queue.pending = 1
        await tick_with_the_clock_two_days_ahead_and_back(loop, wall, monotonic)
        assert verda_scaling() == (1, 1)
        queue.pending = 10
        wall.advance(15.0)
        monotonic.advance(15.0)
        await loop.tick()
        assert verda_scaling() == (3, 3), fleet.ledger.summary(wall())["total"]
        assert fleet.ledger.summary(wall())["total"]["last_day"] <= 5 * 3.45 / 6, "3 intervals, 2 new ones"
    finally:
        await fleet.aclose()
