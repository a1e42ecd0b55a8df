"""The live loop's job timings, read from the queue manager stand-in: ages, run so far, recent durations."""

from __future__ import annotations

import httpx
import pytest
from structlog.testing import capture_logs

from common.handbacks import HandBackCause
from queue_manager.server import QueueManagerServer
from queue_manager.store import Fence
from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig
from scaler.queue_status import QueueStatusReader, job_timings

from ..conftest import ManualClock

WORKFLOW = {"1": {"class_type": "Noop", "inputs": {}}}


def complete_jobs(server: QueueManagerServer, clock: ManualClock, durations: list[float]) -> None:
    """One job after the other, each taken by a worker and completed ``duration`` s later."""
    for duration in durations:
        job = server.store.submit("alice", WORKFLOW)
        server.store.pop_next("w1", server.mode)
        clock.now += duration
        server.store.complete(job.id, {})


async def learned_from_the_counters(
    backend, ticks: int, *, step_forward_at: int | None = None, monotonic: ManualClock | None = None,
    one_fails: bool = False,
) -> list[float]:
    """The job duration each tick learns, a tick every 20 s, from a queue manager that lists no finished jobs
    (comfy-multi): two replicas each run 40 s jobs back to back (``one_fails``: one of each two fails at its end).
    At tick ``step_forward_at`` the wall clock is stepped an hour forward; ``monotonic``, when given, is the clock
    never stepped."""
    clock = ManualClock(1_700_000_000.0)
    async with QueueManagerServer(clock=clock, test_hooks=True) as server:
        server.faults.inject("list-jobs", status=200, body=[], times=1000)  # comfy-multi's answer
        store = server.store
        backend.clock = clock
        running = []
        async with QueueStatusReader(server.url) as reader:
            loop = ScalerLoop(ScalingConfig(target_wait_s=120), backend, reader, clock=clock, monotonic=monotonic)
            learned = []
            for step in range(ticks):
                if step % 2 == 0:
                    for n, job in enumerate(running):
                        if one_fails and n == 0:
                            store.fail(job.id, "RuntimeError: out of memory")
                        else:
                            store.complete(job.id, {})
                    running = [store.submit("alice", WORKFLOW) for _ in range(2)]
                    for _ in running:
                        store.pop_next("w1", server.mode)
                learned.append((await loop.tick()).details["job_duration_s"])
                clock.now += 20 + (3600 if step == step_forward_at else 0)
                if monotonic is not None:
                    monotonic.now += 20
    return learned


async def test_timings_come_from_the_job_lists_and_feed_the_policy(backend):
    clock = ManualClock(1_700_000_000.0)
    async with QueueManagerServer(clock=clock) as server:
        store = server.store
        complete_jobs(server, clock, [100.0, 110.0, 400.0, 120.0])  # four completions, one an outlier
        bob = store.submit("bob", WORKFLOW)
        clock.now += 20
        store.pop_next("w1", server.mode)
        store.release(bob.id, Fence(), "worker stopping", max_attempts=3, cause=HandBackCause.SHUTDOWN)  # a scale-down
        store.pop_next("w1", server.mode)  # its 2nd run, since now, after a 20 s wait
        clock.now += 30
        store.submit("carol", WORKFLOW)  # pending, submitted now
        clock.now += 12

        async with QueueStatusReader(server.url) as reader:
            status = await reader.read_with_timings(clock.now)
            assert (status.pending_jobs, status.running_jobs) == (1, 1)
            assert [round(age) for age in status.pending_ages_s] == [12]
            assert [round(spent) for spent in status.running_elapsed_s] == [42]
            assert [round(wait) for wait in status.running_waited_s] == [20]  # what a restart would add to
            assert sorted(round(d) for d in status.recent_durations_s) == [100, 110, 120, 400]

            backend.clock = clock
            loop = ScalerLoop(ScalingConfig(target_wait_s=120), backend, reader, clock=clock)
            observation = await loop.observe()
            decision = await loop.tick()
    # How long the jobs that started last had waited, in start order: the p95 allowance's input.
    assert observation.recent_waits_s == (0.0, 0.0, 0.0, 0.0, 20.0)
    assert observation.running_waited_s == (20.0,)
    assert decision.details["job_duration_s"] == 110.0  # the median of the last completions, not the outlier
    assert decision.details["long_job_duration_s"] == 400.0  # ... and a long one, to judge running jobs by


async def test_the_status_still_counts_when_the_job_lists_fail(qm):
    qm.store.submit("alice", WORKFLOW)
    qm.faults.inject("list-jobs", status=500, times=3)
    async with QueueStatusReader(qm.url) as reader:
        status = await reader.read_with_timings(0.0)
    assert status.pending_jobs == 1
    assert status.recent_durations_s == () and status.pending_ages_s == ()


def test_bad_timestamps_are_skipped_not_fatal():
    timings = job_timings({
        "pending": [{"created_at": "not a time"}, "junk", {"created_at": "2026-01-01T00:00:00"}],
        "completed": [{"started_at": "2026-01-01T00:00:10+00:00", "completed_at": "2026-01-01T00:00:05+00:00"}],
    }, now=1_767_225_610.0)
    assert timings["pending_ages_s"] == (10.0,)
    assert timings["recent_durations_s"] == ()


def test_recent_waits_are_the_queue_time_of_the_jobs_that_started_last():
    def job(created, started):
        return {"created_at": f"2026-01-01T00:{created}+00:00", "started_at": f"2026-01-01T00:{started}+00:00",
                "completed_at": "2026-01-01T01:00:00+00:00"}

    timings = job_timings({
        "running": [job("10:00", "12:30")],
        "completed": [job("00:00", "00:20"), job("01:00", "00:59"), {"created_at": "junk"}],
    }, now=1_767_229_200.0)
    assert timings["recent_waits_s"] == (20.0, 150.0)  # in start order; a start before creation is skipped


def test_a_clock_a_few_seconds_apart_reads_as_no_time_never_negative_and_a_zero_length_job_counts():
    """The manager's clock a few seconds ahead of this host's (within CLOCK_SKEW_S, believed): a job created or
    started "in the future" has waited or run 0 s, as one started before it was created has waited."""
    timings = job_timings({
        "pending": [{"created_at": "2026-01-01T00:00:05+00:00"}],
        "running": [
            {"created_at": "2025-12-31T23:59:50+00:00", "started_at": "2026-01-01T00:00:03+00:00"},
            {"created_at": "2026-01-01T00:00:02+00:00", "started_at": "2025-12-31T23:59:58+00:00"},
            {"started_at": "2025-12-31T23:59:30+00:00"},
        ],
        "completed": [{"created_at": "2025-12-31T23:59:00+00:00", "started_at": "2025-12-31T23:59:00+00:00",
                       "completed_at": "2025-12-31T23:59:00+00:00"}],
    }, now=1_767_225_600.0)  # 2026-01-01T00:00:00Z
    assert timings == {
        "pending_ages_s": (0.0,), "running_elapsed_s": (0.0, 2.0, 30.0), "running_waited_s": (13.0, 0.0, 0.0),
        "recent_durations_s": (0.0,), "recent_waits_s": (0.0, 13.0),
    }


def test_a_timestamp_is_believed_from_a_week_old_to_five_minutes_ahead_and_not_a_second_beyond():
    """Each at its own offset, as the manager wrote it: 01:00:00+01:00 is midnight UTC."""
    with capture_logs() as logs:
        timings = job_timings({"pending": [
            {"created_at": "2025-12-25T01:00:00+01:00"},  # exactly 7 days before now
            {"created_at": "2025-12-24T23:59:59+00:00"},  # a second more
            {"created_at": "2026-01-01T00:05:00+00:00"},  # exactly 300 s ahead
            {"created_at": "2026-01-01T00:05:01+00:00"},
            {"created_at": "2025-12-31T23:00:00-01:00"},  # now
        ]}, now=1_767_225_600.0)  # 2026-01-01T00:00:00Z
    assert timings["pending_ages_s"] == (7 * 86_400.0, 0.0, 0.0)
    (warning,) = [entry for entry in logs if entry["event"] == "queue_job_times_implausible"]
    assert warning["skipped"] == {"created_at": 2}
    assert warning["believed"] == "from 7 days ago to 300 s ahead of this host's clock"


async def test_the_estimate_follows_the_latest_completions_not_the_first_ones():
    """600 jobs of 100 s, then 60 of 300 s: the estimate is 300 s (listing the oldest 500 once gave 100 s)."""
    clock = ManualClock(1_700_000_000.0)
    async with QueueManagerServer(clock=clock) as server:
        complete_jobs(server, clock, [100.0] * 600 + [300.0] * 60)
        async with QueueStatusReader(server.url) as reader:
            status = await reader.read_with_timings(clock.now)
    assert len(status.recent_durations_s) == 50
    assert set(status.recent_durations_s) == {300.0}


async def test_newest_first_lists_finished_jobs_by_completion_time(qm):
    first, second = qm.store.submit("alice", WORKFLOW), qm.store.submit("bob", WORKFLOW)
    qm.store.pop_next("w1", qm.mode)
    qm.store.pop_next("w2", qm.mode)
    qm.store.complete(second.id, {})
    qm.store.complete(first.id, {})  # submitted first, finished last
    async with httpx.AsyncClient(base_url=qm.url) as client:
        newest = (await client.get("/api/jobs", params={"status": "completed", "order": "newest"})).json()
        default = (await client.get("/api/jobs", params={"status": "completed"})).json()
        refused = await client.get("/api/jobs", params={"order": "random"})
    assert [job["id"] for job in newest] == [first.id, second.id]
    assert [job["id"] for job in default] == [first.id, second.id]  # submission order, as comfy-multi
    assert refused.status_code == 422 and "order" in refused.text


@pytest.mark.parametrize("one_fails", [False, True], ids=["all-complete", "half-fail"])
async def test_without_listed_completions_the_duration_comes_from_the_counters(backend, one_fails):
    """comfy-multi lists no finished jobs; two replicas each running 40 s jobs back to back teach 40 s, whether the
    jobs complete or fail (a failed job held its replica as long)."""
    learned = await learned_from_the_counters(backend, 24, one_fails=one_fails)
    assert learned[0] == 180.0  # the default until three jobs have finished
    assert learned[-1] == pytest.approx(40.0, rel=0.1)


async def test_a_wall_clock_stepped_forward_does_not_count_the_step_as_time_jobs_ran(backend):
    """Before: the counters' estimate measured the busy replica-seconds on the wall clock, so NTP stepping it an hour
    forward counted the hour as run time: two replicas running 40 s jobs made the mean job up to 1,850 s, and still
    440 s ten minutes on. Measured on the clock never stepped: 40 s."""
    learned = await learned_from_the_counters(backend, 40, step_forward_at=20, monotonic=ManualClock(5_000.0))
    assert learned[20] == pytest.approx(40.0, rel=0.1)
    assert learned[21:] == pytest.approx([40.0] * 19, rel=0.25)
