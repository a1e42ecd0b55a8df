"""A flood's refusals still held back by a log throttle when the queue manager stops are logged at its stop: the
minute's end they waited for never came, and their count was lost with the process."""

from __future__ import annotations

import httpx
import pytest
from structlog.testing import capture_logs

from queue_manager import QueueManagerServer, app

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {}}}
REFUSALS = 5


def counted(logs: list[dict], event: str, held_back: str) -> int:
    """The refusals the log tells of: each line, plus the ones it says came before it."""
    return sum(1 + line["more_since_last"] for line in logs if line["event"] == event) + sum(
        line["more_since_last"] for line in logs if line["event"] == held_back
    )


async def test_the_refusals_of_a_burst_are_all_counted_when_the_queue_manager_stops_within_the_minute() -> None:
    """Before: 5 refused polls (wrong token), then a stop, logged 1 of 5 (now 5 of 5)."""
    with capture_logs() as logs:
        async with QueueManagerServer(token="participants-token-1") as queue, httpx.AsyncClient(
            base_url=queue.url, timeout=10
        ) as client:
            for _ in range(REFUSALS):
                refused = await client.get("/api/queue/status", headers={"Authorization": "Bearer wrong-token"})
                assert refused.status_code == 401
    assert counted(logs, "Request refused", "Request refused held back") == REFUSALS


async def test_the_refusals_for_want_of_room_of_a_burst_are_all_counted_when_the_queue_manager_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: 5 bodies and 5 answers refused for want of room, then a stop, logged 1 of 5 each (now 5 of 5)."""
    monkeypatch.setattr(app, "BODIES_IN_FLIGHT_BYTES", 120_000)  # a body of 150 kB never fits ...
    monkeypatch.setattr(app, "BODIES_WAITING_MAX", 0)  # ... and is refused at once
    monkeypatch.setattr(app, "UNCOUNTED_BODY_BYTES", 100_000)
    monkeypatch.setattr(app, "ANSWERS_IN_FLIGHT_BYTES", 100_000)
    monkeypatch.setattr(app, "ANSWER_BUDGET_WAIT_S", 0.0)
    with capture_logs() as logs:
        async with QueueManagerServer() as queue:
            job = queue.store.submit("alice", WORKFLOW)
            queue.store.pop_next("w", queue.mode)
            large = queue.store.submit("alice", WORKFLOW)
            queue.store.pop_next("w", queue.mode)
            queue.store.complete(large.id, {"outputs": [], "blob": "x" * 200_000})
            async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
                for _ in range(REFUSALS):
                    refused = await client.post("/api/workers/fail-job", params={"job_id": job.id},
                                                content=b" " * 150_000)
                    assert refused.status_code == 503, refused.text[:300]
                    assert (await client.get(f"/api/jobs/{large.id}")).status_code == 503
    for event in ("request_body_budget_full", "answer_budget_full"):
        assert counted(logs, event, f"{event}_held_back") == REFUSALS, event
