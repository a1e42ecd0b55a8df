"""A worker token beside the participants' token: /api/workers/ takes only the worker token, every other /api/
route takes either. Before it, participants held the one token and could take, read, report or fail anyone's job."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from queue_manager import JobStatus, QueueManagerServer
from standins.comfyui import ComfyUISimulator

from ..conftest import run_module_to_exit
from .test_cli import REPO, start_cli
from .test_with_the_worker import make_worker

PARTICIPANTS = "participants-token-1"
WORKERS = "workers-token-2"

WORKER_ROUTES = [
    ("GET", "/api/workers/next-job?worker_id=w"),
    ("POST", "/api/workers/complete-job?job_id=x&worker_id=w&attempt=1"),
    ("POST", "/api/workers/fail-job?job_id=x&worker_id=w&attempt=1"),
    ("POST", "/api/workers/heartbeat?job_id=x&worker_id=w&attempt=1"),
    ("POST", "/api/workers/release-job?job_id=x&worker_id=w&attempt=1"),
]
USER_ROUTES = [
    ("GET", "/api/queue/status"),
    ("POST", "/api/jobs"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/x"),
    ("DELETE", "/api/jobs/x"),
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def head_answering_a_report_of_50_mb_unsent(url: str, token: str) -> bytes:
    """The answer's head to a complete-job report sent with ``token`` that declares a 50 MB body and sends none."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/workers/complete-job?job_id=x HTTP/1.1\r\nHost: q\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50000000\r\n" + f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return head


@pytest.mark.parametrize(("method", "path"), WORKER_ROUTES)
async def test_the_participants_token_is_refused_on_every_worker_route(method: str, path: str) -> None:
    body: dict[str, Any] = {"result": {}, "error": "x", "reason": "x"}
    with capture_logs() as logs:
        async with (
            QueueManagerServer(token=PARTICIPANTS, worker_token=WORKERS) as queue,
            httpx.AsyncClient(base_url=queue.url) as client,
        ):
            job = queue.store.submit("alice", {"1": {}})
            participant = await client.request(method, path, headers=bearer(PARTICIPANTS), json=body)
            missing = await client.request(method, path, json=body)
            wrong = await client.request(method, path, headers=bearer("nope"), json=body)
            untouched = queue.store.get(job.id)
            worker = await client.request(method, path, headers=bearer(WORKERS), json=body)
    assert participant.status_code == 403
    assert "QUEUE_MANAGER_WORKER_TOKEN" in participant.json()["detail"]
    assert "participants' token" in participant.json()["detail"]
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert "QUEUE_MANAGER_WORKER_TOKEN" in refused.json()["detail"]
    assert (untouched.status, untouched.worker_id) == (JobStatus.PENDING, None), "no participant took the job"
    assert worker.status_code not in (401, 403)
    assert PARTICIPANTS not in repr(logs) and WORKERS not in repr(logs)


@pytest.mark.parametrize(("method", "path"), USER_ROUTES)
async def test_either_token_opens_every_other_route(method: str, path: str) -> None:
    body = {"user_id": "alice", "workflow": {"1": {}}}
    async with (
        QueueManagerServer(token=PARTICIPANTS, worker_token=WORKERS) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        participant = await client.request(method, path, headers=bearer(PARTICIPANTS), json=body)
        worker = await client.request(method, path, headers=bearer(WORKERS), json=body)
        missing = await client.request(method, path, json=body)
    assert participant.status_code not in (401, 403)
    assert worker.status_code not in (401, 403)
    assert (missing.status_code, missing.json()) == (401, {"detail": "Not authenticated"})


async def test_a_participants_report_is_refused_before_its_body_is_read() -> None:
    """The 403 comes with the head alone: 50 MB declared and none sent, the answer arrives and says the connection
    closes (a body read first would have the server wait for it)."""
    async with QueueManagerServer(token=PARTICIPANTS, worker_token=WORKERS, test_hooks=True) as queue:
        head = await head_answering_a_report_of_50_mb_unsent(queue.url, PARTICIPANTS)
        assert queue.reports.all() == []
    assert head.startswith(b"HTTP/1.1 403 ")
    assert b"Connection: close" in head


async def test_a_worker_completes_a_job_with_the_worker_token_while_participants_use_theirs(
    tmp_path: Path, workflow: dict[str, Any]
) -> None:
    comfy = ComfyUISimulator(tmp_path / "out", tmp_path / "temp")
    await comfy.start()
    try:
        async with (
            QueueManagerServer(token=PARTICIPANTS, worker_token=WORKERS, test_hooks=True) as queue,
            httpx.AsyncClient(base_url=queue.url, headers=bearer(PARTICIPANTS)) as participant,
        ):
            submitted = await participant.post("/api/jobs", json={"user_id": "alice", "workflow": workflow})
            assert submitted.status_code == 201
            job_id = submitted.json()["id"]
            with capture_logs() as logs:
                assert await make_worker(queue, comfy, tmp_path, queue_manager_token=WORKERS).run() == 0
            done = await participant.get(f"/api/jobs/{job_id}")
            [report] = queue.reports.landed(job_id)
    finally:
        await comfy.stop()
    assert done.json()["status"] == "completed" and done.json()["worker_id"] == "embedded-worker"
    assert report.endpoint == "complete-job"
    assert PARTICIPANTS not in repr(logs) and WORKERS not in repr(logs)


async def test_a_worker_given_the_participants_token_stops_saying_so(tmp_path: Path) -> None:
    """Serverless: 3 refused polls and exit 2, the queue manager's reason in the worker's own line."""
    comfy = ComfyUISimulator(tmp_path / "out", tmp_path / "temp")
    await comfy.start()
    try:
        async with QueueManagerServer(token=PARTICIPANTS, worker_token=WORKERS) as queue:
            job = queue.store.submit("alice", {"1": {}})
            with capture_logs() as logs:
                worker = make_worker(queue, comfy, tmp_path, queue_manager_token=PARTICIPANTS)
                assert await asyncio.wait_for(worker.run(), 10) == 2
            assert queue.store.get(job.id).status is JobStatus.PENDING
    finally:
        await comfy.stop()
    [exit_line] = [e for e in logs if e["event"] == "Queue manager refused this worker's credentials; exiting"]
    assert "HTTP 403" in exit_line["error"] and "participants' token" in exit_line["error"]
    assert PARTICIPANTS not in repr(logs)


EXIT_LINE = "Queue manager refused this worker's credentials; exiting"


async def test_the_workers_line_tells_the_participants_token_from_a_wrong_one(tmp_path: Path) -> None:
    """Before: a 403 for the participants' token ended "QUEUE_MANAGER_TOKEN is wrong", as a wrong token's 401 does;
    the operator checked the token and found it right (it opens every participants' route). Now the worker's own
    line says which token it holds and which to give it, after the queue manager's detail; a 401 keeps its cause."""
    participants = (
        "QUEUE_MANAGER_TOKEN is the participants' token: worker routes take only the queue manager's worker token "
        "(its QUEUE_MANAGER_WORKER_TOKEN); give the worker that one as its QUEUE_MANAGER_TOKEN"
    )
    comfy = ComfyUISimulator(tmp_path / "out", tmp_path / "temp")
    await comfy.start()
    lines = {}
    try:
        async with QueueManagerServer(token=PARTICIPANTS, worker_token=WORKERS) as queue:
            for sent in (PARTICIPANTS, "not-a-token", None):
                with capture_logs() as logs:
                    worker = make_worker(queue, comfy, tmp_path, queue_manager_token=sent)
                    assert await asyncio.wait_for(worker.run(), 10) == 2
                [exit_line] = [e for e in logs if e["event"] == EXIT_LINE]
                lines[sent] = exit_line["error"]
                assert PARTICIPANTS not in repr(logs) and WORKERS not in repr(logs)
    finally:
        await comfy.stop()
    for sent, status, cause in ((PARTICIPANTS, 403, participants), ("not-a-token", 401, "QUEUE_MANAGER_TOKEN is wrong"),
                                (None, 401, "QUEUE_MANAGER_TOKEN is unset")):
        assert lines[sent].startswith(f"queue manager refused this worker's credentials (HTTP {status}: ")
        assert lines[sent].endswith(f"): {cause}"), lines[sent]
        assert "QUEUE_MANAGER_WORKER_TOKEN" in lines[sent].removesuffix(cause), "the manager's detail is kept"


@pytest.mark.parametrize(
    ("token", "worker_token", "named"),
    [
        (PARTICIPANTS, PARTICIPANTS, "are the same"),
        (None, WORKERS, "without QUEUE_MANAGER_TOKEN"),
    ],
    ids=["equal", "worker-token-alone"],
)
def test_the_server_refuses_tokens_that_cannot_go_together(
    token: str | None, worker_token: str, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        QueueManagerServer(token=token, worker_token=worker_token)


@pytest.mark.parametrize(
    ("env", "args", "named"),
    [
        ({"QUEUE_MANAGER_TOKEN": PARTICIPANTS, "QUEUE_MANAGER_WORKER_TOKEN": PARTICIPANTS}, (), "are the same"),
        ({"QUEUE_MANAGER_TOKEN": PARTICIPANTS}, ("--worker-token", PARTICIPANTS), "are the same"),
        ({"QUEUE_MANAGER_WORKER_TOKEN": WORKERS}, (), "without QUEUE_MANAGER_TOKEN"),
        ({"QUEUE_MANAGER_TOKEN": PARTICIPANTS, "QUEUE_MANAGER_WORKER_TOKEN": "a b "}, (), "QUEUE_MANAGER_WORKER_TOKEN"),
        ({"QUEUE_MANAGER_TOKEN": PARTICIPANTS}, ("--worker-token", "é"), "--worker-token must be printable"),
    ],
    ids=["equal", "equal-by-flag", "worker-token-alone", "unusable-variable", "unusable-flag"],
)
async def test_the_cli_exits_2_naming_both_variables_and_neither_value(
    tmp_path: Path, env: dict[str, str], args: tuple[str, ...], named: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUEUE_MANAGER")}
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", str(tmp_path / "q.db"), *args,
        env={**clean, **env}, cwd=REPO, timeout_s=20,
    )  # fmt: skip
    assert code == 2
    assert named in err
    if named != "QUEUE_MANAGER_WORKER_TOKEN" and not named.startswith("--"):
        assert "QUEUE_MANAGER_TOKEN" in err and "QUEUE_MANAGER_WORKER_TOKEN" in err
    assert PARTICIPANTS not in err and WORKERS not in err


async def test_the_cli_splits_the_routes_and_logs_neither_token(tmp_path: Path) -> None:
    process, url = await start_cli(
        "--db", str(tmp_path / "q.db"),
        env={"QUEUE_MANAGER_TOKEN": PARTICIPANTS, "QUEUE_MANAGER_WORKER_TOKEN": WORKERS},
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            taken = await client.get("/api/workers/next-job", params={"worker_id": "w"}, headers=bearer(PARTICIPANTS))
            polled = await client.get("/api/workers/next-job", params={"worker_id": "w"}, headers=bearer(WORKERS))
            status = await client.get("/api/queue/status", headers=bearer(WORKERS))
            submitted = await client.post(
                "/api/jobs", json={"user_id": f"u-{WORKERS}", "workflow": {"1": {}}}, headers=bearer(PARTICIPANTS)
            )
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            output = (await process.stdout.read()).decode()
            assert await process.wait() == 0
    assert (taken.status_code, polled.status_code, status.status_code, submitted.status_code) == (403, 200, 200, 201)
    assert '"user_id": "u-***"' in output, "the worker token is a registered secret, scrubbed wherever it travels"
    assert PARTICIPANTS not in output and WORKERS not in output
