"""Refused requests reach the log: a worker with the wrong token, a client sending bad jobs, a flood. Before, the
queue manager answered 401/403/422 and logged nothing, so the operator could not tell them apart."""

from __future__ import annotations

import httpx
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from structlog.testing import capture_logs

from queue_manager import QueueManagerServer
from queue_manager.refusal_log import REFUSAL_LOG_EVERY_S, RefusalLog

from ..conftest import wait_for

PARTICIPANTS = "participants-token-1"
WORKERS = "workers-token-2"


def refusals(logs: list[dict]) -> list[dict]:
    return [line for line in logs if line["event"] == "Request refused"]


async def test_each_kind_of_refusal_is_logged_naming_route_cause_and_peer_never_the_token() -> None:
    with capture_logs() as logs:
        async with (
            QueueManagerServer(token=PARTICIPANTS, worker_token=WORKERS) as queue,
            httpx.AsyncClient(base_url=queue.url) as client,
        ):
            participant = {"Authorization": f"Bearer {PARTICIPANTS}"}
            await client.get("/api/workers/next-job?worker_id=w", headers=participant)
            await client.get("/api/queue/status", headers={"Authorization": "Bearer not-the-token-at-all"})
            await client.post("/api/jobs", headers=participant, json={"user_id": "alice", "workflow": "not a graph"})
            await client.get("/api/jobs/no-such-job", headers=participant)
    lines = {line["status"]: line for line in refusals(logs)}
    assert set(lines) == {401, 403, 404, 422}
    assert lines[403]["route"] == "next-job" and "participants' token" in lines[403]["cause"]
    assert lines[401]["route"] == "queue-status" and lines[401]["cause"] == "Not authenticated"
    assert lines[422]["route"] == "submit-job" and "body.workflow" in lines[422]["cause"]
    assert "not a graph" not in lines[422]["cause"]  # what the client sent is not logged
    assert lines[404]["route"] == "get-job"
    assert all(line["peer"] == "127.0.0.1" and line["log_level"] == "warning" for line in lines.values())
    text = repr(logs)
    assert PARTICIPANTS not in text and WORKERS not in text and "not-the-token-at-all" not in text


async def test_a_flood_logs_one_line_per_minute_per_status_counting_the_rest() -> None:
    now = [1000.0]
    log_refusals = RefusalLog(clock=lambda: now[0]).middleware

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"detail": "Not authenticated"}, status=int(request.query["status"]))

    with capture_logs() as logs:
        for _ in range(1000):
            await log_refusals(make_mocked_request("GET", "/api/queue/status?status=401"), refuse)
        await log_refusals(make_mocked_request("GET", "/api/queue/status?status=422"), refuse)  # not hidden by them
        now[0] += REFUSAL_LOG_EVERY_S
        await log_refusals(make_mocked_request("GET", "/api/queue/status?status=401"), refuse)
    assert [(line["status"], line["more_since_last"]) for line in refusals(logs)] == [(401, 0), (422, 0), (401, 999)]


async def test_the_refusals_of_a_floods_last_minute_are_counted_when_it_ends() -> None:
    """Only a refusal after the minute logged how many came before it: a burst of 37 401s that stopped within the
    minute logged one line and "more_since_last=0", the other 36 counted nowhere."""
    now = [1000.0]
    log_refusals = RefusalLog(clock=lambda: now[0]).middleware

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"detail": "Not authenticated"}, status=401)

    with capture_logs() as logs:
        await log_refusals(make_mocked_request("GET", "/api/queue/status"), refuse)
        now[0] += REFUSAL_LOG_EVERY_S - 0.2  # the minute ends 0.2 s from now
        for _ in range(36):
            await log_refusals(make_mocked_request("GET", "/api/queue/status"), refuse)
        await wait_for(lambda: any(line["event"] == "Request refused held back" for line in logs))
    held_back = [line for line in logs if line["event"] == "Request refused held back"]
    assert [(line["status"], line["more_since_last"], line["log_level"]) for line in held_back] == [
        (401, 36, "warning")
    ]
    assert [line["more_since_last"] for line in refusals(logs)] == [0]
