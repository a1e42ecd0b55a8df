"""/health after a storage fault: "unhealthy" while the database still cannot take a write, "healthy" again once it
can, even on an idle queue where nothing else writes (no leases, no submissions, no workers). It tries a write at
most every STORAGE_PROBE_EVERY_S, however often it is asked."""

from __future__ import annotations

from pathlib import Path

import httpx

from queue_manager import QueueManagerServer
from queue_manager.app import STORAGE_PROBE_EVERY_S

from ..conftest import ManualClock


async def test_an_idle_queue_is_healthy_again_once_its_storage_recovers(tmp_path: Path) -> None:
    """Before: "unhealthy" for good after the disk had room again, until some client wrote (LEASE_TIMEOUT_S=0: no
    lease pass stamps the queue alive), and the platform restarted a queue manager that could serve."""
    steady = ManualClock()
    async with (
        QueueManagerServer(tmp_path / "queue.db", lease_timeout_s=0, steady_clock=steady) as queue,
        httpx.AsyncClient(base_url=queue.url, timeout=30.0) as client,
    ):
        conn = queue.store._conn
        [(pages,)] = conn.execute("PRAGMA page_count").fetchall()
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # what a full disk answers, without filling one
        big = {"1": {"class_type": "EmptyImage", "inputs": {"text": "x" * 200_000}}}
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": big})).status_code == 503
        for _ in range(3):
            assert (await client.get("/health")).json()["status"] == "unhealthy", "still full: a fault, not hidden"
            steady.advance(STORAGE_PROBE_EVERY_S)
        assert await queue.reap() == []

        conn.execute("PRAGMA max_page_count = 1073741823")  # room again
        assert (await client.get("/health")).json()["status"] == "healthy"
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0] + 2}")
        bigger = {"1": {"class_type": "EmptyImage", "inputs": {"text": "x" * 400_000}}}  # than the probe's freed room
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": bigger})).status_code == 503
        assert (await client.get("/health")).json()["status"] == "unhealthy"
        conn.execute("PRAGMA max_page_count = 1073741823")
        steady.advance(STORAGE_PROBE_EVERY_S - 1)
        assert (await client.get("/health")).json()["status"] == "unhealthy", "probed a second ago: not yet again"
        steady.advance(1)
        assert (await client.get("/health")).json()["status"] == "healthy"
        assert queue.store.storage_fault is None
        assert (await client.get("/api/jobs", params={"user_id": "alice"})).json() == []
