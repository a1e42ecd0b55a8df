"""A flood's refusals still held back by a log throttle when the queue manager stops are logged at its stop: the
minute's end they waited for never came, and their count was lost with the process. (The budgets' refusals:
test_budget_full_log.py.)"""

from __future__ import annotations

import httpx
from structlog.testing import capture_logs

from queue_manager import QueueManagerServer

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

