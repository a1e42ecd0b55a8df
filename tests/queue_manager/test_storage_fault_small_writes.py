"""/health on a database with room for small writes only (a disk nearly full): a lease pass, a worker's poll or
heartbeat writes a few bytes, which fit; a job's submission does not. The fault stands until a write needing as much
room as /health's own probe (64 KiB) succeeds."""

from __future__ import annotations

from pathlib import Path

import httpx

from queue_manager import QueueManagerServer

from ..conftest import ManualClock

BIG = {"1": {"class_type": "EmptyImage", "inputs": {"text": "x" * 200_000}}}


async def test_small_writes_do_not_hide_a_disk_too_full_for_a_job(tmp_path: Path) -> None:
    """Before: the next lease pass (it stamps the queue alive) or a worker's poll cleared the fault, and /health said
    "healthy" while every submission of 200 KB still answered 503; now "unhealthy" until a big write fits."""
    steady = ManualClock()
    async with (
        QueueManagerServer(tmp_path / "queue.db", lease_timeout_s=60, steady_clock=steady) as queue,
        httpx.AsyncClient(base_url=queue.url, timeout=30.0) as client,
    ):
        conn = queue.store._conn
        [(pages,)] = conn.execute("PRAGMA page_count").fetchall()
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # what a nearly full disk answers, without filling one
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": BIG})).status_code == 503
        assert await queue.expire_leases() == []  # a small write: it fits
        poll = await client.get("/api/workers/next-job", params={"worker_id": "w1"})
        assert poll.status_code in (200, 204), poll.text
        assert (await client.get("/health")).json()["status"] == "unhealthy", "small writes fit, jobs do not"
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": BIG})).status_code == 503

        conn.execute("PRAGMA max_page_count = 1073741823")  # room again
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": BIG})).status_code == 201
        assert (await client.get("/health")).json()["status"] == "healthy", "a job's write proves the room"
