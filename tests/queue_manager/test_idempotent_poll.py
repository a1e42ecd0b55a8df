"""The idempotent poll (docs/queue-manager-api.md, extension 10): a `next-job` answer lost on its way back (a proxy's
502 after the hand-out, a reset connection, the queue manager restarted) is answered again to the retry of that
poll, instead of leaving the job `running` for no one until its lease hands it back as a fault.

Before: the retry popped another job (or none); the lost one was handed back after LEASE_TIMEOUT_S counting one
fault (history `[fault]`), so three lost answers failed a job that never ran."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import httpx
import pytest

from queue_manager import JobStatus, QueueManagerServer
from queue_manager.models import QueueMode
from queue_manager.store import JobStore

from .conftest import FakeClock
from .test_with_the_worker import SLOW


async def test_a_retried_poll_id_gets_the_job_it_was_answered_with_and_a_new_one_the_next(
    queue: QueueManagerServer, client: httpx.AsyncClient
) -> None:
    first = queue.store.submit("alice", SLOW)
    second = queue.store.submit("bob", SLOW)
    poll_id = str(uuid.uuid4())
    queue.faults.inject("next-job", status=502, after=True)
    lost = await client.get("/api/workers/next-job", params={"worker_id": "gpu-1", "poll_id": poll_id})
    assert lost.status_code == 502
    retried = await client.get("/api/workers/next-job", params={"worker_id": "gpu-1", "poll_id": poll_id.upper()})
    assert retried.json() == {
        "job": {"id": first.id, "workflow": SLOW, "user_id": "alice", "metadata": {}, "attempt": 1}
    }
    assert queue.store.get(second.id).status is JobStatus.PENDING, "the retry popped nothing else"
    following = await client.get("/api/workers/next-job", params={"worker_id": "gpu-1", "poll_id": str(uuid.uuid4())})
    assert following.json()["job"]["id"] == second.id
    running = queue.store.get(first.id)
    assert (running.status, running.worker_id, running.attempt, running.history) == ("running", "gpu-1", 1, [])


async def test_a_poll_id_answered_to_another_worker_is_409_and_hands_out_nothing(
    queue: QueueManagerServer, client: httpx.AsyncClient
) -> None:
    job = queue.store.submit("alice", SLOW)
    waiting = queue.store.submit("bob", SLOW)
    poll_id = str(uuid.uuid4())
    taken = await client.get("/api/workers/next-job", params={"worker_id": "w1", "poll_id": poll_id})
    assert taken.json()["job"]["id"] == job.id
    response = await client.get("/api/workers/next-job", params={"worker_id": "w2", "poll_id": poll_id})
    assert response.status_code == 409
    assert response.json() == {"detail": f"poll_id {poll_id} answered another worker's poll; send a new poll_id"}
    assert queue.store.get(waiting.id).status is JobStatus.PENDING
    assert queue.store.get(job.id).worker_id == "w1"


async def test_a_retry_after_the_lease_handed_the_job_back_is_a_new_hand_out(clock: FakeClock) -> None:
    """The retry came too late: the lease already gave the job back (a fault, attempt 2). The poll id does not
    bring back attempt 1; the retry is served as a new poll (here the same job again, as attempt 2)."""
    async with QueueManagerServer(clock=clock, lease_timeout_s=60, test_hooks=True) as queue:
        job = queue.store.submit("alice", SLOW)
        poll_id = str(uuid.uuid4())
        assert queue.store.pop_next("gpu-1", queue.mode, poll_id=poll_id).attempt == 1
        clock.advance(61)
        assert await queue.expire_leases() == [job.id]
        again = queue.store.poll("gpu-1", queue.mode, poll_id=poll_id)
        assert (again.job.id, again.job.attempt, again.again) == (job.id, 2, False)
        assert [entry["cause"] for entry in again.job.history] == ["fault"]


async def test_a_replayed_answer_renews_the_lease(clock: FakeClock) -> None:
    """The retry proves the worker holding that very hand-out is alive (a successor process polls under a new
    poll id, so it renews nothing): the job does not expire under the worker that has just received it."""
    async with QueueManagerServer(clock=clock, lease_timeout_s=60, test_hooks=True) as queue:
        job = queue.store.submit("alice", SLOW)
        poll_id = str(uuid.uuid4())
        queue.store.pop_next("gpu-1", queue.mode, poll_id=poll_id)
        clock.advance(50)
        assert queue.store.poll("gpu-1", queue.mode, poll_id=poll_id).again
        clock.advance(50)
        assert await queue.expire_leases() == []
        assert queue.store.get(job.id).status is JobStatus.RUNNING


async def test_a_poll_id_is_forgotten_once_its_job_stops_running(queue: QueueManagerServer) -> None:
    """One poll id per running job at most: completed, failed, handed back, timed out or cancelled, it is gone."""
    ids = [str(uuid.uuid4()) for _ in range(3)]
    jobs = [queue.store.submit("alice", SLOW) for _ in ids]
    for poll_id in ids:
        queue.store.pop_next("gpu-1", queue.mode, poll_id=poll_id)
    queue.store.complete(jobs[0].id, {"ok": True})
    queue.store.fail(jobs[1].id, "boom")
    queue.store.cancel(jobs[2].id)
    with sqlite3.connect(queue.store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs WHERE poll_id IS NOT NULL").fetchone() == (0,)


@pytest.mark.parametrize(
    "query",
    ["worker_id=w&poll_id=not-a-uuid", "worker_id=w&poll_id=", f"worker_id=w&poll_id={'0' * 10_000}",
     f"worker_id=w&poll_id={uuid.uuid4()}%0a"],
    ids=["not a uuid", "empty", "10 kB", "trailing newline"],
)  # fmt: skip
async def test_a_malformed_poll_id_is_422_naming_it_and_takes_no_job(
    queue: QueueManagerServer, client: httpx.AsyncClient, query: str
) -> None:
    job = queue.store.submit("alice", SLOW)
    response = await client.get(f"/api/workers/next-job?{query}")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "poll_id"]
    assert "input" not in error
    assert queue.store.get(job.id).status is JobStatus.PENDING


async def test_a_poll_id_given_twice_is_422(queue: QueueManagerServer, client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/workers/next-job?worker_id=w&poll_id={uuid.uuid4()}&poll_id={uuid.uuid4()}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "poll_id"]


async def test_without_extensions_a_poll_id_is_ignored_as_comfy_multi_ignores_it() -> None:
    async with QueueManagerServer(extensions=False) as peer, httpx.AsyncClient(base_url=peer.url) as http:
        job = peer.store.submit("alice", SLOW)
        response = await http.get("/api/workers/next-job", params={"worker_id": "w", "poll_id": "anything"})
        assert response.status_code == 200
        assert response.json()["job"] == {"id": job.id, "workflow": SLOW, "user_id": "alice", "metadata": {}}


def test_a_database_from_before_poll_ids_gains_the_column_and_its_index(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL,"
            " status TEXT NOT NULL, priority INTEGER NOT NULL, workflow TEXT NOT NULL, metadata TEXT NOT NULL,"
            " result TEXT, error TEXT, worker_id TEXT, created_at REAL NOT NULL, started_at REAL, completed_at REAL,"
            " attempt INTEGER NOT NULL DEFAULT 1, history TEXT NOT NULL DEFAULT '[]', lease_at REAL)"
        )
    store = JobStore(db)
    try:
        job = store.submit("alice", SLOW)
        poll_id = str(uuid.uuid4())
        assert store.pop_next("w", QueueMode.FIFO, poll_id=poll_id).id == job.id
        replay = store.poll("w", QueueMode.FIFO, poll_id=poll_id)
        assert (replay.job.id, replay.again) == (job.id, True)
    finally:
        store.close()
    with sqlite3.connect(db) as conn:
        index = conn.execute("SELECT name FROM sqlite_master WHERE name = 'jobs_by_poll'").fetchone()
    assert index == ("jobs_by_poll",)
