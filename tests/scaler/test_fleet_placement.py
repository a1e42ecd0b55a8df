"""Placement over the fake Verda and the fake RunPod on loopback: providers that never serve, that flap,
and that leave the list while their replicas run."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from common.timespans import DAY_S
from demo.providers import POD_BODY
from scaler.billing import BillingAnchor, SpendLedger, billed_intervals
from scaler.cli import main
from scaler.config import load_settings
from scaler.fleet import PRICE_REFRESH_S, FleetBackend
from scaler.ledger import RUNPOD_BILLING, CostLedger
from scaler.policy import Replica
from scaler.wiring import ProviderSetupError, build_fleet
from standins.runpod import GPU_TYPES, FakeRunPod
from standins.verda import FakeVerda

from .conftest import CALL_CUT_OFF_S, DEPLOYMENT, RUNPOD_KEY

TICK_S = 15.0
START_DEADLINE_S = 120.0
RETRY_S = 300.0


async def ticks(fleet: FleetBackend, wall, count: int) -> None:
    for _ in range(count):
        wall.advance(TICK_S)
        await fleet.observe()


@pytest.mark.parametrize("stuck", ["provisioning", "worker_starting"])
async def test_runpod_pods_that_never_serve_degrade_runpod_and_its_shortfall_goes_to_verda(
    make_fleet, fake_verda: FakeVerda, wall, verda_scaling, stuck
):
    """RunPod's backend reported every listed pod as ready: pods stuck PROVISIONING (no host could pull the
    image), or whose worker never left "starting", kept RunPod healthy for ever (300 s past a 120 s start
    deadline, nothing degraded), and the queue's 2 replicas ran nowhere."""
    delay_s = 10**6 if stuck == "provisioning" else 0.0
    async with (
        FakeRunPod(RUNPOD_KEY, network_volumes=("vol-demo",), provision_delay_s=delay_s) as fake_runpod,
        aclosing(make_fleet(fake_runpod, verda_price=2.99, runpod_price=0.44, retry_after_s=RETRY_S)) as fleet,
    ):
        await fleet.observe()
        await fleet.apply(2)  # RunPod is the cheaper: both asked of it
        for pod in fake_runpod.live_pods():
            fake_runpod.set_health(pod.id, 200, {"status": "ok", "phase": "starting"})
        await ticks(fleet, wall, int(START_DEADLINE_S // TICK_S) + 1)
        assert fleet.state.health["runpod"].degraded == "start_deadline"
        assert fleet.state.targets == {"runpod": 0, "verda": 2}
        assert verda_scaling() == (2, 2)
        assert fake_runpod.live_pods() == [], "pods that never served are let go"


async def test_runpod_pods_count_as_ready_once_their_worker_takes_jobs(make_fleet, fake_verda, fake_runpod, wall):
    async with aclosing(make_fleet(fake_runpod, verda_price=2.99, runpod_price=0.44, retry_after_s=RETRY_S)) as fleet:
        await fleet.observe()
        await fleet.apply(2)
        await ticks(fleet, wall, int(START_DEADLINE_S // TICK_S) + 1)  # the fake's workers answer "idle"
        assert fleet.status_report(wall())["providers"]["runpod"]["ready"] == 2
        assert fleet.state.health["runpod"].degraded is None


@pytest.mark.parametrize("verda_answers_again", [True, False])
async def test_a_provider_that_flapped_into_errors_still_goes_to_zero_when_the_queue_is_empty(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod, wall, verda_scaling, verda_answers_again
):
    """Verda failed its reads for 2 ticks (degraded for errors, back-off 300 s), then the queue emptied. The
    unreadable provider's count was kept whatever the queue needed, for the whole back-off even once Verda
    answered again: 3 replicas pinned for 19 ticks (285 s) with nothing to do, up to an hour once the back-off
    has doubled. Its status read failing does not keep the write from landing."""
    async with aclosing(make_fleet(fake_runpod, verda_price=2.30, runpod_price=2.99, retry_after_s=RETRY_S)) as fleet:
        await fleet.observe()
        await fleet.apply(3)
        await ticks(fleet, wall, 1)
        assert verda_scaling() == (3, 3)
        status = f"/container-deployments/{DEPLOYMENT}/status"
        fake_verda.fail_next(status, 503, times=4 if verda_answers_again else 1000)  # 2 tries a read
        await ticks(fleet, wall, 2)
        assert fleet.state.health["verda"].degraded == "errors"
        await fleet.apply(0)
        await ticks(fleet, wall, 2)
        assert fleet.state.targets == {"verda": 0, "runpod": 0}
        assert verda_scaling() == (0, 0)
        assert fake_runpod.live_pods() == []


async def test_an_unreadable_provider_keeps_its_replicas_while_the_queue_needs_them(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod, wall, verda_scaling
):
    """Unreadable, a provider keeps its count while the queue needs it, and follows the queue down."""
    async with aclosing(make_fleet(fake_runpod, verda_price=2.30, runpod_price=2.99, retry_after_s=RETRY_S)) as fleet:
        await fleet.observe()
        await fleet.apply(3)
        await ticks(fleet, wall, 1)
        fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/status", 503, times=1000)
        await ticks(fleet, wall, 3)
        assert fleet.state.health["verda"].degraded == "errors"
        assert fleet.state.targets["verda"] == 3 and verda_scaling() == (3, 3)
        await fleet.apply(2)
        await ticks(fleet, wall, 1)
        assert fleet.state.targets["verda"] == 2


@pytest.fixture
def operator_env(monkeypatch, qm, fake_verda: FakeVerda, verda_credentials, tmp_path, restore_logging):
    """What docs/providers.md has the operator set for `SCALER_PROVIDERS=verda,runpod`, at the stand-ins."""

    def make(fake_runpod: FakeRunPod, providers: str) -> dict[str, str]:
        env = {
            "QUEUE_MANAGER_URL": qm.url, "VERDA_CLIENT_ID": verda_credentials[0],
            "VERDA_CLIENT_SECRET": verda_credentials[1], "VERDA_API_URL": fake_verda.url,
            "RUNPOD_API_KEY": RUNPOD_KEY, "RUNPOD_API_URL": fake_runpod.url,
            "RUNPOD_HEALTH_URL": fake_runpod.health_url, "RUNPOD_VOLUME_ID": "vol-demo",
            "RUNPOD_DATA_CENTER_IDS": "US-TX-3", "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.1.0",
            "SCALER_PROVIDERS": providers, "SCALER_VERDA_PRICE_PER_HOUR": "2.99",
            "SCALER_RUNPOD_PRICE_PER_HOUR": "0.44", "SCALER_LEDGER_FILE": str(tmp_path / "ledger.json"),
            "SCALER_ALERT_DRY_RUN": "true", "LOG_FORMAT": "json",
        }
        monkeypatch.chdir(tmp_path)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    return make


async def test_a_provider_taken_out_of_scaler_providers_is_driven_to_zero_and_charged_until_it_is(
    operator_env, fake_verda: FakeVerda, fake_runpod: FakeRunPod, verda_scaling
):
    """RunPod ran 2 pods when the operator restarted the scaler with `SCALER_PROVIDERS=verda`: nothing read or
    wrote RunPod again, so its pods ran, billed per second, for ever, and the ledger (the budgets) never saw
    them. Measured: 2 pods still running after 5 ticks at an empty queue, none of their time charged."""
    operator_env(fake_runpod, "verda,runpod")
    async with aclosing(await build_fleet(load_settings(), with_alerts=False)) as fleet:
        await fleet.observe()
        await fleet.apply(2)  # RunPod is the cheaper: both on it
        await fleet.observe()
    assert len(fake_runpod.live_pods()) == 2
    charged_before = fleet.ledger.spent_since(0, "runpod")

    operator_env(fake_runpod, "verda")
    async with aclosing(await build_fleet(load_settings(), with_alerts=False)) as fleet:
        await fleet.observe()
        await fleet.apply(0)  # the queue is empty
        for _ in range(5):
            await asyncio.sleep(0.2)
            await fleet.observe()
        assert fake_runpod.live_pods() == [], "the pods of a provider no longer listed are stopped"
        assert fleet.ledger.spent_since(0, "runpod") > charged_before, "their time till then is charged"
        assert verda_scaling() == (0, 0)

    # Gone to zero: not looked at again.
    async with aclosing(await build_fleet(load_settings(), with_alerts=False)) as fleet:
        assert list(fleet.members) == ["verda"]


async def test_a_retired_provider_that_cannot_be_reached_stops_the_start_with_what_to_do(
    operator_env, monkeypatch, tmp_path
):
    async with FakeRunPod(RUNPOD_KEY, network_volumes=("vol-demo",)) as fake_runpod:
        operator_env(fake_runpod, "verda")
    monkeypatch.delenv("RUNPOD_API_KEY")
    ledger = CostLedger()
    ledger.charge("runpod", [Replica("p1", time.time() - 60), Replica("p2", time.time() - 60)], time.time(),
                  price_per_hour=0.44, rule=RUNPOD_BILLING)
    ledger.save(tmp_path / "ledger.json")
    with pytest.raises(ProviderSetupError) as raised:
        await build_fleet(load_settings(), with_alerts=False)
    message = str(raised.value)
    assert message.startswith("runpod: ") and "2 replicas running at the last tick, no longer in SCALER_PROVIDERS" \
        in message and "SCALER_PROVIDERS=runpod comfy-scaler stop" in message, message


async def test_stop_all_also_stops_a_provider_taken_out_of_scaler_providers(
    operator_env, fake_verda: FakeVerda, fake_runpod: FakeRunPod, capsys
):
    """`stop --all` stopped only what SCALER_PROVIDERS listed: the 2 pods of a RunPod just taken out of it
    ran on, and it answered "nothing is running" (exit 0)."""
    operator_env(fake_runpod, "verda,runpod")
    async with aclosing(await build_fleet(load_settings(), with_alerts=False)) as fleet:
        await fleet.observe()
        await fleet.apply(2)
        await fleet.observe()
    operator_env(fake_runpod, "verda")
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["stop", "--all"]) == 0
    assert fake_runpod.live_pods() == []
    captured = capsys.readouterr()
    assert "runpod: stopped" in captured.out
    [logged] = [json.loads(line) for line in captured.err.splitlines() if '"kill_switch_engaged"' in line]
    assert sorted(logged["stopped"]) == ["runpod", "verda"], "the log names the retired provider it stopped too"


@pytest.mark.parametrize("topped_up", [True, False])
async def test_runpod_refusing_for_balance_is_tried_again_after_the_back_off(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod, wall, verda_scaling, topped_up
):
    """RunPod answered 402 (balance spent): degraded, Verda took the 2 replicas. RunPod reports its last refusal
    until a create succeeds, and a degraded provider is asked for no pod: at every back-off's end it was degraded
    again before being asked. Balance topped up, it stayed out for good (1200 s measured, 4 back-offs), the 2
    replicas on Verda at 2.99/h instead of RunPod's 0.44/h: 5.10 USD an hour until the scaler restarted."""
    async with aclosing(make_fleet(fake_runpod, verda_price=2.99, runpod_price=0.44, retry_after_s=RETRY_S)) as fleet:
        fake_runpod.balance_usd = 0.0
        await fleet.observe()
        await fleet.apply(2)
        await ticks(fleet, wall, 1)
        assert fleet.state.health["runpod"].degraded == "quota_reached"
        assert fleet.state.targets == {"runpod": 0, "verda": 2} and verda_scaling() == (2, 2)
        if topped_up:
            fake_runpod.balance_usd = None
        await ticks(fleet, wall, int(RETRY_S // TICK_S) + 2)
        if topped_up:
            assert fleet.state.health["runpod"].degraded is None
            assert fleet.state.targets == {"runpod": 2, "verda": 0}, "drained back once RunPod's pods serve"
            assert len(fake_runpod.live_pods()) == 2 and verda_scaling() == (0, 0)
        else:
            health = fleet.state.health["runpod"]
            assert health.degraded == "quota_reached" and health.backoff_s == 2 * RETRY_S
            assert verda_scaling() == (2, 2), "Verda kept the replicas through the retry"


async def test_a_price_list_that_fails_at_start_falls_back_on_the_price_last_charged(
    operator_env, monkeypatch, fake_verda: FakeVerda, fake_runpod: FakeRunPod
):
    """Verda's and RunPod's prices read from their price lists (docs/providers.md, the prices unset). RunPod's
    catalogue answering 500 at a restart stopped the whole fleet from starting (`runpod: price lookup failed`):
    under systemd it restarted every 5 s, deciding nothing, every provider's count pinned and billed."""
    operator_env(fake_runpod, "verda,runpod")
    monkeypatch.delenv("SCALER_RUNPOD_PRICE_PER_HOUR")
    async with aclosing(await build_fleet(load_settings(), with_alerts=False)) as fleet:
        listed = fleet.members["runpod"].spec.price_per_hour
        await fleet.observe()  # charged, and saved, at that price
    fake_runpod.fail_next(f"/catalog/gpus/{POD_BODY['gpu']['id']}", 500, times=100)
    monkeypatch.setenv("SCALER_TICK_DEADLINE_S", "1")  # what a lookup may take: it fails sooner
    async with aclosing(await build_fleet(load_settings(), with_alerts=False)) as fleet:
        assert fleet.members["runpod"].spec.price_per_hour == listed > 0
    fleet_of_a_new_ledger = load_settings(ledger_file=None)
    with pytest.raises(ProviderSetupError, match="runpod: price lookup failed"):
        await build_fleet(fleet_of_a_new_ledger, with_alerts=False)


async def test_pods_asked_for_by_a_scaler_stopped_before_it_listed_them_are_not_forgotten(
    operator_env, fake_verda: FakeVerda, fake_runpod: FakeRunPod
):
    """The ledger kept the replicas listed at the last read only: 2 pods created at a tick's write, the scaler
    stopped before its next read, RunPod taken out of SCALER_PROVIDERS: both pods left running."""
    operator_env(fake_runpod, "verda,runpod")
    async with aclosing(await build_fleet(load_settings(), with_alerts=False)) as fleet:
        await fleet.observe()
        await fleet.apply(2)
    await assert_driven_to_zero_once_out_of_the_fleet(operator_env, fake_runpod)


async def test_pods_asked_for_by_a_write_cut_short_are_not_forgotten(
    operator_env, fake_verda: FakeVerda, fake_runpod: FakeRunPod
):
    """The pods asked for were recorded only once RunPod's writes had answered: a scaler stopped while a create
    was under way (a slow answer, SIGTERM past the loop's grace) saved nothing, RunPod was then taken out of
    SCALER_PROVIDERS, and the pod it had created ran on, billed, with nothing to stop it."""
    operator_env(fake_runpod, "verda,runpod")
    async with aclosing(await build_fleet(load_settings(), with_alerts=False)) as fleet:
        await fleet.observe()
        fake_runpod.delay_next("/pods", 3, method="POST")
        write = asyncio.create_task(fleet.apply(2))
        while not fake_runpod.live_pods():
            await asyncio.sleep(0.01)
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)
    assert fake_runpod.live_pods(), "the create was carried out"
    await assert_driven_to_zero_once_out_of_the_fleet(operator_env, fake_runpod)


async def assert_driven_to_zero_once_out_of_the_fleet(operator_env, fake_runpod: FakeRunPod) -> None:
    """A scaler restarted with RunPod taken out of SCALER_PROVIDERS stops the pods the ledger remembers."""
    operator_env(fake_runpod, "verda")
    async with aclosing(await build_fleet(load_settings(), with_alerts=False)) as fleet:
        await fleet.observe()
        await fleet.apply(0)
        await fleet.observe()
        assert fake_runpod.live_pods() == []


@pytest.mark.parametrize("anchor", ["started_at", "wall_clock"])
async def test_the_fleet_charges_verda_by_the_billing_interval_and_anchor_the_policy_plans_with(
    operator_env, monkeypatch, fake_verda: FakeVerda, fake_runpod: FakeRunPod, anchor
):
    """The fleet's Verda ledger charged 600-s intervals from each start whatever SCALER_BILLING_INTERVAL_S and
    SCALER_BILLING_ANCHOR said, while the single-backend scaler (the policy's SpendLedger) honours them: a
    replica 25 minutes into an hour's interval at 2.99/h was 1.495 to the fleet (3 intervals of 10 minutes),
    2.99 to the policy, and the budget caps and alerts read the former."""
    started_at = time.time() - 25 * 60
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/replicas", 200, method="GET", times=5, body={
        "list": [{"id": "replica-a", "status": "running",
                  "started_at": datetime.fromtimestamp(started_at, UTC).isoformat()}]})
    operator_env(fake_runpod, "verda")
    monkeypatch.setenv("SCALER_BILLING_INTERVAL_S", "3600")
    monkeypatch.setenv("SCALER_BILLING_ANCHOR", anchor)
    settings = load_settings()
    async with aclosing(await build_fleet(settings, with_alerts=False)) as fleet:
        await fleet.observe()
        now = fleet.ledger.looked_at["verda"]
    policy = SpendLedger().observe(
        [Replica("replica-a", started_at)], now, interval_s=settings.billing_interval_s,
        anchor=settings.billing_anchor, price_per_hour=2.99,
    )
    # One hour's interval (two when a wall-clock hour began in those 25 minutes), not 3 of 10 minutes (1.495).
    hours = billed_intervals(started_at, now, 3600.0, BillingAnchor(anchor))
    assert fleet.committed_spend(now)["day"] == pytest.approx(policy.spent_since(now - DAY_S)) == 2.99 * hours


@pytest.mark.parametrize(("saved_s", "now_s"), [(600, 3600), (3600, 600), (600, 600)])
async def test_a_billing_interval_changed_between_two_runs_never_charges_less_than_verda_bills(
    operator_env, monkeypatch, fake_verda: FakeVerda, fake_runpod: FakeRunPod, saved_s, now_s
):
    """The ledger kept intervals charged as counts and read them back in the new SCALER_BILLING_INTERVAL_S: 3
    intervals of 10 minutes became 3 of an hour, and a replica that ran on 2 h 55 min was charged 1.495 where
    Verda bills 3 hours (8.97). The saved ledger says the interval it counted in, and a change is converted."""
    now = time.time()
    started_at = now - (2 * 60 + 55) * 60
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/replicas", 200, method="GET", times=10, body={
        "list": [{"id": "replica-a", "status": "running",
                  "started_at": datetime.fromtimestamp(started_at, UTC).isoformat()}]})
    operator_env(fake_runpod, "verda")
    for interval_s, at in ((saved_s, started_at + 25 * 60), (now_s, now)):
        monkeypatch.setenv("SCALER_BILLING_INTERVAL_S", str(interval_s))
        fleet = await build_fleet(load_settings(), with_alerts=False)  # the ledger file saved by the last run
        fleet.clock = lambda at=at: at
        try:
            with capture_logs() as logs:
                await fleet.observe()
        finally:
            await fleet.aclose()
    billed = 2.99 * now_s / 3600 * billed_intervals(started_at, now, now_s, BillingAnchor.STARTED_AT)
    spent = fleet.committed_spend(now)["day"]
    overlap = 2.99 * now_s / 3600 if saved_s != now_s else 0.0  # the interval under way at the restart
    assert billed <= spent <= billed + overlap + 1e-9
    changed = [entry for entry in logs if entry["event"] == "cost_ledger_billing_changed"]
    assert [entry["setting"] for entry in changed] == (["SCALER_BILLING_INTERVAL_S"] if saved_s != now_s else [])


async def test_a_runpod_create_cut_off_by_the_call_timeout_is_not_made_again_while_the_listing_lags(
    make_fleet, fake_verda: FakeVerda, wall
):
    """The fleet gives each provider call a quarter of the tick; a create that landed but answered after that
    was forgotten. With RunPod's listing a minute behind, the next tick made the pod again: 4 pods created
    and 4 running for 3 asked, over RunPod's max of 3, the extra one billed until the listing caught up."""
    async with (
        FakeRunPod(RUNPOD_KEY, network_volumes=("vol-demo",), clock=wall, listing_lag_s=60.0) as fake_runpod,
        aclosing(
            make_fleet(fake_runpod, verda_price=2.99, runpod_price=0.44, retry_after_s=RETRY_S,
                       member_timeout_s=CALL_CUT_OFF_S)
        ) as fleet,
    ):
        await fleet.observe()
        fake_runpod.delay_next("/pods", 2 * CALL_CUT_OFF_S, method="POST")
        await fleet.apply(3)  # all 3 asked of RunPod, the cheaper; its first create answers too late
        most_running = 0
        for _ in range(8):
            await ticks(fleet, wall, 1)
            most_running = max(most_running, len(fake_runpod.live_pods()))
    assert (len(fake_runpod.requests_to("/pods", "POST")), most_running, len(fake_runpod.live_pods())) == (3, 3, 3)


async def test_runpod_pods_left_by_the_previous_scaler_count_as_ready_at_the_first_apply_after_a_restart(
    make_fleet, fake_verda: FakeVerda, fake_runpod: FakeRunPod, wall, verda_scaling
):
    """A restarted scaler asked no pod's /health before its first apply, so RunPod's 2 serving pods counted as 0
    ready: the dearer RunPod being drained back to Verda was cut to 0 at once, before Verda had a replica, and
    the queue's 2 replicas were ready nowhere for a tick. Now RunPod keeps them until Verda's are there."""
    before = make_fleet(fake_runpod, verda_price=2.99, runpod_price=0.44, retry_after_s=RETRY_S)
    try:
        await before.observe()
        await before.apply(2)
        await ticks(before, wall, 2)
        assert before.status_report(wall())["providers"]["runpod"]["ready"] == 2
    finally:
        await before.aclose()
    restarted = make_fleet(fake_runpod, verda_price=2.30, runpod_price=2.99, retry_after_s=RETRY_S)
    try:
        await restarted.observe()
        await restarted.apply(2)  # Verda is the cheaper now: RunPod is drained once Verda's 2 are ready
        assert restarted.state.targets == {"verda": 2, "runpod": 2}
        assert len(fake_runpod.live_pods()) == 2
        await ticks(restarted, wall, 1)  # Verda lists its 2 (each listed replica counts as ready)
        assert restarted.state.targets == {"verda": 2, "runpod": 0} and verda_scaling() == (2, 2)
    finally:
        await restarted.aclose()


async def test_a_price_list_that_changes_is_followed_by_the_ledger_and_the_placement_within_the_hour(
    operator_env, monkeypatch, fake_verda: FakeVerda, fake_runpod: FakeRunPod, verda_scaling, wall
):
    """Prices were read once at start. RunPod's list price raised from 0.69 to 3.49 (Verda 2.99): the fleet kept
    charging its 2 pods at 0.69 (5.60 an hour under-counted, the budgets reading it) and kept RunPod first
    until a restart. Now the price lists are read again every hour; one that fails keeps the last price."""
    gpu = POD_BODY["gpu"]["id"]
    operator_env(fake_runpod, "verda,runpod")
    monkeypatch.delenv("SCALER_RUNPOD_PRICE_PER_HOUR")
    fleet = await build_fleet(load_settings(), with_alerts=False)
    fleet.clock = wall
    try:
        await fleet.observe()
        await fleet.apply(2)
        assert fleet.members["runpod"].spec.price_per_hour == 0.69 and fleet.state.targets["runpod"] == 2
        monkeypatch.setitem(GPU_TYPES[gpu]["price"], "secure", 3.49)
        fake_runpod.fail_next(f"/catalog/gpus/{gpu}", 200, body={"price": None})  # the first hour's read fails
        wall.advance(PRICE_REFRESH_S + TICK_S)  # the fleet read its prices a little after the wall was set
        await fleet.observe()
        assert fleet.members["runpod"].spec.price_per_hour == 0.69, "the last price is kept"
        wall.advance(PRICE_REFRESH_S + TICK_S)  # the fleet read its prices a little after the wall was set
        await fleet.observe()
        assert fleet.members["runpod"].spec.price_per_hour == 3.49
        charged = fleet.ledger.spent_since(wall(), "runpod")
        wall.advance(60)
        await fleet.observe()
        assert fleet.ledger.spent_since(wall() - 60, "runpod") - charged == pytest.approx(2 * 3.49 / 60, rel=0.05)
        assert verda_scaling() == (2, 2), "Verda is now the cheaper: the replicas move there"
        await ticks(fleet, wall, 1)
        assert fleet.state.targets == {"verda": 2, "runpod": 0}
    finally:
        await fleet.aclose()
