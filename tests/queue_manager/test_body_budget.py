"""Request bodies held at once: those small enough to reserve nothing before they arrive count what they send."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from queue_manager import JobStatus, QueueManagerServer, app

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {}}}


async def test_small_bodies_held_at_once_take_from_the_budget_as_they_arrive(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body declaring at most UNCOUNTED_BODY_BYTES (1 MiB) was counted nowhere: 800 clients each sending 1 MiB
    less a byte and then nothing took the queue manager from 63 to 1018 MB, past its 128 MiB budget for bodies.
    They now have ARRIVING_BODIES_BYTES of their own. Here (300 kB, bodies up to 100 kB reserving nothing) four
    holders of 90 kB: the one that finds no room is 503 and closed; once the others go, a report lands."""
    monkeypatch.setattr(app, "ARRIVING_BODIES_BYTES", 300_000, raising=False)
    monkeypatch.setattr(app, "UNCOUNTED_BODY_BYTES", 100_000, raising=False)
    job = queue.store.submit("alice", WORKFLOW)
    queue.store.pop_next("w", queue.mode)
    host, port = queue.url.removeprefix("http://").split(":")
    holders = []
    for _ in range(4):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b" " * 90_000)
        await writer.drain()
        holders.append((reader, writer))
    try:
        answers = [asyncio.create_task(reader.read(65536)) for reader, _ in holders]
        done, _ = await asyncio.wait(answers, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "one holder answered, the others still held"
        answer = done.pop().result()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"Busy: request bodies being read" in answer
    finally:
        for task in answers:
            task.cancel()
        for _, writer in holders:
            writer.close()
    report = json.dumps({"error": "x" * 9000}).encode() + b" " * 80_000  # past the room three holders leave
    async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
        async with asyncio.timeout(10):  # the closed holders give back what they took once the server sees them go
            while (landed := await client.post(
                "/api/workers/fail-job", params={"job_id": job.id}, content=report
            )).status_code == 503:
                await asyncio.sleep(0.05)
        assert landed.status_code == 200, landed.text[:300]
    assert queue.store.get(job.id).status is JobStatus.FAILED
