"""Optional bearer-token auth: off by default, on for every /api/ endpoint when a token is set."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from queue_manager import QueueManagerServer
from queue_manager.participants import add_participant

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


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"\xed\xa0\x80abc", b"caf\xe9"], ids=["not-utf8", "surrogate", "latin-1"])
@pytest.mark.parametrize("with_participants", [False, True], ids=["token", "participants"])
@pytest.mark.parametrize("path", ["/api/jobs", "/api/workers/next-job?worker_id=w"])
async def test_a_token_that_is_not_utf8_is_refused_401_not_a_500(
    tmp_path: Path, raw: bytes, with_participants: bool, path: str
) -> None:
    """Before: the bytes arrived as lone surrogates and encoding them raised UnicodeEncodeError: a 500 and a traceback
    in the log for any client, no token needed."""
    participants = None
    if with_participants:
        participants = tmp_path / "participants"
        add_participant(participants, "alice")
    with capture_logs() as logs:
        async with QueueManagerServer(token=TOKEN, worker_token="w0rker", participants_file=participants) as queue:
            host, port = queue.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + raw
                         + b"\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(5):
                answer = await reader.read()
            writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:100]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs
