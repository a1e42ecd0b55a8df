"""The loop around the policy, with a hand-moved clock and stub inputs: what it applies, holds and logs."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.billing import BillingAnchor, SpendLedger, billed_intervals
from scaler.health_record import BackendHealth
from scaler.ledger import MAX_SAVED_BYTES, BillingRule, CostLedger, SavedFileUnreadable
from scaler.loop import ScalerLoop, load_policy_state, save_policy_state
from scaler.metrics import MetricsServer, ScalerMetrics
from scaler.policy import MAX_REPLICAS_LIMIT, PolicyState, Reason, Replica, ScalingConfig
from scaler.providers import BackendView
from scaler.providers.verda.client import VerdaAPIError
from scaler.save_failures import SAVE_FAILED_LOG_EVERY_S

from ..conftest import ManualClock, run_as_nobody, wait_for
from .conftest import SlowWrite, StubBackend

CONFIG = ScalingConfig(
    target_wait_s=None,
    billing_aware=False, stabilization_window_s=60, scale_down_cooldown_s=0, idle_to_zero_s=120,
    price_per_replica_hour=3.0,
)


@pytest.fixture
def make_loop(backend, queue, clock):
    def build(**options) -> ScalerLoop:
        return ScalerLoop(options.pop("config", CONFIG), backend, queue, clock=clock, **options)

    return build


def decisions(logs: list[dict]) -> list[dict]:
    return [entry for entry in logs if entry["event"] == "Scaling decision"]


async def test_a_burst_scales_up_with_one_logged_decision(make_loop, backend, queue):
    loop = make_loop()
    queue.pending = 3
    with capture_logs() as logs:
        decision = await loop.tick()
    assert (decision.desired, decision.reason) == (3, Reason.WAKE_FROM_ZERO)
    assert backend.applied == [3]
    [event] = decisions(logs)
    assert event["log_level"] == "info"
    assert (event["desired"], event["current"], event["reason"], event["changed"]) == (3, 0, "wake_from_zero", True)
    assert event["apply"] == "wrote"
    assert event["details"]["pending"] == 3


async def test_writes_only_when_the_count_changes(make_loop, backend, queue, clock):
    loop = make_loop()
    await loop.tick()
    assert backend.applied == [0], "the first tick takes ownership of the count"
    for _ in range(3):
        clock.advance(15)
        await loop.tick()
    assert backend.applied == [0]
    queue.pending = 2
    await loop.tick()
    clock.advance(15)
    with capture_logs() as logs:
        await loop.tick()
    assert backend.applied == [0, 2]
    assert decisions(logs)[0]["apply"] == "already_set"


async def test_idle_window_brings_the_count_to_zero(make_loop, backend, queue, clock):
    loop = make_loop()
    queue.pending = 2
    await loop.tick()
    queue.pending, queue.running = 0, 0
    while loop.state.applied:
        clock.advance(15)
        await loop.tick()
        assert clock.now - 1_000_000.0 <= CONFIG.idle_to_zero_s + CONFIG.stabilization_window_s + 15
    assert clock.now - 1_000_000.0 >= CONFIG.idle_to_zero_s
    assert backend.applied[-1] == 0 and backend.replicas == ()


async def test_unreadable_queue_holds_the_count_and_alerts_after_the_threshold(
    make_loop, backend, queue, clock, queue_failure
):
    metrics = ScalerMetrics()
    loop = make_loop(metrics=metrics, failure_alert_after=3)
    queue.pending = 2
    await loop.tick()
    queue.pending, queue.error = 0, queue_failure
    with capture_logs() as logs:
        for _ in range(5):
            clock.advance(CONFIG.idle_to_zero_s)  # long enough to reach zero, were the reads trusted
            decision = await loop.tick()
            assert (decision.desired, decision.reason) == (2, Reason.HOLD_OBSERVATION_FAILED)
    assert backend.applied == [2], "never written on a failed read"
    events = decisions(logs)
    assert [e["log_level"] for e in events] == ["warning", "warning", "error", "error", "error"]
    assert events[-1]["consecutive_failures"] == 5
    assert events[-1]["apply"] == "skipped_read_failed"
    assert "ConnectError" in events[-1]["details"]["queue_error"]
    sample = metrics.registry.get_sample_value
    assert sample("comfy_scaler_consecutive_failures") == 5
    assert sample("comfy_scaler_read_errors_total", {"source": "queue"}) == 5

    queue.error = None
    await loop.tick()
    assert loop.state.consecutive_failures == 0
    assert sample("comfy_scaler_consecutive_failures") == 0


async def test_unreadable_platform_holds_and_never_goes_to_zero(make_loop, backend, queue, clock):
    loop = make_loop()
    queue.running = 1
    await loop.tick()
    queue.running = 0
    backend.observe_error = VerdaAPIError(503, "service_unavailable", "injected")
    for _ in range(4):
        clock.advance(CONFIG.idle_to_zero_s)
        assert (await loop.tick()).desired == 1
    assert backend.applied == [1]


async def test_an_error_on_the_very_first_tick_writes_nothing(make_loop, backend, queue, queue_failure):
    queue.error = queue_failure
    decision = await make_loop().tick()
    assert decision.reason == Reason.HOLD_OBSERVATION_FAILED
    assert backend.applied == []


async def test_dry_run_decides_and_logs_but_never_applies(make_loop, backend, queue):
    loop = make_loop(dry_run=True)
    queue.pending = 4
    with capture_logs() as logs:
        decision = await loop.tick()
    assert decision.desired == 4
    assert backend.applied == []
    [event] = decisions(logs)
    assert (event["apply"], event["dry_run"]) == ("skipped_dry_run", True)


async def test_paused_deployment_warns_and_holds(make_loop, backend, queue):
    loop = make_loop()
    backend.status = "paused"
    queue.pending = 5
    with capture_logs() as logs:
        decision = await loop.tick()
    assert (decision.desired, decision.reason) == (0, Reason.HOLD_PAUSED)
    assert backend.applied == []
    [event] = decisions(logs)
    assert (event["log_level"], event["apply"]) == ("warning", "skipped_paused")


async def test_a_paused_single_backend_is_not_also_logged_as_degraded(make_loop, backend, queue, clock):
    """`comfy-scaler stop` on a single Verda backend: the decision line, a warning already (apply=skipped_paused),
    also said degraded=paused with a back-off of 300 s that meant nothing, and "Provider degraded: paused" and
    "Provider back in service" were logged by turns every 5 minutes while it stayed paused."""
    health = BackendHealth("verda", AllocatorConfig((ProviderSpec("verda", 5, 3.0),), retry_after_s=300.0))
    loop = make_loop(backend_health=health)
    backend.status = "paused"
    with capture_logs() as logs:
        for _ in range(3):
            await loop.tick()
            clock.advance(400)
    events = decisions(logs)
    assert [(e["log_level"], e["apply"]) for e in events] == [("warning", "skipped_paused")] * 3
    assert not [e for e in events if "degraded" in e], events
    assert not [e for e in logs if e["event"] in ("Provider degraded", "Provider back in service")]
    assert health.record(clock()).degraded == {}


async def test_quota_reached_never_adds_replicas(make_loop, backend, queue, clock):
    loop = make_loop()
    queue.pending = 1
    await loop.tick()
    backend.status = "quota_reached"
    queue.pending = 6
    with capture_logs() as logs:
        for _ in range(3):
            clock.advance(15)
            decision = await loop.tick()
            assert (decision.desired, decision.reason) == (1, Reason.HOLD_QUOTA_REACHED)
    assert backend.applied == [1]
    assert {e["log_level"] for e in decisions(logs)} == {"warning"}


async def test_a_failed_write_is_logged_and_retried_next_tick(make_loop, backend, queue, clock):
    metrics = ScalerMetrics()
    loop = make_loop(metrics=metrics)
    queue.pending = 3
    backend.apply_error = VerdaAPIError(500, "server_error", "injected")
    with capture_logs() as logs:
        await loop.tick()
    [event] = decisions(logs)
    assert (event["log_level"], event["apply"]) == ("error", "failed")
    assert "server_error" in event["apply_error"]
    assert metrics.registry.get_sample_value("comfy_scaler_apply_errors_total") == 1
    backend.apply_error = None
    clock.advance(15)
    await loop.tick()
    assert backend.applied == [3]


async def test_metrics_are_served_over_http(make_loop, queue):
    metrics = ScalerMetrics()
    loop = make_loop(metrics=metrics)
    queue.pending = 2
    await loop.tick()
    server = MetricsServer(metrics, host="127.0.0.1", port=0)
    port = await server.start()
    try:
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        await server.stop()
    assert "comfy_scaler_desired_replicas 2.0" in text
    assert "comfy_scaler_actual_replicas 0.0" in text, "replicas as observed before the write"
    assert 'comfy_scaler_decisions_total{reason="wake_from_zero"} 1.0' in text
    assert 'comfy_scaler_estimated_spend{window="hour"}' in text


async def test_actual_replicas_is_the_last_count_the_platform_listed(make_loop, backend, queue, clock):
    """ComfyReplicasNotStarting/-Stopping (docs/monitoring.md) compare it with the desired count: a failed read
    keeps the count last seen rather than dropping to 0 or reading the failed answer."""
    metrics = ScalerMetrics()
    loop = make_loop(metrics=metrics)
    sample = metrics.registry.get_sample_value
    queue.pending = 2
    await loop.tick()
    clock.advance(15)
    await loop.tick()
    assert sample("comfy_scaler_actual_replicas") == 2
    backend.observe_error = VerdaAPIError(503, "service_unavailable", "injected")
    backend.replicas = ()
    clock.advance(15)
    await loop.tick()
    assert sample("comfy_scaler_actual_replicas") == 2


async def test_estimated_spend_follows_running_replicas(make_loop, queue, clock):
    metrics = ScalerMetrics()
    loop = make_loop(metrics=metrics)
    queue.pending = 2
    await loop.tick()
    clock.advance(15)
    await loop.tick()
    interval_cost = CONFIG.price_per_replica_hour * CONFIG.billing_interval_s / 3600
    assert metrics.registry.get_sample_value("comfy_scaler_estimated_spend", {"window": "hour"}) == pytest.approx(
        2 * interval_cost
    )


def test_the_limits_are_exported_beside_the_figures_they_bound(make_loop):
    """The alerting rules compare replicas with the maximum and spend with the budget (deploy/monitoring)."""
    metrics = ScalerMetrics()
    make_loop(config=replace(CONFIG, max_replicas=7, max_spend_per_day=40.0), metrics=metrics, interval_s=600)
    sample = metrics.registry.get_sample_value
    assert sample("comfy_scaler_max_replicas") == 7
    assert sample("comfy_scaler_interval_seconds") == 600  # ComfyScalerNotDeciding waits three ticks
    assert sample("comfy_scaler_budget", {"window": "day"}) == 40.0
    assert sample("comfy_scaler_budget", {"window": "hour"}) is None  # no hourly budget set: no series


async def test_run_ticks_until_the_stop_event(make_loop, queue, wait):
    loop = make_loop(interval_s=60)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await wait(lambda: queue.reads == 1)
    stop.set()
    async with asyncio.timeout(10):  # well short of the 60-s interval: the stop, not the interval, ended it
        await task
    assert queue.reads == 1, "the stop event cuts the interval short"


class WriteLandsUnanswered(StubBackend):
    """A platform that takes a write (its count changes) and never answers it, or (``silent_reads``) never
    answers a read."""

    def __init__(self, clock: ManualClock, *, silent_reads: bool = False) -> None:
        super().__init__(clock)
        self.silent_reads = silent_reads

    async def observe(self) -> BackendView:
        if self.silent_reads:
            await asyncio.Event().wait()
        return await super().observe()

    async def apply(self, desired: int) -> bool:
        await super().apply(desired)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("silent_reads", [False, True], ids=["during-the-write", "during-the-reads"])
async def test_a_stop_that_cuts_a_tick_short_says_whether_a_write_was_under_way(
    queue, clock, wait, monkeypatch, silent_reads
):
    """SIGTERM while the write of a scale-up was under way: the write landed (3 replicas started), and the one line
    said "the tick under way applied nothing more; the platform keeps its count"."""
    monkeypatch.setattr("scaler.loop.STOP_GRACE_S", 0.05)
    backend = WriteLandsUnanswered(clock, silent_reads=silent_reads)
    loop = ScalerLoop(CONFIG, backend, queue, clock=clock, interval_s=60)
    queue.pending = 3
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(loop.run(stop))
        await wait(lambda: backend.applied == [3] if not silent_reads else queue.reads == 1)
        stop.set()
        async with asyncio.timeout(10):
            await task
    [cut] = [entry for entry in logs if entry["event"] == "scaler_tick_cut_short"]
    if silent_reads:
        assert "write_under_way" not in cut and "before the tick under way wrote its decision" in cut["hint"]
    else:
        assert (cut["write_under_way"], cut["count_before"]) == (3, 0)
        assert "may have landed in whole, in part or not at all" in cut["hint"]
    assert logs[-1]["event"] == "scaler_stopped"


async def test_a_stop_during_a_write_lets_it_land_within_the_grace(queue, clock):
    """SIGTERM while a write is answered within STOP_GRACE_S: the tick finishes (the write lands, the decision is
    logged) and is not cut short."""
    backend = SlowWrite(clock, seconds=0.2)
    loop = ScalerLoop(CONFIG, backend, queue, clock=clock, interval_s=60)
    queue.pending = 3
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(loop.run(stop))
        await asyncio.wait_for(backend.writing.wait(), 10)
        stop.set()
        async with asyncio.timeout(10):
            await task
    assert backend.applied == [3]
    assert [e["event"] for e in logs if e["event"] in ("Scaling decision", "scaler_tick_cut_short")] == [
        "Scaling decision"
    ]
    assert [e["apply"] for e in logs if e["event"] == "Scaling decision"] == ["wrote"]


async def test_policy_state_survives_a_save_and_load(make_loop, queue, clock, tmp_path):
    loop = make_loop()
    queue.pending = 2
    await loop.tick()
    clock.advance(30)
    queue.pending = 0
    await loop.tick()
    path = tmp_path / "state" / "scaler.json"
    save_policy_state(path, loop.state)
    assert load_policy_state(path) == loop.state
    assert load_policy_state(tmp_path / "missing.json") == PolicyState()
    learned = replace(loop.state, opening_started_at=32_400.0, opening_load=(36.0, 10), learned_prewarm=4,
                      held_at_zero_since=32_100.0)
    save_policy_state(path, learned)
    assert load_policy_state(path) == learned


def test_a_state_file_of_an_earlier_release_loads_with_the_defaults_for_what_it_lacks(tmp_path):
    path = tmp_path / "scaler.json"
    path.write_text('{"applied": 2}')
    assert load_policy_state(path) == PolicyState(applied=2)


@pytest.mark.parametrize(("applied", "loads"), [(MAX_REPLICAS_LIMIT, True), (MAX_REPLICAS_LIMIT + 1, False)])
def test_a_saved_count_up_to_the_replica_limit_loads_and_one_more_is_corrupt(tmp_path, applied, loads):
    path = tmp_path / "scaler.json"
    path.write_text(json.dumps({"applied": applied}))
    assert load_policy_state(path) == (PolicyState(applied=applied) if loads else PolicyState())


async def test_the_state_file_is_written_after_every_tick_but_never_in_a_dry_run(make_loop, queue, clock, tmp_path):
    path = tmp_path / "scaler.json"
    loop = make_loop(state_file=path)
    queue.pending = 2
    await loop.tick()
    assert load_policy_state(path) == loop.state
    clock.advance(30)
    queue.pending = 0
    await loop.tick()
    assert load_policy_state(path) == loop.state, "a crash after this tick restarts with this memory"

    dry = tmp_path / "dry.json"
    await make_loop(state_file=dry, dry_run=True).tick()
    assert not dry.exists()


@pytest.mark.parametrize(
    "content",
    ['{"applied": 2, "ledger": {"charges": [[1, 0.5', '{"applied": "two"}', '["not", "an", "object"]',
     '{"demand_samples": [[1, "many"]]}', '{"last_work_seen_at": "yesterday"}', '{"last_work_seen_at": true}', "",
     '{"opening_load": [1]}', '{"ledger": {"billed": [[[], 1]]}}', "[" * 100_000,
     '{"ledger": {"charges": [[100, NaN]]}}', '{"last_work_seen_at": NaN}', '{"demand_samples": [[Infinity, 1]]}',
     '{"demand_samples": [[1, Infinity]]}', '{"demand_samples": [[1, NaN]]}', '{"opening_load": [0, 1e400]}',
     '{"ledger": {"billed": [[["r", 1], 1e999]]}}', '{"opening_load": [0, 1%s]}' % ("0" * 4000),
     '{"applied": 9007199254740992}', b'\xff\xfe{\x00}\x00', b'{"applied": 1, "x": "\xe9"}'],
    ids=["truncated", "count-as-text", "a-list", "sample-as-text", "time-as-text", "time-as-boolean", "empty",
         "item-missing", "key-too-short", "nested-past-the-parser", "spend-nan", "time-nan", "sample-infinite",
         "sample-count-infinite", "sample-count-nan", "opening-count-infinite", "billed-count-infinite",
         "opening-count-past-any-float", "applied-past-any-replica-count", "utf-16", "latin-1"],
)
async def test_an_unreadable_state_file_is_kept_aside_and_the_scaler_starts_fresh_saying_so(
    make_loop, queue, tmp_path, content
):
    """Any content at all: before, infinity in a count (OverflowError) or bytes that are not UTF-8
    (UnicodeDecodeError) escaped, and every start crashed on the file, never setting it aside."""
    path = tmp_path / "scaler.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with capture_logs() as logs:
        state = load_policy_state(path)
    assert state == PolicyState()
    assert [entry["event"] for entry in logs] == ["policy_state_unreadable"]
    assert logs[0]["log_level"] == "error" and "spend" in logs[0]["hint"]
    assert [p.name.startswith("scaler.json.corrupt-") for p in tmp_path.iterdir()] == [True]
    queue.pending = 1
    await make_loop(state=state, state_file=path).tick()
    assert load_policy_state(path).applied == 1, "the next tick writes a good file again"


async def test_a_state_file_that_cannot_be_written_is_logged_and_the_loop_goes_on(make_loop, backend, queue, tmp_path):
    (tmp_path / "a-file").write_text("")
    loop = make_loop(state_file=tmp_path / "a-file" / "scaler.json")  # a full disk fails the same way
    queue.pending = 1
    with capture_logs() as logs:
        await loop.tick()
    assert backend.applied == [1]
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["policy_state_save_failed"]


async def ten_minutes_of_failed_saves_then_two_that_work(
    tick: Callable[[], Awaitable[object]], clock: ManualClock, blocker: Path
) -> list[dict]:
    """The logs of 41 ticks 15 s apart (ten minutes, both ends included) saving below ``blocker``, a file where a
    folder should be (a full disk fails the same way), then of two ticks once it is a folder."""
    with capture_logs() as logs:
        for _ in range(41):
            await tick()
            clock.advance(15)
        blocker.unlink()
        blocker.mkdir()
        await tick()
        await tick()
    return logs


async def test_a_state_file_that_cannot_be_written_is_logged_at_most_every_ten_minutes_and_its_recovery_once(
    make_loop, queue, clock, tmp_path
):
    """At an error line every tick, a full disk wrote 5 760 lines a day at 15 s."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    loop = make_loop(state_file=blocker / "scaler.json")
    queue.pending = 1
    logs = await ten_minutes_of_failed_saves_then_two_that_work(loop.tick, clock, blocker)
    failed = [entry for entry in logs if entry["event"] == "policy_state_save_failed"]
    assert [entry["more_since_last"] for entry in failed] == [0, 39]
    assert all(entry["log_level"] == "error" for entry in failed)
    [again] = [entry for entry in logs if entry["event"] == "policy_state_saved_again"]
    assert again["failures"] == 41 and again["path"] == str(blocker / "scaler.json")
    assert load_policy_state(blocker / "scaler.json").applied == 1


async def test_the_state_saves_failed_in_the_last_ten_minutes_of_a_failing_spell_are_counted_when_they_end(
    make_loop, queue, clock, tmp_path
):
    """Only a failure after the ten minutes logged how many came before it: a disk full for 3 ticks logged the
    first (more_since_last=0), the other 2 counted nowhere."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    loop = make_loop(state_file=blocker / "scaler.json")
    queue.pending = 1
    with capture_logs() as logs:
        await loop.tick()
        clock.advance(SAVE_FAILED_LOG_EVERY_S - 0.4)  # the ten minutes end 0.4 s from now
        await loop.tick()
        await loop.tick()
        await wait_for(lambda: any(entry["event"] == "policy_state_save_failed_held_back" for entry in logs))
    assert [entry["more_since_last"] for entry in logs if entry["event"] == "policy_state_save_failed"] == [0]
    [held_back] = [entry for entry in logs if entry["event"] == "policy_state_save_failed_held_back"]
    assert (held_back["more_since_last"], held_back["log_level"]) == (2, "error")


async def test_a_tick_that_fails_unexpectedly_is_logged_and_the_loop_holds_and_goes_on(make_loop, backend, queue, wait):
    """Whatever a tick raises (here the policy's arithmetic on a count no reader should pass), nothing is applied
    and the next tick runs: a crashed scaler makes no decisions at all."""
    loop = make_loop(interval_s=0.01)
    queue.pending = 10**400
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(loop.run(stop))
        await wait(lambda: queue.reads >= 2, timeout=5)
        queue.pending = 1
        await wait(lambda: backend.applied == [1], timeout=5)
        stop.set()
        await task
    failed = [entry for entry in logs if entry["event"] == "scaler_tick_failed"]
    assert failed and failed[0]["log_level"] == "error" and "OverflowError" in failed[0]["error"]


def test_a_state_file_a_newer_scaler_wrote_is_refused_naming_it_and_left_as_it_is(tmp_path):
    """A rollback after an upgrade that changed the file. Before: the state file had no version; the older scaler
    set a file it could not read aside as corrupt (the day's spend forgotten) or misread the fields it could.
    Now: refused at the start, the file untouched; one of this version (or of none, as before) is read."""
    path = tmp_path / "scaler.json"
    save_policy_state(path, PolicyState(applied=3))
    assert load_policy_state(path).applied == 3
    newer = json.loads(path.read_text()) | {"version": 2, "applied": "three"}
    path.write_text(json.dumps(newer))

    with pytest.raises(SavedFileUnreadable, match=rf"^SCALER_STATE_FILE {path} was written by a newer comfy-scaler "
                                                   r"\(state version 2; this one reads 1\)"):
        load_policy_state(path)
    assert json.loads(path.read_text()) == newer and [p.name for p in tmp_path.iterdir()] == ["scaler.json"]
    path.write_text(json.dumps({key: value for key, value in newer.items() if key != "version"} | {"applied": 2}))
    assert load_policy_state(path).applied == 2


@pytest.mark.parametrize(("load", "setting"), [(load_policy_state, "SCALER_STATE_FILE"),
                                               (CostLedger.load, "SCALER_LEDGER_FILE")], ids=["state", "ledger"])
def test_a_state_file_path_that_is_a_directory_is_refused_and_left_where_it_is(tmp_path, load, setting):
    """SCALER_STATE_FILE=/var/lib/comfy-scaler (the directory, by mistake): named, never renamed, and no scaler
    starts on it (before, it started afresh and failed to save at every tick, its budgets counting from zero)."""
    (tmp_path / "scaler" / "kept.txt").parent.mkdir()
    (tmp_path / "scaler" / "kept.txt").write_text("the operator's")
    with pytest.raises(SavedFileUnreadable, match=rf"^{setting} {tmp_path}/scaler cannot be read \(IsADirectoryError"):
        load(tmp_path / "scaler")
    assert (tmp_path / "scaler" / "kept.txt").read_text() == "the operator's"
    assert [p.name for p in tmp_path.iterdir()] == ["scaler"]


# Run in a child with a timeout and its memory bounded: a read held in a FIFO's open, or of /dev/zero, fails the test
# rather than hanging it or taking the machine's memory.
READ_SAVED_FILE = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from scaler.ledger import CostLedger, SavedFileUnreadable
from scaler.loop import load_policy_state, saved_health
path = Path(sys.argv[2])
if sys.argv[1] == "status":
    print(f"health {saved_health(path)}")
    sys.exit()
try:
    (load_policy_state if sys.argv[1] == "state" else CostLedger.load)(path)
    print("loaded")
except SavedFileUnreadable as exc:
    print(exc)
"""


@pytest.mark.parametrize("planted", ["fifo", "dev-zero", "past-the-bound"])
@pytest.mark.parametrize(("read", "setting"), [("state", "SCALER_STATE_FILE"), ("ledger", "SCALER_LEDGER_FILE"),
                                               ("status", "SCALER_STATE_FILE")])
def test_a_state_file_that_is_a_fifo_a_device_or_huge_is_refused_not_read_for_good(tmp_path, planted, read, setting):
    """SCALER_STATE_FILE or SCALER_LEDGER_FILE naming a FIFO held the scaler's start (and `status`) in the open for
    good; /dev/zero took memory without end (killed at the 2 GiB this test allows). Now refused, naming the
    setting, the file left where it is; `status` reads no health record from it."""
    path = tmp_path / "scaler.json"
    if planted == "fifo":
        os.mkfifo(path)
    elif planted == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        with path.open("wb") as file:
            file.truncate(MAX_SAVED_BYTES + 1)  # sparse: no disk taken
    done = subprocess.run([sys.executable, "-c", READ_SAVED_FILE, read, str(path)], capture_output=True, text=True,
                          timeout=30, check=False)
    said = done.stdout.strip()
    if read == "status":
        assert said == "health None", done.stderr[-2000:]
    else:
        why = ("more than 67108864 bytes: no file a scaler saved" if planted == "past-the-bound"
               else "a FIFO, a device or a socket, not a file")
        assert said.startswith(f"{setting} {path} cannot be read ({why}); nothing was changed"), done.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["scaler.json"]


@pytest.mark.parametrize(("load", "setting"), [(load_policy_state, "SCALER_STATE_FILE"),
                                               (CostLedger.load, "SCALER_LEDGER_FILE")], ids=["state", "ledger"])
def test_a_state_file_the_scalers_user_may_not_read_is_refused_not_moved_aside_as_corrupt(shared_tmp, load, setting):
    """A volume whose files another user wrote (root, before the image ran as uid 10001): the file is intact,
    only not ours to read. Before, it was moved aside as `<name>.corrupt-<time>` and the scaler started afresh:
    the day's spend forgotten, SCALER_MAX_SPEND_PER_* counting from zero, the file to be put back by hand."""
    shared_tmp.chmod(0o777)  # the folder is the scaler's to write: only the file is not
    path = shared_tmp / "scaler.json"
    save_policy_state(path, PolicyState(applied=3))
    path.chmod(0o600 if os.getuid() == 0 else 0o000)  # root reads anything: the load runs as nobody then

    def load_it() -> str:
        try:
            load(path)
        except SavedFileUnreadable as exc:
            return str(exc)
        return "loaded"

    said = run_as_nobody(load_it)
    assert said.startswith(f"{setting} {path} cannot be read (PermissionError: Permission denied)"), said
    assert "uid 10001" in said
    assert [p.name for p in shared_tmp.iterdir()] == ["scaler.json"]
    assert load_policy_state(path).applied == 3, "intact, where it was"


@pytest.mark.parametrize("load", [load_policy_state, CostLedger.load], ids=["state", "ledger"])
def test_an_unreadable_file_that_cannot_be_moved_aside_is_said_to_be_left_in_place(tmp_path, monkeypatch, load):
    """On a read-only folder the rename fails: the one log line said `kept_as=<name>.corrupt-<time>`, a file that
    does not exist, while the unreadable one lay where it was (to be read, and refused, at every start)."""
    path = tmp_path / "scaler.json"
    path.write_text('{"applied": 2, "ledger": {"charges": [[1, 0.5')

    def read_only_folder(source, target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(source))

    monkeypatch.setattr(os, "replace", read_only_folder)
    with capture_logs() as logs:
        load(path)
    assert [p.name for p in tmp_path.iterdir()] == ["scaler.json"]
    [entry] = [entry for entry in logs if entry["event"].endswith("_unreadable")]
    assert entry["kept_as"].startswith(f"{path} (left in place: it could not be moved aside: OSError")
    assert "Read-only file system" in entry["kept_as"] and ".corrupt-" not in entry["kept_as"]


def test_a_saved_state_file_is_on_disk_rename_included(tmp_path, monkeypatch):
    """The folder is synced after the rename, or a power loss could bring back the previous state file (and with
    it a ledger that forgot spend). Before: only the scratch file was synced."""
    import os
    import stat

    from scaler.ledger import write_json_atomically

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_json_atomically(tmp_path / "scaler.json", {"spent": 1.0})
    assert synced == ["file", "folder"]


KILLED_MID_WRITE = """
import sys, time
from pathlib import Path
import scaler.ledger as ledger
def stall(fd):
    print("writing", flush=True)
    time.sleep(60)
ledger.sync = stall
ledger.write_json_atomically(Path(sys.argv[1]), {"applied": 3})
"""


@pytest.mark.parametrize("load", [load_policy_state, CostLedger.load], ids=["state", "ledger"])
async def test_the_scratch_files_of_writes_killed_mid_way_are_removed_at_the_next_start(tmp_path, load):
    """Each SIGKILL (the OOM killer, `kill -9`) during a save left its `.<name>.<pid>.tmp` beside the file for
    good: 3 kills, 3 files. A scratch file of a process still running may be its write under way: kept."""
    path = tmp_path / "scaler.json"
    for _ in range(3):
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILLED_MID_WRITE, str(path), stdout=asyncio.subprocess.PIPE)
        assert await writer.stdout.readline() == b"writing\n"
        writer.kill()
        await writer.wait()
    killed = {p.name for p in tmp_path.iterdir()}
    assert len(killed) == 3 and all(name.startswith(".scaler.json.") for name in killed)
    alive = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    kept = {f".scaler.json.{alive.pid}.tmp", ".scaler.json.0.tmp", ".other.json.1.tmp", "scaler.json.7.tmp"}
    for name in kept:
        (tmp_path / name).write_text("{")
    try:
        with capture_logs() as logs:
            load(path)
    finally:
        alive.kill()
        await alive.wait()
    assert {p.name for p in tmp_path.iterdir()} == kept
    assert sorted(entry["path"] for entry in logs) == sorted(str(tmp_path / name) for name in killed)


@pytest.mark.parametrize(("saved_s", "now_s"), [(600, 3600), (3600, 600), (600, 600)])
def test_the_spend_of_a_state_saved_under_another_billing_interval_is_never_read_low(tmp_path, saved_s, now_s):
    """A replica at 2.99/h, its state saved 25 min in, read again 2 h 55 min in (Verda bills 8.97): read in the
    new interval as they were, 600 -> 3600 charged 1.495 and 3600 -> 600 charged 11.46."""
    path, started_at = tmp_path / "state.json", 1_000_000.0
    now = started_at + (2 * 60 + 55) * 60
    replica, anchor = Replica("replica-a", started_at), BillingAnchor.STARTED_AT
    ledger = SpendLedger().observe([replica], started_at + 25 * 60, interval_s=saved_s, anchor=anchor,
                                   price_per_hour=2.99)
    save_policy_state(path, PolicyState(ledger=ledger), BillingRule(interval_s=saved_s))
    loaded = load_policy_state(path, BillingRule(interval_s=now_s)).ledger
    spent = loaded.observe([replica], now, interval_s=now_s, anchor=anchor, price_per_hour=2.99).spent_since(0)
    billed = 2.99 * now_s / 3600 * billed_intervals(started_at, now, now_s, anchor)
    assert billed - 1e-9 <= spent <= billed + (2.99 * now_s / 3600 if saved_s != now_s else 0) + 1e-9

@pytest.mark.parametrize(
    "save", [lambda path: save_policy_state(path, PolicyState()), lambda path: CostLedger().save(path)],
    ids=["state", "ledger"],
)
def test_a_symlink_planted_at_the_scratch_name_is_not_written_through(tmp_path, save):
    """The scratch file had a name anyone could tell (`.<name>.<pid>.tmp`) and was opened with open("w"), which
    follows a symlink: one planted there had the file it pointed to overwritten with the state or the ledger."""
    victim = tmp_path / "victim"
    victim.write_text("not the scaler's\n")
    path = tmp_path / "scaler.json"
    planted = tmp_path / f".scaler.json.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    save(path)
    assert victim.read_text() == "not the scaler's\n"
    assert json.loads(path.read_text()) and not path.is_symlink()
    assert {p.name for p in tmp_path.iterdir()} == {"victim", "scaler.json", planted.name}
