"""/health after a storage fault of a big write: the database has room for /health's own 64 KiB probe and for
small jobs, not for the job that failed. The fault stands until as much room as that write needed is proven."""

from __future__ import annotations

from pathlib import Path

import httpx

from queue_manager import QueueManagerServer
from queue_manager.app import STORAGE_PROBE_EVERY_S, STORAGE_PROBE_MAX_EVERY_S

from ..conftest import ManualClock

HUGE = {"1": {"class_type": "EmptyImage", "inputs": {"text": "x" * 2_000_000}}}
SMALL = {"1": {"class_type": "EmptyImage", "inputs": {"text": "x" * 100_000}}}


async def test_room_for_the_probe_does_not_hide_a_disk_too_full_for_the_job_that_failed(tmp_path: Path) -> None:
    """Before: 64 KiB fitting was enough, and /health said "healthy" at its next probe while every 2 MB submission
    still answered 503; now the probe writes as much as the failed write needed (bounded), and "unhealthy" stands."""
    steady = ManualClock()
    async with (
        QueueManagerServer(tmp_path / "queue.db", lease_timeout_s=0, steady_clock=steady) as queue,
        httpx.AsyncClient(base_url=queue.url, timeout=30.0) as client,
    ):
        conn = queue.store._conn
        [(pages,)] = conn.execute("PRAGMA page_count").fetchall()
        conn.execute(f"PRAGMA max_page_count = {pages + 100}")  # ~400 KB of room: the probe and a 100 KB job fit
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": HUGE})).status_code == 503
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": SMALL})).status_code == 201
        for _ in range(2):
            assert (await client.get("/health")).json()["status"] == "unhealthy", "room for 64 KiB, not for 2 MB"
            steady.advance(STORAGE_PROBE_EVERY_S)
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": HUGE})).status_code == 503

        conn.execute("PRAGMA max_page_count = 1073741823")  # room again
        steady.advance(STORAGE_PROBE_MAX_EVERY_S)  # the probes failed meanwhile: the next is this far at most
        assert (await client.get("/health")).json()["status"] == "healthy"
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": HUGE})).status_code == 201
        assert [job["status"] for job in (await client.get("/api/jobs", params={"user_id": "alice"})).json()] == [
            "pending", "pending"]
