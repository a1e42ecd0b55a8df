"""The refusals for want of room (request bodies', answers' budget) are one log line a minute with the count since:
a flood that stops within its minute still has its count said, when the minute ends or when the queue manager
stops first."""

from __future__ import annotations

import httpx
import pytest
from structlog.testing import capture_logs

from queue_manager import QueueManagerServer, app

from ..conftest import wait_for

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {}}}
REFUSALS = 5
EVENTS = ("request_body_budget_full", "answer_budget_full")


def counted(logs: list[dict], event: str) -> int:
    """The refusals the log tells of: each line, plus the ones it says came before it."""
    lines = [line for line in logs if line["event"] == event]
    held_back = [line for line in logs if line["event"] == f"{event}_held_back"]
    return sum(1 + line["more_since_last"] for line in lines) + sum(line["more_since_last"] for line in held_back)


@pytest.fixture
def small_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "BODIES_IN_FLIGHT_BYTES", 120_000)  # a body of 150 kB never fits ...
    monkeypatch.setattr(app, "BODIES_WAITING_MAX", 0)  # ... and is refused at once
    monkeypatch.setattr(app, "UNCOUNTED_BODY_BYTES", 100_000)
    monkeypatch.setattr(app, "ANSWERS_IN_FLIGHT_BYTES", 100_000)
    monkeypatch.setattr(app, "ANSWER_BUDGET_WAIT_S", 0.0)


async def refuse_for_want_of_room(queue: QueueManagerServer) -> None:
    """REFUSALS bodies and REFUSALS answers refused, each 503."""
    job = queue.store.submit("alice", WORKFLOW)
    queue.store.pop_next("w", queue.mode)
    large = queue.store.submit("alice", WORKFLOW)
    queue.store.pop_next("w", queue.mode)
    queue.store.complete(large.id, {"outputs": [], "blob": "x" * 200_000})
    async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
        for _ in range(REFUSALS):
            refused = await client.post("/api/workers/fail-job", params={"job_id": job.id}, content=b" " * 150_000)
            assert refused.status_code == 503, refused.text[:300]
            assert (await client.get(f"/api/jobs/{large.id}")).status_code == 503


@pytest.mark.usefixtures("small_budgets")
async def test_the_refusals_for_want_of_room_of_a_burst_that_stops_are_all_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: 5 bodies and 5 answers refused within the minute logged "more_since_last=0" once each, the other 4
    counted nowhere (counted: 1 of 5 → 5 of 5)."""
    monkeypatch.setattr(app, "REFUSAL_LOG_EVERY_S", 1.0)  # the minute, made a second
    async with QueueManagerServer() as queue:
        with capture_logs() as logs:
            await refuse_for_want_of_room(queue)
            await wait_for(lambda: all(counted(logs, event) == REFUSALS for event in EVENTS))
    assert {line["log_level"] for line in logs if line["event"].endswith("_held_back")} == {"warning"}


@pytest.mark.usefixtures("small_budgets")
async def test_the_refusals_for_want_of_room_of_a_burst_are_all_counted_when_the_queue_manager_stops() -> None:
    """Before: 5 bodies and 5 answers refused for want of room, then a stop, logged 1 of 5 each (now 5 of 5)."""
    with capture_logs() as logs:
        async with QueueManagerServer() as queue:
            await refuse_for_want_of_room(queue)
    for event in EVENTS:
        assert counted(logs, event) == REFUSALS, event
