"""The idempotent poll (docs/queue-manager-api.md, extension 10): a `next-job` answer lost on its way back (a proxy's
502 after the hand-out, a reset connection, the queue manager restarted) is answered again to the retry of that
poll, instead of leaving the job `running` for no one until its lease hands it back as a fault.

Before: the retry popped another job (or none); the lost one was handed back after LEASE_TIMEOUT_S counting one
fault (history `[fault]`), so three lost answers failed a job that never ran."""

from __future__ import annotations

import socket
import sqlite3
import uuid
from pathlib import Path

import httpx
import pytest

from queue_manager import JobStatus, QueueManagerServer
from queue_manager.models import QueueMode
from queue_manager.store import JobStore
from worker.queue_client import MAX_TRIES_PER_POLL, PollError, QueueClient

from .conftest import FakeClock
from .test_with_the_worker import SLOW, make_worker, simulator

LOST_ANSWERS = {
    "proxy 502 after the hand-out": {"status": 502, "body": "<html>502 Bad Gateway</html>", "after": True},
    "connection reset after the hand-out": {"drop": True, "after": True},
}


@pytest.mark.parametrize("lost", LOST_ANSWERS.values(), ids=LOST_ANSWERS.keys())
async def test_a_lost_poll_answer_is_answered_again_and_the_job_runs_once_attempt_1(tmp_path: Path, lost) -> None:
    """The real worker: its first poll takes the job and loses the answer; its retry gets that job, runs it
    once and reports it; no fault, no second prompt. Before: the retry found the queue empty, the worker
    idled out, and the job was still `running` for no one."""
    async with simulator(tmp_path, blur_s=0.05) as comfy, QueueManagerServer(test_hooks=True) as qm:
        job = qm.store.submit("alice", SLOW)
        qm.faults.inject("next-job", **lost)
        assert await make_worker(qm, comfy, tmp_path).run() == 0
        done = qm.store.get(job.id)
        assert (done.status, done.attempt, done.history, done.worker_id) == (
            JobStatus.COMPLETED, 1, [], "embedded-worker",
        )  # fmt: skip
        assert [r.endpoint for r in qm.reports.landed(job.id)] == ["complete-job"]
        assert len(comfy.prompts_received) == 1


async def test_the_retry_gets_the_same_job_and_a_new_poll_gets_the_next(queue: QueueManagerServer) -> None:
    first = queue.store.submit("alice", SLOW)
    second = queue.store.submit("bob", SLOW)
    queue.faults.inject("next-job", status=502, after=True)
    client = QueueClient(queue.url, "gpu-1")
    try:
        with pytest.raises(PollError, match="HTTP 502"):
            await client.next_job()
        again = await client.next_job()  # the retry of that poll
        assert (again["id"], again["attempt"]) == (first.id, 1)
        assert queue.store.get(second.id).status is JobStatus.PENDING, "the retry popped nothing else"
        following = await client.next_job()  # a new poll: answered, so a new id
        assert (following["id"], following["attempt"]) == (second.id, 1)
        assert await client.next_job() is None
    finally:
        await client.aclose()
    running = queue.store.get(first.id)
    assert (running.status, running.worker_id, running.attempt, running.history) == ("running", "gpu-1", 1, [])


ANSWERED = {
    "a 200 the worker cannot read": [{"status": 200, "body": "<html>OK</html>", "after": True}],
    "a 409 refusing the poll id": [{"status": 502, "after": True}, {"status": 409}],
}


@pytest.mark.parametrize("answers", ANSWERED.values(), ids=ANSWERED.keys())
async def test_after_an_answer_even_an_unusable_one_the_next_poll_is_a_new_one(
    queue: QueueManagerServer, answers: list[dict]
) -> None:
    """The poll id is kept only while no answer came back. Replaying an answer the worker cannot read would
    renew that job's lease at every retry, for ever; a refused id would be refused for ever."""
    lost = queue.store.submit("alice", SLOW)
    following = queue.store.submit("bob", SLOW)
    for answer in answers:
        queue.faults.inject("next-job", **answer)
    client = QueueClient(queue.url, "gpu-1")
    try:
        for _ in answers:
            with pytest.raises(PollError):
                await client.next_job()
        assert (await client.next_job())["id"] == following.id
    finally:
        await client.aclose()
    assert queue.store.get(lost.id).status is JobStatus.RUNNING, "left to its lease, as before poll ids"


async def test_a_poll_whose_every_answer_is_lost_is_given_up_after_5_tries(queue: QueueManagerServer) -> None:
    """A proxy that 502s every answer carrying one job (too large for it, say): before the bound, the worker
    replayed that job for ever, its lease renewed by each try and no other job taken, until --job-timeout."""
    lost = queue.store.submit("alice", SLOW)
    following = queue.store.submit("bob", SLOW)
    queue.faults.inject("next-job", status=502, after=True, times=MAX_TRIES_PER_POLL)
    client = QueueClient(queue.url, "gpu-1")
    try:
        for _ in range(MAX_TRIES_PER_POLL):
            with pytest.raises(PollError):
                await client.next_job()
        assert queue.store.get(following.id).status is JobStatus.PENDING, "every try was answered with the same job"
        assert (await client.next_job())["id"] == following.id
    finally:
        await client.aclose()
    left = queue.store.get(lost.id)
    assert (left.status, left.attempt) == (JobStatus.RUNNING, 1), "left to its lease, as before poll ids"


async def test_two_replicas_sharing_a_worker_id_never_get_each_others_job(queue: QueueManagerServer) -> None:
    """Keyed by the poll id, not the worker id: replica B's poll, between A's lost answer and A's retry, pops the
    next job, and A's retry gets its own."""
    jobs = [queue.store.submit("alice", SLOW) for _ in range(3)]
    queue.faults.inject("next-job", status=502, after=True)
    replica_a, replica_b = QueueClient(queue.url, "shared-id"), QueueClient(queue.url, "shared-id")
    try:
        with pytest.raises(PollError):
            await replica_a.next_job()  # takes jobs[0]; the answer is lost
        got_b = await replica_b.next_job()
        got_a = await replica_a.next_job()
        got_b_next = await replica_b.next_job()
    finally:
        await replica_a.aclose()
        await replica_b.aclose()
    assert [got_a["id"], got_b["id"], got_b_next["id"]] == [jobs[0].id, jobs[1].id, jobs[2].id]
    assert {got_a["attempt"], got_b["attempt"], got_b_next["attempt"]} == {1}


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
        "job": {"id": first.id, "workflow": SLOW, "user_id": "alice", "metadata": {}, "attempt": 1,
                "lease_timeout_s": 60.0}
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


async def test_the_retry_after_a_queue_manager_restart_gets_the_same_job(tmp_path: Path) -> None:
    """The queue manager is killed between the hand-out and the answer: the poll id is on the job's row, in the
    database file, so the restarted one answers the retry with that job."""
    db = tmp_path / "queue.db"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = QueueManagerServer(db, test_hooks=True)
    await first.start(port=port)
    job = first.store.submit("alice", SLOW)
    behind = first.store.submit("bob", SLOW)
    first.faults.inject("next-job", drop=True, after=True)
    client = QueueClient(first.url, "gpu-1")
    try:
        with pytest.raises(PollError):
            await client.next_job()
        await first.stop()
        restarted = QueueManagerServer(db)
        await restarted.start(port=port)
        try:
            again = await client.next_job()
            assert (again["id"], again["attempt"]) == (job.id, 1)
            assert restarted.store.get(behind.id).status is JobStatus.PENDING
            running = restarted.store.get(job.id)
            assert (running.status, running.worker_id, running.history) == ("running", "gpu-1", [])
        finally:
            await restarted.stop()
    finally:
        await client.aclose()


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
