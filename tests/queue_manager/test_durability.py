"""Restart persistence, atomic pops under contention, and the job-timeout reaper."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from queue_manager import JobStatus, QueueManagerServer

from .conftest import FakeClock


async def test_jobs_survive_a_restart_with_a_file_database(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "queue.db"
    async with QueueManagerServer(db, clock=clock) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        ids = [
            (await client.post("/api/jobs", json={"user_id": "alice", "workflow": {"1": {}}})).json()["id"]
            for _ in range(3)
        ]
        running = (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json()["job"]["id"]

    async with QueueManagerServer(db, clock=clock) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        assert (await client.get(f"/api/jobs/{running}")).json()["status"] == "running"
        status = (await client.get("/api/queue/status")).json()
        assert (status["pending_jobs"], status["running_jobs"]) == (2, 1)
        report = await client.post("/api/workers/complete-job", params={"job_id": running}, json={"result": {}})
        assert report.status_code == 200
        popped = (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json()["job"]["id"]
        assert popped == ids[1], "the queue order survives the restart"
    assert db.exists()


async def test_default_database_is_temporary_and_removed_on_stop() -> None:
    queue = QueueManagerServer()
    await queue.start()
    path = queue.store.path
    assert path.exists()
    await queue.stop()
    assert not path.exists()


async def drain(url: str, worker_id: str, max_pops: int = 100) -> list[str]:
    got = []
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        for _ in range(max_pops):
            response = await client.get("/api/workers/next-job", params={"worker_id": worker_id})
            assert response.status_code == 200
            job = response.json()["job"]
            if job is None:
                return got
            got.append(job["id"])
        raise AssertionError(f"{worker_id} was still being handed jobs after {max_pops} pops")


async def test_concurrent_pops_from_many_clients_and_two_processes_never_share_a_job(
    tmp_path: Path, clock: FakeClock
) -> None:
    db = tmp_path / "shared.db"
    async with QueueManagerServer(db, clock=clock) as first, QueueManagerServer(db, clock=clock) as second:
        submitted = {first.store.submit(f"user{n % 3}", {"1": {"n": n}}).id for n in range(60)}
        urls = [first.url, second.url] * 6

        results = await asyncio.gather(*(drain(url, f"worker-{n}") for n, url in enumerate(urls)))

        handed_out = [job_id for got in results for job_id in got]
        assert len(handed_out) == len(set(handed_out)), "a job was handed to two workers"
        assert set(handed_out) == submitted
        for n, got in enumerate(results):
            for job_id in got:
                assert second.store.get(job_id).worker_id == f"worker-{n}"
        assert sum(1 for got in results if got) > 1, "the test must actually interleave workers"


async def test_reaper_fails_jobs_running_longer_than_the_timeout(clock: FakeClock) -> None:
    async with QueueManagerServer(job_timeout_s=3600, clock=clock) as queue:
        stale = queue.store.submit("alice", {"1": {}})
        queue.store.pop_next("w", queue.mode)
        clock.advance(600)
        fresh = queue.store.submit("alice", {"1": {}})
        queue.store.pop_next("w", queue.mode)
        waiting = queue.store.submit("alice", {"1": {}})

        clock.advance(3000)  # stale has run exactly 3600 s: not yet over
        assert await queue.reap() == []
        clock.advance(1)
        assert await queue.reap() == [stale.id]

        failed = queue.store.get(stale.id)
        assert (failed.status, failed.error, failed.completed_at) == (
            JobStatus.FAILED,
            "Job timeout exceeded",
            clock.now,
        )
        assert queue.store.get(fresh.id).status is JobStatus.RUNNING
        assert queue.store.get(waiting.id).status is JobStatus.PENDING


async def test_reaper_runs_on_its_own_every_interval(clock: FakeClock) -> None:
    async with QueueManagerServer(job_timeout_s=10, reaper_interval_s=0.02, clock=clock) as queue:
        job = queue.store.submit("alice", {"1": {}})
        queue.store.pop_next("w", queue.mode)
        clock.advance(11)
        async with asyncio.timeout(3):
            while queue.store.get(job.id).status is not JobStatus.FAILED:
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=queue.url) as client:
            status: dict[str, Any] = (await client.get("/api/queue/status")).json()
        assert (status["running_jobs"], status["failed_jobs"]) == (0, 1)


def test_each_commit_reaches_the_disk_before_it_is_answered(tmp_path: Path) -> None:
    """synchronous=FULL in WAL mode: a submission answered 201 survives a power loss or a host crash, not only a
    killed process. Before: NORMAL, which loses the last commits then."""
    from queue_manager.store import JobStore

    store = JobStore(tmp_path / "queue.db")
    try:
        [(journal,)] = store._conn.execute("PRAGMA journal_mode").fetchall()
        [(synchronous,)] = store._conn.execute("PRAGMA synchronous").fetchall()
    finally:
        store.close()
    assert (journal, synchronous) == ("wal", 2), "2 is FULL"
