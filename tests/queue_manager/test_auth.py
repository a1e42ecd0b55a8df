"""Optional bearer-token auth: off by default, on for every /api/ endpoint when a token is set."""

from __future__ import annotations

import httpx
import pytest
from structlog.testing import capture_logs

from queue_manager import QueueManagerServer

TOKEN = "s3cret-token-value"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/workers/next-job?worker_id=w"),
        ("POST", "/api/workers/complete-job?job_id=x"),
        ("POST", "/api/workers/fail-job?job_id=x"),
        ("GET", "/api/queue/status"),
        ("POST", "/api/jobs"),
        ("GET", "/api/jobs"),
        ("GET", "/api/jobs/x"),
        ("DELETE", "/api/jobs/x"),
    ],
)
async def test_every_api_endpoint_needs_the_token(method: str, path: str) -> None:
    with capture_logs() as logs:
        async with QueueManagerServer(token=TOKEN) as queue, httpx.AsyncClient(base_url=queue.url) as client:
            missing = await client.request(method, path)
            wrong = await client.request(method, path, headers={"Authorization": "Bearer nope"})
            basic = await client.request(method, path, headers={"Authorization": f"Basic {TOKEN}"})
            right = await client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
    for response in (missing, wrong, basic):
        assert (response.status_code, response.json()) == (401, {"detail": "Not authenticated"})
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert right.status_code != 401
    assert TOKEN not in repr(logs)


async def test_health_stays_open_with_a_token() -> None:
    async with QueueManagerServer(token=TOKEN) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        assert (await client.get("/health")).status_code == 200


async def test_authorised_worker_round_trip() -> None:
    headers = {"Authorization": f"bearer {TOKEN}"}
    async with (
        QueueManagerServer(token=TOKEN) as queue,
        httpx.AsyncClient(base_url=queue.url, headers=headers) as client,
    ):
        job = queue.store.submit("alice", {"1": {}})
        assert (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json()["job"]["id"] == job.id
        done = await client.post("/api/workers/complete-job", params={"job_id": job.id}, json={"result": {}})
        assert done.status_code == 200


async def test_no_token_means_no_auth(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/queue/status")).status_code == 200
    assert (await client.get("/api/queue/status", headers={"Authorization": "Bearer anything"})).status_code == 200
