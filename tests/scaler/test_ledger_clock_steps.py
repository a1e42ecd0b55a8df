"""The spend ledgers across wall-clock steps: a host whose clock was 2 days ahead, then corrected by NTP. The
fleet's (CostLedger, SCALER_LEDGER_FILE) and the single backend's (SpendLedger, SCALER_STATE_FILE).

Before: the charges made while the clock was ahead were dated in the future and counted in every window until
real time passed them (a $82.80 day read $165.60 for days, the daily cap held every scale-up), and the step
forward charged a Verda replica 2 days of intervals (the single backend's ledger: a day) and a RunPod pod a day
of runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from structlog.testing import capture_logs

from common.timespans import DAY_S, HOUR_S
from scaler.billing import BillingAnchor, SpendLedger
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING, BillingRule, CostLedger
from scaler.loop import ScalerLoop, load_policy_state, save_policy_state
from scaler.policy import PolicyState, ScalingConfig
from scaler.providers import VerdaBackend

from ..conftest import ManualClock
from .conftest import DEPLOYMENT, tick_with_the_clock_two_days_ahead_and_back

T0 = 1_800_000_000.0  # real time of the step forward
AHEAD_S = 2 * DAY_S
PRICE = 3.45  # $ an hour: $82.80 a day, $0.575 a Verda interval
INTERVAL = PRICE * 600 / HOUR_S
TICK_S = 60.0
ONE_INTERVAL = INTERVAL + 1e-6  # a window's edge may hold one interval more or less than the truth


@dataclass(frozen=True)
class Replica:
    id: str
    started_at: float


def run(ledger: CostLedger, replica: Replica, rule: BillingRule, real_from: float, real_to: float,
        ahead_s: float = 0.0, *, monotonic: bool = True) -> None:
    """Charge ``replica`` every tick of real time from ``real_from`` to ``real_to``, with the wall clock ``ahead_s``
    ahead. ``monotonic``: the fleet's elapsed time is given (a running scaler), else not (one just started)."""
    at = real_from
    while at <= real_to:
        last = LAST_CHARGED.get(id(ledger))
        elapsed = at - last if monotonic and last is not None else None
        ledger.charge("p", [replica], at + ahead_s, price_per_hour=PRICE, rule=rule, elapsed_s=elapsed)
        LAST_CHARGED[id(ledger)] = at
        at += TICK_S


LAST_CHARGED: dict[int, float] = {}  # ledger -> the real time it was last charged at, as a monotonic clock reads it


def day_and_hour(ledger: CostLedger, now: float) -> tuple[float, float]:
    return ledger.spent_since(now - DAY_S), ledger.spent_since(now - HOUR_S)


def test_a_running_scaler_reads_the_truth_across_two_days_ahead_and_back():
    """A Verda replica up for 2 days; the clock goes 2 days ahead for 10 minutes, then back."""
    ledger, replica = CostLedger(), Replica("v1", T0 - 2 * DAY_S)
    run(ledger, replica, VERDA_BILLING, T0 - DAY_S, T0)
    with capture_logs() as logs:
        run(ledger, replica, VERDA_BILLING, T0 + TICK_S, T0 + 600, AHEAD_S)
        ahead_day, ahead_hour = day_and_hour(ledger, T0 + 600 + AHEAD_S)
        run(ledger, replica, VERDA_BILLING, T0 + 660, T0 + 660)
    assert abs(ahead_day - 82.80) <= ONE_INTERVAL and abs(ahead_hour - PRICE) <= ONE_INTERVAL, "the caps read the truth"
    for now in (T0 + 660, T0 + HOUR_S, T0 + DAY_S):
        run(ledger, replica, VERDA_BILLING, now, now)
        day, hour = day_and_hour(ledger, now)
        assert abs(day - 82.80) <= ONE_INTERVAL, (now - T0, day)
        assert abs(hour - PRICE) <= ONE_INTERVAL, (now - T0, hour)
    steps = [(e["event"], e.get("stepped_s") or e.get("stepped_back_s")) for e in logs if "clock" in e["event"]]
    assert steps == [("ledger_clock_stepped_forward", AHEAD_S), ("ledger_clock_stepped_back", AHEAD_S)]


def test_a_per_second_pod_is_charged_the_time_that_passed_not_the_step():
    ledger, pod = CostLedger(), Replica("r1", T0 - 2 * DAY_S)
    run(ledger, pod, RUNPOD_BILLING, T0 - DAY_S, T0)
    run(ledger, pod, RUNPOD_BILLING, T0 + TICK_S, T0 + 600, AHEAD_S)
    charged = T0 + 600
    for now in (T0 + 660, T0 + HOUR_S, T0 + DAY_S):
        run(ledger, pod, RUNPOD_BILLING, charged + TICK_S, now)  # per-second charges are dated when made
        charged = now
        day, hour = day_and_hour(ledger, now)
        assert abs(day - 82.80) <= PRICE * TICK_S / HOUR_S + 1e-9, (now - T0, day)
        assert abs(hour - PRICE) <= PRICE * TICK_S / HOUR_S + 1e-9, (now - T0, hour)


def test_a_step_forward_charges_a_new_replica_its_half_hour_not_two_days():
    """The clock is stepped 2 days forward and stays: a replica started 30 minutes before is owed 3 intervals."""
    for rule, owed in ((VERDA_BILLING, 4 * INTERVAL), (RUNPOD_BILLING, PRICE * (1800 + TICK_S) / HOUR_S)):
        ledger, replica = CostLedger(), Replica("new", T0 - 1800)
        run(ledger, replica, rule, T0 - 1800, T0)
        run(ledger, replica, rule, T0 + TICK_S, T0 + TICK_S, AHEAD_S)
        now = T0 + TICK_S + AHEAD_S
        assert abs(ledger.spent_since(now - DAY_S) - owed) <= ONE_INTERVAL, rule


def test_a_ledger_saved_while_the_clock_was_ahead_is_brought_back_to_now():
    """No elapsed time to measure the step by (the scaler restarted once NTP corrected the clock): what is dated
    after now is dated now, never dropped; the over-count leaves the windows an hour and a day later."""
    ledger, replica = CostLedger(), Replica("v1", T0 - 2 * DAY_S)
    run(ledger, replica, VERDA_BILLING, T0 - DAY_S, T0, monotonic=False)
    run(ledger, replica, VERDA_BILLING, T0 + TICK_S, T0 + 600, AHEAD_S, monotonic=False)
    ledger = CostLedger.from_json(ledger.to_json())
    with capture_logs() as logs:
        run(ledger, replica, VERDA_BILLING, T0 + 660, T0 + 660, monotonic=False)
    assert ledger.spent_since(T0 + 660 - DAY_S) >= 82.80 - INTERVAL, "never low"
    run(ledger, replica, VERDA_BILLING, T0 + 2 * HOUR_S, T0 + 2 * HOUR_S, monotonic=False)
    assert abs(ledger.spent_since(T0 + HOUR_S) - PRICE) <= ONE_INTERVAL
    for now in (T0 + DAY_S + HOUR_S, T0 + DAY_S + 2 * HOUR_S):
        run(ledger, replica, VERDA_BILLING, now, now, monotonic=False)
        day, hour = day_and_hour(ledger, now)
        assert day >= 82.80 - INTERVAL and abs(day - 82.80) <= ONE_INTERVAL, (now - T0, day)
        assert abs(hour - PRICE) <= ONE_INTERVAL, (now - T0, hour)
    [stepped] = [e for e in logs if e["event"] == "ledger_clock_stepped_back"]
    assert stepped["stepped_back_s"] >= AHEAD_S - 600 and stepped["moved_spend"] > 0


class Ticks:
    """A scaler observing ``replica`` every tick of real time; ``measured``: it reads the time since its last
    observation on a clock never stepped (a running scaler), else not (one just started, or `once` from cron)."""

    def __init__(self, replica: Replica, ledger: SpendLedger | None = None) -> None:
        self.replica, self.ledger = replica, ledger or SpendLedger()
        self.last_real: float | None = None
        self.steps: list[tuple[float, float]] = []  # the clock steps followed, and the $ whose dates moved

    def run(self, real_from: float, real_to: float, ahead_s: float = 0.0, *, measured: bool = True) -> None:
        at = real_from
        while at <= real_to:
            elapsed = at - self.last_real if measured and self.last_real is not None else None
            self.ledger = self.ledger.observe([self.replica], at + ahead_s, interval_s=600.0,
                                              anchor=BillingAnchor.STARTED_AT, price_per_hour=PRICE, elapsed_s=elapsed)
            self.last_real = at
            if self.ledger.clock_step[0]:
                self.steps.append(self.ledger.clock_step)
            at += TICK_S

    def day_and_hour(self, now: float) -> tuple[float, float]:
        return self.ledger.spent_since(now - DAY_S), self.ledger.spent_since(now - HOUR_S)


def test_the_single_backends_spend_reads_the_truth_across_two_days_ahead_and_back():
    """A replica up for 2 days; the clock goes 2 days ahead for 10 minutes, then back."""
    ticks = Ticks(Replica("v1", T0 - 2 * DAY_S))
    ticks.run(T0 - DAY_S, T0)
    ticks.run(T0 + TICK_S, T0 + 600, AHEAD_S)
    ahead_day, ahead_hour = ticks.day_and_hour(T0 + 600 + AHEAD_S)
    ticks.run(T0 + 660, T0 + 660)
    assert abs(ahead_day - 82.80) <= ONE_INTERVAL and abs(ahead_hour - PRICE) <= ONE_INTERVAL, (ahead_day, ahead_hour)
    for now in (T0 + 660, T0 + HOUR_S, T0 + DAY_S):
        ticks.run(now, now)
        day, hour = ticks.day_and_hour(now)
        assert abs(day - 82.80) <= ONE_INTERVAL, (now - T0, day)
        assert abs(hour - PRICE) <= ONE_INTERVAL, (now - T0, hour)
    assert [step for step, _ in ticks.steps] == [AHEAD_S, -AHEAD_S]


def test_the_single_backends_spend_saved_while_ahead_is_brought_back_to_now(tmp_path: Path):
    """No elapsed time to measure the step back by (the scaler restarted once NTP corrected the clock): what the
    state file dates after now is dated now, never dropped; the over-count leaves the windows an hour and a day
    later (before: for 2 days the last hour read the $82.80 charged while the clock was ahead)."""
    ticks = Ticks(Replica("v1", T0 - 2 * DAY_S))
    ticks.run(T0 - DAY_S, T0)
    ticks.run(T0 + TICK_S, T0 + 600, AHEAD_S)
    state_file = tmp_path / "state.json"
    save_policy_state(state_file, PolicyState(ledger=ticks.ledger))
    restarted = Ticks(ticks.replica, load_policy_state(state_file).ledger)
    restarted.run(T0 + 660, T0 + 660, measured=False)
    assert restarted.ledger.spent_since(T0 + 660 - DAY_S) >= 82.80 - INTERVAL, "never low"
    restarted.run(T0 + 2 * HOUR_S, T0 + 2 * HOUR_S, measured=False)
    assert abs(restarted.ledger.spent_since(T0 + HOUR_S) - PRICE) <= ONE_INTERVAL
    for now in (T0 + DAY_S + HOUR_S, T0 + DAY_S + 2 * HOUR_S):
        restarted.run(now, now, measured=False)
        day, hour = restarted.day_and_hour(now)
        assert day >= 82.80 - INTERVAL and abs(day - 82.80) <= ONE_INTERVAL, (now - T0, day)
        assert abs(hour - PRICE) <= ONE_INTERVAL, (now - T0, hour)
    [(stepped_back, moved_spend)] = restarted.steps
    assert stepped_back <= -(AHEAD_S - 600) and moved_spend > 0


def test_on_the_single_backend_a_step_forward_charges_a_new_replica_its_half_hour_not_a_day():
    """The clock is stepped 2 days forward and stays: a replica started 30 minutes before is owed 4 intervals
    (before: a day of them, $82.80), and one up for 2 days reads a $82.80 day throughout."""
    new = Ticks(Replica("new", T0 - 1800))
    new.run(T0 - 1800, T0)
    new.run(T0 + TICK_S, T0 + TICK_S, AHEAD_S)
    assert abs(new.ledger.spent_since(T0 + TICK_S + AHEAD_S - DAY_S) - 4 * INTERVAL) <= ONE_INTERVAL
    old = Ticks(Replica("old", T0 - 2 * DAY_S))
    old.run(T0 - DAY_S, T0)
    for now in (T0 + TICK_S, T0 + HOUR_S, T0 + DAY_S):
        old.run(now, now, AHEAD_S)
        day, hour = old.day_and_hour(now + AHEAD_S)
        assert abs(day - 82.80) <= ONE_INTERVAL and abs(hour - PRICE) <= ONE_INTERVAL, (now - T0, day, hour)


async def test_a_single_verda_backend_is_not_capped_after_the_clock_was_two_days_ahead(
    make_verda_client, wall, queue, verda_scaling, tmp_path: Path
):
    """A single Verda backend with a $20 daily cap. Before: the tick while the wall clock was 2 days ahead charged
    the replica a day of intervals ($82.80), dated in the future; once NTP set the clock back they read as today's
    spend, and the cap held every scale-up until real time passed them."""
    config = ScalingConfig(max_replicas=3, price_per_replica_hour=PRICE, max_spend_per_day=20.0,
                           stabilization_window_s=0.0)
    monotonic = ManualClock(0.0)
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall)
    loop = ScalerLoop(config, backend, queue, clock=wall, monotonic=monotonic, state_file=tmp_path / "state.json")
    try:
        queue.pending = 1
        with capture_logs() as logs:
            await tick_with_the_clock_two_days_ahead_and_back(loop, wall, monotonic)
        assert verda_scaling() == (1, 1)
        queue.pending = 10
        wall.advance(15.0)
        monotonic.advance(15.0)
        decision = await loop.tick()
        assert verda_scaling() == (3, 3), decision.details
        assert loop.state.ledger.spent_since(wall() - DAY_S) <= 3 * INTERVAL + 1e-9, "1 interval, 2 new ones"
        steps = [(e["event"], e.get("stepped_s") or e.get("stepped_back_s")) for e in logs if "clock" in e["event"]]
        assert steps == [("ledger_clock_stepped_forward", 2 * DAY_S), ("ledger_clock_stepped_back", 2 * DAY_S)]
        saved = load_policy_state(tmp_path / "state.json").ledger
        assert saved.observed_at == wall() and saved.clock_step == (0.0, 0.0), "what was logged is not logged again"
    finally:
        await backend.aclose()
