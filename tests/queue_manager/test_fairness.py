"""Sharing the queue between a batch and a workshop: a pending limit per user, round robin over a recent window."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from structlog.testing import capture_logs

from queue_manager import JobStatus, QueueManagerServer
from queue_manager.models import QueueMode
from queue_manager.store import OLDEST_PENDING_PER_USER, SERVED_PER_USER_SINCE, JobStore

from .conftest import FakeClock

DAY_S = 24 * 3600.0


async def post_job(client: httpx.AsyncClient, user_id: str, workflow: dict[str, Any]) -> httpx.Response:
    return await client.post("/api/jobs", json={"user_id": user_id, "workflow": workflow})


async def hand_out_and_complete(client: httpx.AsyncClient) -> dict[str, Any]:
    job = (await client.get("/api/workers/next-job", params={"worker_id": "w1"})).json()["job"]
    answer = await client.post("/api/workers/complete-job", params={"job_id": job["id"]}, json={"result": {}})
    assert answer.status_code == 200, answer.text
    return job


async def test_a_user_at_their_pending_limit_is_refused_while_another_user_still_submits(
    clock: FakeClock, workflow: dict[str, Any]
) -> None:
    """Before: only the shared depth; a 500-image batch filled it and every participant got 429."""
    async with (
        QueueManagerServer(clock=clock, max_pending_per_user=3) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        for _ in range(3):
            assert (await post_job(client, "batch", workflow)).status_code == 201
        with capture_logs() as logs:
            refused = await post_job(client, "batch", workflow)
        assert refused.status_code == 429
        assert refused.json() == {"detail": "User batch has 3 jobs pending (max per user: 3)"}
        assert {"event": "user_pending_limit", "user_id": "batch", "pending": 3, "max_pending_per_user": 3,
                "log_level": "warning"} in logs
        assert (await post_job(client, "alice", workflow)).status_code == 201
        await hand_out_and_complete(client)  # the batch's first: two of its jobs pending now
        assert (await post_job(client, "batch", workflow)).status_code == 201
        assert (await client.get("/api/queue/status")).json()["pending_jobs"] == 4


async def test_concurrent_submissions_through_two_processes_never_pass_the_limit(
    tmp_path: Path, workflow: dict[str, Any]
) -> None:
    db = tmp_path / "jobs.db"
    async with (
        QueueManagerServer(db, max_pending_per_user=5) as first,
        QueueManagerServer(db, max_pending_per_user=5) as second,
        httpx.AsyncClient(base_url=first.url) as one,
        httpx.AsyncClient(base_url=second.url) as other,
    ):
        answers = await asyncio.gather(*(post_job(client, "batch", workflow) for client in [one, other] * 15))
        assert sorted(answer.status_code for answer in answers) == [201] * 5 + [429] * 25
        assert len(first.store.list(user_id="batch", status=JobStatus.PENDING)) == 5


async def test_yesterdays_heavy_user_is_no_longer_served_last_today(
    clock: FakeClock, workflow: dict[str, Any]
) -> None:
    """Before: round robin counted the jobs handed out over the whole 7-day retention."""
    async with (
        QueueManagerServer(mode="round_robin", clock=clock) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        for _ in range(5):
            await post_job(client, "heavy", workflow)
            await hand_out_and_complete(client)
        clock.advance(DAY_S)
        await post_job(client, "alice", workflow)
        await hand_out_and_complete(client)  # alice had one today
        heavy = (await post_job(client, "heavy", workflow)).json()
        alice = (await post_job(client, "alice", workflow)).json()
        assert alice["position_in_queue"] == 1, "alice waits behind heavy's job"
        assert (await hand_out_and_complete(client))["id"] == heavy["id"]


async def test_a_window_of_0_counts_every_job_kept_as_before(clock: FakeClock, workflow: dict[str, Any]) -> None:
    async with (
        QueueManagerServer(mode="round_robin", clock=clock, round_robin_window_s=0) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        for _ in range(5):
            await post_job(client, "heavy", workflow)
            await hand_out_and_complete(client)
        clock.advance(DAY_S)
        await post_job(client, "heavy", workflow)
        alice = (await post_job(client, "alice", workflow)).json()
        assert (await hand_out_and_complete(client))["id"] == alice["id"]


def test_the_counts_read_an_index_never_the_rows(tmp_path: Path) -> None:
    """A user's pending count, each user's oldest pending job and the windowed served count come from an index
    alone. Before: the pending count read every row of the user's jobs, and a round-robin pop every pending row."""
    db = tmp_path / "jobs.db"
    JobStore(db).close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        pending = "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND status = ?"
        plans = {
            query: " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params))
            for query, params in [
                (pending, ("alice", "pending")),
                (OLDEST_PENDING_PER_USER, ("pending",)),
                (SERVED_PER_USER_SINCE, (0.0,)),
            ]
        }
    assert "COVERING INDEX jobs_by_status_user" in plans[pending]
    assert "COVERING INDEX jobs_by_status_user" in plans[OLDEST_PENDING_PER_USER]
    assert "COVERING INDEX jobs_by_user_start" in plans[SERVED_PER_USER_SINCE]


def test_each_round_robin_pop_is_the_head_of_the_ranked_order(clock: FakeClock) -> None:
    """A pop ranks only each user's oldest job; the positions rank them all: they must agree, window or not."""
    shuffle = random.Random(7)
    for window_s in (0, 50):
        store = JobStore(clock=clock, round_robin_window_s=window_s)
        try:
            for step in range(300):
                clock.advance(shuffle.choice([0, 1, 10]))
                if shuffle.random() < 0.6:
                    store.submit(shuffle.choice("abcde"), {"step": step})
                    continue
                ranked = store.pending_positions(QueueMode.ROUND_ROBIN)
                popped = store.pop_next("w1", QueueMode.ROUND_ROBIN)
                assert (popped.id if popped else None) == min(ranked, key=ranked.__getitem__, default=None)
        finally:
            store.close()
