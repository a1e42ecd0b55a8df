"""The mean job duration from queue counters (Little's law), for managers that list no finished jobs."""

from __future__ import annotations

import pytest

from scaler.job_duration import DurationFromCounters


def feed(estimate: DurationFromCounters, samples: list[tuple[float, int, int]]) -> float | None:
    answer = None
    for now, running, finished in samples:
        answer = estimate.observe(now, running, finished)
    return answer


def test_three_replicas_busy_with_90_s_jobs_give_90_s():
    # Every 15 s tick: 3 running; one job finishes every 30 s.
    samples = [(15.0 * n, 3, n // 2) for n in range(40)]
    assert feed(DurationFromCounters(), samples) == pytest.approx(90.0, rel=0.05)


def test_nothing_until_three_jobs_have_finished():
    assert feed(DurationFromCounters(), [(0.0, 2, 0), (60.0, 2, 1), (120.0, 2, 2)]) is None
    assert feed(DurationFromCounters(), [(0.0, 2, 0), (60.0, 2, 1), (120.0, 2, 3)]) == pytest.approx(80.0)


def test_the_window_forgets_old_work():
    estimate = DurationFromCounters(window_s=600.0)
    feed(estimate, [(15.0 * n, 1, n // 20) for n in range(80)])  # 300 s jobs for 20 min
    # then 60 s jobs (one replica, one finished per 60 s) for 20 min: only they are in the window
    answer = feed(estimate, [(1200.0 + 15.0 * n, 1, 4 + n // 4) for n in range(1, 81)])
    assert answer == pytest.approx(60.0, rel=0.05)


def test_a_counter_that_goes_back_starts_again():
    estimate = DurationFromCounters()
    feed(estimate, [(0.0, 2, 100), (60.0, 2, 104)])
    assert estimate.observe(120.0, 2, 3) is None  # the manager restarted: its counts began again
    assert feed(estimate, [(180.0, 2, 5), (240.0, 2, 6)]) == pytest.approx(80.0)


def test_idle_counts_teach_nothing():
    assert feed(DurationFromCounters(), [(15.0 * n, 0, 7) for n in range(10)]) is None
