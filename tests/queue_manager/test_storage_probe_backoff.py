"""What /health's storage probe writes while a storage fault stands: nothing while the disk shows less free room
than the probe needs, and, while its writes keep failing, less and less often (10 s doubling to
STORAGE_PROBE_MAX_EVERY_S). The fault still clears only once a write of that size succeeds."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from queue_manager import QueueManagerServer

from ..conftest import ManualClock

HUGE = {"1": {"class_type": "EmptyImage", "inputs": {"text": "x" * 2_000_000}}}
MINUTES_30 = 30 * 60


def probe_writes(queue: QueueManagerServer, steady: ManualClock) -> list[float]:
    """When /health tried a probe write (by the steady clock): the statements run on the store's connection."""
    times: list[float] = []
    queue.store._conn.set_trace_callback(lambda sql: times.append(steady.now) if "INTO storage_probe" in sql else None)
    return times


async def refuse_a_big_job(queue: QueueManagerServer, client: httpx.AsyncClient) -> None:
    """Room for 100 more pages in the database, and a 2 MB submission refused for it (503: the storage fault)."""
    conn = queue.store._conn
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0] + 100}")
    assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": HUGE})).status_code == 503


@contextlib.asynccontextmanager
async def refusing_a_big_job(
    tmp_path: Path,
) -> AsyncIterator[tuple[QueueManagerServer, httpx.AsyncClient, ManualClock]]:
    steady = ManualClock()
    async with (
        QueueManagerServer(tmp_path / "queue.db", lease_timeout_s=0, steady_clock=steady) as queue,
        httpx.AsyncClient(base_url=queue.url, timeout=30.0) as client,
    ):
        await refuse_a_big_job(queue, client)
        yield queue, client, steady


async def test_failing_probe_writes_back_off(tmp_path: Path) -> None:
    """Before: a 2 MB write tried every 10 s for as long as the fault stood, 180 in 30 minutes (a 50 MiB report
    refused: 50 MiB every 10 s, 2.2 GiB in 10 minutes, bench/storage_probes.py); now 15, 10 s doubling to 160 s.
    A client's write of that size clears the fault at once, and the next fault is probed from 10 s again."""
    async with refusing_a_big_job(tmp_path) as (queue, client, steady):
        probes, start = probe_writes(queue, steady), steady.now
        for _ in range(0, MINUTES_30, 10):
            assert (await client.get("/health")).json()["status"] == "unhealthy"
            steady.advance(10)
        assert [time - start for time in probes] == [0, 10, 30, 70, 150, *range(310, MINUTES_30, 160)]

        queue.store._conn.execute("PRAGMA max_page_count = 1073741823")  # room again: a big write proves it at once
        assert (await client.post("/api/jobs", json={"user_id": "alice", "workflow": HUGE})).status_code == 201
        assert (await client.get("/health")).json()["status"] == "healthy"

        await refuse_a_big_job(queue, client)
        probes.clear()
        start = steady.now
        for _ in range(0, 60, 10):
            assert (await client.get("/health")).json()["status"] == "unhealthy"
            steady.advance(10)
        assert [time - start for time in probes] == [10, 20, 40], "10 s after the last, doubling again from 10 s"


async def test_no_probe_write_while_the_disk_has_no_room_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a full disk took the probe's write (and its ENOSPC) every 10 s; now /health writes nothing while the
    disk's free room is below what the probe needs, and is healthy within 10 s of the room being freed."""
    async with refusing_a_big_job(tmp_path) as (queue, client, steady):
        disk = shutil.disk_usage(tmp_path)
        full = disk._replace(used=disk.total - 1_000_000, free=1_000_000)  # room for 1 MB, not for the 2 MB job
        monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
        probes, start = probe_writes(queue, steady), steady.now
        for _ in range(0, MINUTES_30, 10):
            assert (await client.get("/health")).json()["status"] == "unhealthy"
            steady.advance(10)
        assert probes == []

        monkeypatch.undo()  # the operator freed room
        queue.store._conn.execute("PRAGMA max_page_count = 1073741823")
        assert (await client.get("/health")).json()["status"] == "healthy"
        assert [time - start for time in probes] == [MINUTES_30]
