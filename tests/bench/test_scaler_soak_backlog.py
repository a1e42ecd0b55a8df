"""bench.scaler_soak's queue stand-in under a capped budget: the backlog it holds, in the bench's own process, stays
within a day of arrivals. Before, it held every job ever queued and not run (~950 more a day): the scaler's RSS,
measured beside it, rose 1.4 MiB a simulated day."""

from __future__ import annotations

import random

from bench.scaler_soak import QueueStandIn, SimClock
from common.timespans import DAY_S, HOUR_S


def test_a_backlog_no_replica_runs_is_given_up_after_a_day():
    clock = SimClock()
    queue = QueueStandIn(clock, random.Random(1))
    for _ in range(int(5 * DAY_S / HOUR_S)):  # five days, no replica
        queue.step(replicas=0, interval_s=HOUR_S)
        clock.advance(HOUR_S)
    assert 0 < len(queue.pending) < 1_500, "a day of arrivals (~1,100), not five"
    assert queue.pending[0].created_at > clock.wall - DAY_S - HOUR_S
    assert queue.given_up + len(queue.pending) > 4_000
