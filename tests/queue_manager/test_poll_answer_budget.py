"""A poll's answer carries its job's workflow and metadata (up to 11 MB): it holds its share of the answers' budget
while it is built and written, as a job's view or a list does."""

from __future__ import annotations

import asyncio
import socket
import uuid

import httpx
import pytest

from queue_manager import QueueManagerServer, app

BIG = {"1": {"class_type": "EmptyImage", "inputs": {"text": "x" * 6_000_000}}}  # more than loopback buffers take


async def test_polls_answered_at_once_hold_no_more_than_the_answers_budget(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a poll's answer was counted nowhere, so two polls of 6 MB jobs left unread held 12 MB under a 10 MB
    budget (any number of them: a worker token repeating one poll_id got the same job each time); now the second
    waits for room, then is 503 Retry-After, and its retry (same poll_id) is handed the same job once there is."""
    monkeypatch.setattr(app, "ANSWERS_IN_FLIGHT_BYTES", 10_000_000)
    monkeypatch.setattr(app, "ANSWER_BUDGET_WAIT_S", 0.3)
    first, second = (queue.store.submit("alice", BIG).id for _ in range(2))
    host, port = queue.url.removeprefix("http://").split(":")
    unread = socket.create_connection((host, int(port)))
    unread.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        unread.sendall(f"GET /api/workers/next-job?worker_id=w1&poll_id={uuid.uuid4()} HTTP/1.1\r\nHost: x\r\n\r\n"
                       .encode())  # and never read
        async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
            async with asyncio.timeout(5):
                while queue.store.get(first).worker_id != "w1":
                    await asyncio.sleep(0.05)
            poll = {"worker_id": "w2", "poll_id": str(uuid.uuid4())}
            refused = await client.get("/api/workers/next-job", params=poll)
            assert refused.status_code == 503, refused.text[:300]
            assert refused.headers["Retry-After"] == "1"
            assert refused.json()["detail"].startswith("Busy: answers being sent hold")
            unread.close()  # its reservation ends with it (its write fails or stalls out)
            async with asyncio.timeout(5):
                while (handed := await client.get("/api/workers/next-job", params=poll)).status_code == 503:
                    await asyncio.sleep(0.05)
            job = handed.json()["job"]
            assert (job["id"], job["attempt"], job["workflow"]) == (second, 1, BIG)
    finally:
        unread.close()
