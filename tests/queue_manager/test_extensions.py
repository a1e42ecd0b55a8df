"""Our extensions of the contract (docs/queue-manager-api.md, "Extensions of the embedded queue manager"):
attempt numbers, fenced reports, heartbeats, hand back at the original place in line, and the lease."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.handbacks import MAX_SHUTDOWN_HANDBACKS
from queue_manager import JobStatus, QueueManagerServer, reaper

from ..conftest import ManualClock
from .conftest import FakeClock
from .test_cli import start_cli

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {}}}


async def submit(client: httpx.AsyncClient, **fields: Any) -> str:
    response = await client.post("/api/jobs", json={"user_id": "alice", "workflow": WORKFLOW, **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def pop(client: httpx.AsyncClient, worker_id: str) -> dict[str, Any]:
    response = await client.get("/api/workers/next-job", params={"worker_id": worker_id})
    assert response.status_code == 200, response.text
    return response.json()["job"]


async def release(
    client: httpx.AsyncClient, job_id: str, worker_id: str, attempt: int, reason: str, cause: str | None = None
) -> httpx.Response:
    return await client.post(
        "/api/workers/release-job",
        params={"job_id": job_id, "worker_id": worker_id, "attempt": attempt},
        json={"reason": reason} if cause is None else {"reason": reason, "cause": cause},
    )


async def job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


# -- attempts and fenced reports --------------------------------------------------------------------------


async def test_fenced_report_from_the_holder_lands(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    assert (await pop(client, "w1"))["attempt"] == 1
    response = await client.post(
        "/api/workers/complete-job",
        params={"job_id": job_id, "worker_id": "w1", "attempt": 1},
        json={"result": {"ok": True}},
    )
    assert response.status_code == 200
    assert (await job(client, job_id))["status"] == "completed"


@pytest.mark.parametrize(
    ("endpoint", "body"), [("complete-job", {"result": {"ok": True}}), ("fail-job", {"error": "boom"})]
)
@pytest.mark.parametrize("fence", [{"worker_id": "w2", "attempt": 1}, {"worker_id": "w1", "attempt": 2}])
async def test_fenced_report_from_anyone_else_is_409_and_changes_nothing(
    client: httpx.AsyncClient, endpoint: str, body: dict[str, Any], fence: dict[str, Any]
) -> None:
    job_id = await submit(client)
    await pop(client, "w1")
    response = await client.post(f"/api/workers/{endpoint}", params={"job_id": job_id, **fence}, json=body)
    assert response.status_code == 409
    assert "not by worker" in response.json()["detail"]
    stored = await job(client, job_id)
    assert (stored["status"], stored["result"], stored["error"]) == ("running", None, None)


async def test_fenced_report_for_a_finished_job_is_409(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    await pop(client, "w1")
    fence = {"job_id": job_id, "worker_id": "w1", "attempt": 1}
    assert (await client.post("/api/workers/fail-job", params=fence, json={"error": "x"})).status_code == 200
    second = await client.post("/api/workers/complete-job", params=fence, json={"result": {}})
    assert second.status_code == 409
    assert (await job(client, job_id))["status"] == "failed", "exactly one report took effect"


# -- heartbeat ---------------------------------------------------------------------------------------------


async def test_heartbeat_renews_the_lease_and_409s_when_the_job_is_not_held(
    client: httpx.AsyncClient, queue: QueueManagerServer, clock: FakeClock
) -> None:
    job_id = await submit(client)
    await pop(client, "w1")
    beat = {"worker_id": "w1", "job_id": job_id, "attempt": 1}
    for _ in range(3):
        clock.advance(50)
        response = await client.post("/api/workers/heartbeat", params=beat)
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
        assert await queue.expire_leases() == []
    assert (await client.post("/api/workers/heartbeat", params={**beat, "worker_id": "w2"})).status_code == 409
    assert (await client.post("/api/workers/heartbeat", params={**beat, "attempt": 2})).status_code == 409
    assert (await client.post("/api/workers/heartbeat", params={**beat, "job_id": "nope"})).status_code == 409
    missing = await client.post("/api/workers/heartbeat", params={"job_id": job_id})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["query", "worker_id"]


async def test_cancelled_job_heartbeat_is_409_so_the_worker_stops_it(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    await pop(client, "w1")
    assert (await client.delete(f"/api/jobs/{job_id}")).status_code == 204
    beat = {"worker_id": "w1", "job_id": job_id, "attempt": 1}
    assert (await client.post("/api/workers/heartbeat", params=beat)).status_code == 409


# -- the lease ---------------------------------------------------------------------------------------------


async def test_silent_worker_job_is_handed_back_and_its_late_report_refused(
    client: httpx.AsyncClient, queue: QueueManagerServer, clock: FakeClock
) -> None:
    job_id = await submit(client)
    await pop(client, "dead")
    clock.advance(60)
    assert await queue.expire_leases() == [], "exactly LEASE_TIMEOUT_S of silence is not yet over"
    clock.advance(1)
    assert await queue.expire_leases() == [job_id]

    stored = await job(client, job_id)
    assert (stored["status"], stored["worker_id"], stored["attempt"]) == ("pending", None, 2)
    assert stored["history"][0]["reason"] == "worker dead stopped heartbeating"
    again = await pop(client, "alive")
    assert (again["id"], again["attempt"]) == (job_id, 2)

    late = await client.post(
        "/api/workers/complete-job",
        params={"job_id": job_id, "worker_id": "dead", "attempt": 1},
        json={"result": {"from": "dead"}},
    )
    assert late.status_code == 409
    done = await client.post(
        "/api/workers/complete-job",
        params={"job_id": job_id, "worker_id": "alive", "attempt": 2},
        json={"result": {"from": "alive"}},
    )
    assert done.status_code == 200
    assert (await job(client, job_id))["result"] == {"from": "alive"}


async def test_polling_with_the_id_of_a_lost_worker_does_not_keep_its_job(
    client: httpx.AsyncClient, queue: QueueManagerServer, clock: FakeClock
) -> None:
    """A fixed WORKER_ID restarted in place (or shared by two replicas) polls while the job the killed process
    held waits for its lease to run out: the polls must not renew it, or it stays running until the reaper."""
    job_id = await submit(client)
    await pop(client, "w1")
    for _ in range(4):
        clock.advance(20)
        assert await pop(client, "w1") is None
    assert await queue.expire_leases() == [job_id]
    stored = await job(client, job_id)
    assert (stored["status"], stored["attempt"]) == ("pending", 2)
    assert (await pop(client, "w1"))["id"] == job_id


@pytest.mark.parametrize(
    ("lease_timeout_s", "frozen_mark_s", "within_s"), [(0.2, reaper.CLOCK_STEP_TOLERANCE_S, 5), (2.0, 0.2, 15)]
)
async def test_the_lease_runs_by_itself(
    monkeypatch: pytest.MonkeyPatch, lease_timeout_s: float, frozen_mark_s: float, within_s: float
) -> None:
    """The 2nd case: a pass that wakes more than CLOCK_STEP_TOLERANCE_S (5 s) after it was due means the process
    was frozen, and every lease is renewed. Lateness counted from the last pass instead of from when this one was
    due makes every pass of the default 15-s interval (a 60-s lease) look 15 s late: every lease renewed each pass,
    no silent worker's job ever handed back. Here scaled down: passes every 0.5 s (a 2-s lease) against a 0.2-s
    mark."""
    monkeypatch.setattr(reaper, "CLOCK_STEP_TOLERANCE_S", frozen_mark_s)
    async with (
        QueueManagerServer(lease_timeout_s=lease_timeout_s) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        job_id = await submit(client)
        await pop(client, "w1")
        async with asyncio.timeout(within_s):
            while (await job(client, job_id))["status"] != "pending":
                await asyncio.sleep(0.05)


@pytest.mark.parametrize("asked", [{"lease_timeout_s": 0}, {"extensions": False}])
async def test_with_the_lease_off_a_silent_worker_keeps_its_job(clock: FakeClock, asked: dict[str, Any]) -> None:
    """LEASE_TIMEOUT_S=0, or comfy-multi's contract (no heartbeats): a lease pass hands nothing back. Read as a
    lease of 0 s, every running job would be handed back at each pass, and failed after MAX_ATTEMPTS."""
    async with QueueManagerServer(clock=clock, **asked) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        job_id = await submit(client)
        await pop(client, "silent")
        clock.advance(1800)
        assert await queue.expire_leases() == []
        stored = queue.store.get(job_id)
        assert (stored.status, stored.worker_id, stored.attempt) == (JobStatus.RUNNING, "silent", 1)


async def test_a_restart_renews_every_lease(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "q.db"
    async with QueueManagerServer(db, clock=clock) as queue:
        job_id = queue.store.submit("alice", WORKFLOW).id
        queue.store.pop_next("w1", queue.mode)
    clock.advance(300)  # the queue was down for five minutes; the worker could not heartbeat
    async with QueueManagerServer(db, clock=clock) as queue:
        assert await queue.expire_leases() == []
        clock.advance(61)
        assert await queue.expire_leases() == [job_id]


async def test_a_queue_manager_restarting_faster_than_the_lease_still_hands_a_dead_worker_s_job_back(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Each start renewed every running lease to a full one: a queue manager crash-looping (up 30 s, down 5 s)
    faster than LEASE_TIMEOUT_S kept a dead worker's job running until --job-timeout failed it. A start now adds
    only the time it was down (since the last worker it heard from), so the live worker's job stays."""
    db = tmp_path / "q.db"
    async with QueueManagerServer(db, clock=clock, lease_timeout_s=60) as queue:
        dead_job = queue.store.submit("alice", WORKFLOW).id
        live_job = queue.store.submit("alice", WORKFLOW).id
        queue.store.pop_next("dead", queue.mode)
        queue.store.pop_next("alive", queue.mode)
    handed_back = []
    for _ in range(4):
        clock.advance(5)
        async with QueueManagerServer(db, clock=clock, lease_timeout_s=60) as queue:
            for _ in range(3):
                clock.advance(10)
                queue.store.heartbeat("alive", live_job, 1)
            handed_back.append(await queue.expire_leases())
            assert queue.store.get(live_job).status == JobStatus.RUNNING
    assert handed_back == [[], [], [dead_job], []], "after 90 s of the queue's uptime since the worker died"


async def test_a_crash_loop_no_worker_reaches_counts_only_its_downtime(tmp_path: Path, clock: FakeClock) -> None:
    """A start added the time since the last worker it heard from: with no worker heard from between two starts
    (each up 10 s, down 5 s: the survivors' retries back off), every earlier outage was counted again and each start
    renewed the dead worker's lease in full, so it ran until --job-timeout failed it. The queue now stamps its own
    lease passes and a start adds only the time since the later of that stamp and the last worker heard from."""
    db = tmp_path / "q.db"
    async with QueueManagerServer(db, clock=clock, lease_timeout_s=60) as queue:
        dead_job = queue.store.submit("alice", WORKFLOW).id
        queue.store.pop_next("dead", queue.mode)
    handed_back = []
    for _ in range(8):
        clock.advance(5)
        async with QueueManagerServer(db, clock=clock, lease_timeout_s=60) as queue:
            clock.advance(10)
            handed_back.append(await queue.expire_leases())
    assert handed_back.index([dead_job]) == 6, "at the first pass over 60 s of the queue's uptime since it died"


async def test_a_start_hands_back_the_leases_that_expired_before_it(tmp_path: Path, clock: FakeClock) -> None:
    """The first lease pass ran one interval (LEASE_TIMEOUT_S / 4) after start: a queue manager crash-looping faster
    than that never handed back a dead worker's job, however long ago its lease ran out. Now a pass runs at start."""
    db = tmp_path / "q.db"
    async with QueueManagerServer(db, clock=clock, lease_timeout_s=60) as queue:
        dead_job = queue.store.submit("alice", WORKFLOW).id
        queue.store.pop_next("dead", queue.mode)
        clock.advance(100)  # the job's worker silent for 100 s, another worker polling, no pass due yet
        queue.store.pop_next("alive", queue.mode)
    clock.advance(5)
    async with QueueManagerServer(db, clock=clock, lease_timeout_s=60) as queue:
        stored = queue.store.get(dead_job)
        assert (stored.status, stored.attempt) == (JobStatus.PENDING, 2), "its lease ran out 40 s before the restart"


@pytest.mark.parametrize("step_s", [7200, -3600])
async def test_a_step_of_the_wall_clock_is_no_worker_s_silence(clock: FakeClock, step_s: float) -> None:
    """NTP stepping the clock, or the host resuming from a pause: forward, every running job was handed back as a
    fault at once (7200 s: attempt 2, one of MAX_ATTEMPTS used); back, a dead worker's job stayed running for
    the step plus the lease (3600 s + 60 s). Leases count the queue's own steady time."""
    steady = ManualClock()
    async with QueueManagerServer(clock=clock, steady_clock=steady, lease_timeout_s=60) as queue:
        job_id = queue.store.submit("alice", WORKFLOW).id
        queue.store.pop_next("w1", queue.mode)
        for clocks in ((clock,), (clock, steady)):  # the step (the wall clock alone), then 10 s of real time
            for moved in clocks:
                moved.advance(step_s if len(clocks) == 1 else 10)
            assert await queue.expire_leases() == []
        assert queue.store.get(job_id).attempt == 1
        for moved in (clock, steady):  # the worker dies: 61 s of silence by either clock
            moved.advance(61)
        assert await queue.expire_leases() == [job_id]


async def test_a_wall_clock_drifting_up_to_the_tolerance_from_the_steady_one_is_no_step(clock: FakeClock) -> None:
    """Slewing moves the wall clock at most 0.5 ms/s: up to CLOCK_STEP_TOLERANCE_S apart from the steady clock
    between two passes, the wall clock's time is taken as it is, silence and all."""
    steady = ManualClock()
    async with QueueManagerServer(clock=clock, steady_clock=steady, lease_timeout_s=60) as queue:
        job_id = queue.store.submit("alice", WORKFLOW).id
        queue.store.pop_next("w1", queue.mode)
        for moved in (clock, steady):
            moved.advance(56)
        assert await queue.expire_leases() == []
        clock.advance(reaper.CLOCK_STEP_TOLERANCE_S)  # 61 s of silence by the wall clock
        assert await queue.expire_leases() == [job_id]


async def test_a_frozen_queue_manager_hands_back_no_live_worker_s_job(tmp_path: Path) -> None:
    """The queue manager stopped (SIGSTOP; a suspended VM, a long swap) for longer than the lease: on SIGCONT the
    overdue lease pass ran before the live worker's next heartbeat and handed its job back as a fault (attempt 2,
    one of MAX_ATTEMPTS used; the worker's heartbeat then 409). The lease pass now sees it woke late, renews."""
    process, url = await start_cli("--db", str(tmp_path / "q.db"), env={"LEASE_TIMEOUT_S": "1", "LOG_FORMAT": "json"})
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            job_id = await submit(client)
            await pop(client, "w1")
            beat = {"worker_id": "w1", "job_id": job_id, "attempt": 1}
            assert (await client.post("/api/workers/heartbeat", params=beat)).status_code == 200
            process.send_signal(signal.SIGSTOP)
            await asyncio.sleep(6.5)  # past the lease, and the reaper's next pass by more than 5 s
            process.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.2)  # the worker's next heartbeat, within its cadence (a quarter of the lease)
            assert (await client.post("/api/workers/heartbeat", params=beat)).status_code == 200
            stored = await job(client, job_id)
            assert (stored["status"], stored["attempt"]) == ("running", 1)
    finally:
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            output = (await process.stdout.read()).decode()
            await process.wait()
    assert "queue_manager_was_frozen" in output


async def test_a_database_from_before_the_extensions_gains_them(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL,"
        " status TEXT NOT NULL, priority INTEGER NOT NULL, workflow TEXT NOT NULL, metadata TEXT NOT NULL,"
        " result TEXT, error TEXT, worker_id TEXT, created_at REAL NOT NULL, started_at REAL, completed_at REAL);"
        "INSERT INTO jobs (id, user_id, status, priority, workflow, metadata, created_at)"
        " VALUES ('old-job', 'alice', 'pending', 2, '{\"1\": {}}', '{}', 1.0);"
    )
    old.close()
    async with QueueManagerServer(db) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        assert (await pop(client, "w1"))["attempt"] == 1
        assert (await release(client, "old-job", "w1", 1, "testing")).json()["status"] == "pending"


# -- hand back ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fifo", "priority", "round_robin"])
async def test_handed_back_job_keeps_its_priority_and_its_place_in_line(clock: FakeClock, mode: str) -> None:
    async with (
        QueueManagerServer(mode=mode, clock=clock) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        first = await submit(client, priority=0, metadata={"lesson": 1})
        clock.advance(1)
        waiting = [await submit(client, priority=0) for _ in range(2)]
        assert (await pop(client, "w1"))["id"] == first
        clock.advance(1)
        await submit(client, priority=0)  # arrives after the hand-back's original submission

        response = await release(client, first, "w1", 1, "ComfyUI process exited")
        assert response.status_code == 200
        assert response.json() == {"status": "pending", "job_id": first, "attempt": 2}

        stored = await job(client, first)
        assert (stored["priority"], stored["position_in_queue"], stored["metadata"]) == (0, 0, {"lesson": 1})
        assert stored["history"] == [
            {"attempt": 1, "worker_id": "w1", "reason": "ComfyUI process exited", "cause": "fault", "at": clock.now}
        ]
        handed = await pop(client, "w2")
        assert (handed["id"], handed["attempt"]) == (first, 2)
        assert (await pop(client, "w3"))["id"] == waiting[0]


@pytest.mark.parametrize("cause", [None, "fault"], ids=["cause-absent", "cause-fault"])
async def test_hand_back_past_max_attempts_fails_the_job_with_every_reason(
    client: httpx.AsyncClient, cause: str | None
) -> None:
    job_id = await submit(client)
    for attempt in (1, 2):
        assert (await pop(client, f"w{attempt}"))["attempt"] == attempt
        answer = await release(client, job_id, f"w{attempt}", attempt, f"crash {attempt}", cause)
        assert answer.json()["status"] == "pending"
    await pop(client, "w3")
    response = await release(client, job_id, "w3", 3, "crash 3", cause)
    assert response.json() == {"status": "failed", "job_id": job_id, "attempt": 3}
    stored = await job(client, job_id)
    assert stored["status"] == "failed"
    assert stored["error"] == "Gave up after 3 attempts: crash 1; crash 2; crash 3"
    assert [entry["cause"] for entry in stored["history"]] == ["fault"] * 3, "an older worker's hand-back is a fault"


STOPPED = "worker w was stopped (shutdown signal) before the job finished"


async def test_shutdown_hand_backs_never_use_up_the_attempts(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    for attempt in range(1, 6):
        assert (await pop(client, "w"))["attempt"] == attempt
        response = await release(client, job_id, "w", attempt, STOPPED, "shutdown")
        assert response.json() == {"status": "pending", "job_id": job_id, "attempt": attempt + 1}
        stored = await job(client, job_id)
        assert (stored["status"], stored["worker_id"], stored["started_at"]) == ("pending", None, None)
    assert [entry["cause"] for entry in stored["history"]] == ["shutdown"] * 5
    assert [entry["attempt"] for entry in stored["history"]] == [1, 2, 3, 4, 5]

    assert (await pop(client, "w"))["attempt"] == 6
    late = await client.post(
        "/api/workers/complete-job", params={"job_id": job_id, "worker_id": "w", "attempt": 5}, json={"result": {}}
    )
    assert late.status_code == 409, "the run number still fences the runs before"
    done = await client.post(
        "/api/workers/complete-job", params={"job_id": job_id, "worker_id": "w", "attempt": 6}, json={"result": {}}
    )
    assert done.status_code == 200
    assert (await job(client, job_id))["status"] == "completed"


async def test_only_faults_count_towards_max_attempts(
    client: httpx.AsyncClient, queue: QueueManagerServer, clock: FakeClock
) -> None:
    """MAX_ATTEMPTS (3) counts crashes and lost workers: fault hand-backs and lease expiries."""
    job_id = await submit(client)
    steps = ["shutdown", "fault", "shutdown", "lease", "shutdown", "shutdown", "fault"]
    for attempt, step in enumerate(steps, start=1):
        await pop(client, "w")
        if step == "lease":
            clock.advance(61)
            assert await queue.expire_leases() == [job_id]
            status = (await job(client, job_id))["status"]
        else:
            status = (await release(client, job_id, "w", attempt, f"{step} {attempt}", step)).json()["status"]
        assert status == ("failed" if attempt == len(steps) else "pending"), f"after {step} {attempt}"
    stored = await job(client, job_id)
    assert stored["error"] == (
        "Gave up after 7 attempts: shutdown 1; fault 2; shutdown 3; worker w stopped heartbeating; shutdown 5; "
        "shutdown 6; fault 7"
    )
    assert [entry["cause"] for entry in stored["history"]] == [
        "shutdown", "fault", "shutdown", "fault", "shutdown", "shutdown", "fault"
    ]  # fmt: skip


async def test_shutdown_hand_backs_are_bounded_too(client: httpx.AsyncClient) -> None:
    job_id = await submit(client)
    for attempt in range(1, MAX_SHUTDOWN_HANDBACKS):
        await pop(client, "w")
        assert (await release(client, job_id, "w", attempt, STOPPED, "shutdown")).json()["status"] == "pending"
    await pop(client, "w")
    response = await release(client, job_id, "w", MAX_SHUTDOWN_HANDBACKS, STOPPED, "shutdown")
    assert response.json() == {"status": "failed", "job_id": job_id, "attempt": 20}
    stored = await job(client, job_id)
    assert stored["error"] == "Gave up after 20 attempts: " + "; ".join([STOPPED] * 20)


async def test_hand_backs_recorded_before_causes_count_as_faults(tmp_path: Path) -> None:
    """A database written before causes were recorded: its history entries were faults when they were made."""
    async with QueueManagerServer(tmp_path / "q.db") as queue, httpx.AsyncClient(base_url=queue.url) as client:
        job_id = await submit(client)
        await pop(client, "w")
        old = [{"attempt": n, "worker_id": "w", "reason": f"crash {n}", "at": 1.0} for n in (1, 2)]
        with sqlite3.connect(tmp_path / "q.db") as db:
            db.execute("UPDATE jobs SET attempt = 3, history = ? WHERE id = ?", (json.dumps(old), job_id))
        assert (await release(client, job_id, "w", 3, STOPPED, "shutdown")).json()["status"] == "pending"
        await pop(client, "w")
        assert (await release(client, job_id, "w", 4, "crash 4", "fault")).json()["status"] == "failed"


async def test_lease_hand_backs_count_towards_max_attempts(clock: FakeClock) -> None:
    async with QueueManagerServer(clock=clock, max_attempts=2, lease_timeout_s=10) as queue:
        job_id = queue.store.submit("alice", WORKFLOW).id
        for _ in range(2):
            queue.store.pop_next("w", queue.mode)
            clock.advance(11)
            await queue.expire_leases()
        stored = queue.store.get(job_id)
        assert stored.status is JobStatus.FAILED
        assert stored.error == "Gave up after 2 attempts: worker w stopped heartbeating; worker w stopped heartbeating"
        assert [entry["cause"] for entry in stored.history] == ["fault", "fault"]


@pytest.mark.parametrize(
    ("params", "body", "status", "loc"),
    [
        ({"worker_id": "w1", "attempt": 2}, {"reason": "r"}, 409, None),
        ({"worker_id": "w2", "attempt": 1}, {"reason": "r"}, 409, None),
        ({"worker_id": "w1"}, {"reason": "r"}, 422, ["query", "attempt"]),
        ({"worker_id": "w1", "attempt": 1}, {"reason": ""}, 422, ["body", "reason"]),
        ({"worker_id": "w1", "attempt": 1}, {"reason": " \n\t"}, 422, ["body", "reason"]),
        ({"worker_id": "w1", "attempt": 1}, {"reason": "x" * 2001}, 422, ["body", "reason"]),
        ({"worker_id": "w1", "attempt": 1}, {}, 422, ["body", "reason"]),
        ({"worker_id": "w1", "attempt": 1}, {"reason": "r", "cause": "crash"}, 422, ["body", "cause"]),
        ({"worker_id": "w1", "attempt": 1}, {"reason": "r", "cause": "SHUTDOWN"}, 422, ["body", "cause"]),
        ({"worker_id": "w1", "attempt": 1}, {"reason": "r", "cause": None}, 422, ["body", "cause"]),
        ({"worker_id": "w1", "attempt": 1}, {"reason": "r", "cause": 1}, 422, ["body", "cause"]),
    ],
)
async def test_hand_back_refusals(
    client: httpx.AsyncClient, params: dict[str, Any], body: dict[str, Any], status: int, loc: list[str] | None
) -> None:
    job_id = await submit(client)
    await pop(client, "w1")
    response = await client.post("/api/workers/release-job", params={"job_id": job_id, **params}, json=body)
    assert response.status_code == status
    if loc:
        assert response.json()["detail"][0]["loc"] == loc
    assert (await job(client, job_id))["status"] == "running"


async def test_hand_back_of_an_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    assert (await release(client, "nope", "w1", 1, "r")).status_code == 404


# -- GET /api/jobs/{id} links a copy to its original ------------------------------------------------------


async def test_get_job_shows_metadata_attempt_and_history_the_list_stays_lean(client: httpx.AsyncClient) -> None:
    original = await submit(client)
    copy = await submit(client, metadata={"requeued_from": original, "attempt": 2})
    stored = await job(client, copy)
    assert (stored["metadata"], stored["attempt"], stored["history"]) == (
        {"requeued_from": original, "attempt": 2},
        1,
        [],
    )
    listed = (await client.get("/api/jobs")).json()
    assert [j["id"] for j in listed] == [original, copy]
    assert "metadata" not in listed[1]


async def test_without_extensions_it_answers_as_comfy_multi_does() -> None:
    """The worker's comfy-multi fallback is tested against this: 404 routes, no attempt, unfenced reports."""
    async with QueueManagerServer(extensions=False) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        job_id = await submit(client)
        assert "attempt" not in await pop(client, "w1")
        for route in ("heartbeat", "release-job"):
            answer = await client.post(f"/api/workers/{route}", params={"job_id": job_id, "worker_id": "w1"})
            assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"})
        stranger = {"job_id": job_id, "worker_id": "w9", "attempt": 7}
        assert (await client.post("/api/workers/fail-job", params=stranger, json={"error": "x"})).status_code == 200
        assert {"attempt", "history", "metadata"}.isdisjoint(await job(client, job_id))
