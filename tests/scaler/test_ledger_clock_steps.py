"""The cost ledger across wall-clock steps: a host whose clock was 2 days ahead, then corrected by NTP.

Before: the charges made while the clock was ahead were dated in the future and counted in every window until
real time passed them (a $82.80 day read $165.60 for days, the daily cap held every scale-up), and the step
forward charged a Verda replica 2 days of intervals and a RunPod pod a day of runtime."""

from __future__ import annotations

from dataclasses import dataclass

from structlog.testing import capture_logs

from scaler.billing import DAY_S, HOUR_S
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING, BillingRule, CostLedger

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
