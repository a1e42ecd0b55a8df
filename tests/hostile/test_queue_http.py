"""Hostile requests to the embedded queue manager: each case asserts the exact answer (status, the field named,
no echo of the request) and that the server still serves afterwards. Real server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import threading
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

import common.waiting_connections
import queue_manager.server
import queue_manager.store
from common.limits import QUEUE_HEADS
from queue_manager import JobRecord, JobStatus, QueueManagerServer, app

from ..conftest import closed_by_server, drip_until_closed, half_sent_requests, wait_for

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"seed": 1}}}
MARKER = "HOSTILE-ECHO-MARKER"


@pytest.fixture
async def queue() -> AsyncIterator[QueueManagerServer]:
    async with QueueManagerServer() as server:  # production shape: no test hooks
        yield server
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/health")).json()["status"] == "healthy", "the server survived the case"


@pytest.fixture
async def client(queue: QueueManagerServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=queue.url, timeout=10.0) as http:
        yield http


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


# -- strict JSON at submission: 400 naming the field, nothing queued --------------------------------------

W = '{"user_id":"a","workflow":{"1":'  # the start of a submission, up to node "1"
STRICT_JSON_CASES = {
    "nan-in-workflow": ('{"user_id":"a","workflow":{"1":{"inputs":{"seed":NaN}}}}', "workflow.1.inputs.seed"),
    "infinity-in-metadata": ('{"user_id":"a","workflow":{"1":{}},"metadata":{"x":Infinity}}', "metadata.x"),
    "minus-infinity-in-list": (W + '{"inputs":{"v":[1,-Infinity]}}}}', "workflow.1.inputs.v.1"),
    "1e999": ('{"user_id":"a","workflow":{"1":{"inputs":{"cfg":1e999}}}}', "workflow.1.inputs.cfg"),
    "minus-1e999": ('{"user_id":"a","workflow":{"1":{"inputs":{"cfg":-1e999}}}}', "workflow.1.inputs.cfg"),
    "int-5000-digits": (W + '{"inputs":{"seed":' + "9" * 5000 + "}}}}", "workflow.1.inputs.seed"),
    "int-25-digits-in-metadata": (W + '{}},"metadata":{"n":' + "1" * 25 + "}}", "metadata.n"),
    "nan-as-priority": ('{"user_id":"a","workflow":{"1":{}},"priority":NaN}', "priority"),
    "10k-deep-workflow": ('{"user_id":"a","workflow":{"1":' + _nested(10_000) + "}}", "workflow.1"),
    "100-deep-metadata": ('{"user_id":"a","workflow":{"1":{}},"metadata":{"m":' + _nested(100) + "}}", "metadata.m"),
    "lone-surrogate-value": ('{"user_id":"a","workflow":{"1":{"inputs":{"t":"\\ud800"}}}}', "workflow.1.inputs.t"),
    "lone-surrogate-key": ('{"user_id":"a","workflow":{"1":{"\\udfff":1}}}', "workflow.1"),
    "a-million-values": (W + '{"inputs":{"v":[' + "{}," * 1_000_000 + "{}]}}}}", "body"),
}


@pytest.mark.parametrize(("body", "field"), STRICT_JSON_CASES.values(), ids=STRICT_JSON_CASES.keys())
async def test_submission_that_is_not_strict_json_is_400_naming_the_field(
    client: httpx.AsyncClient, queue: QueueManagerServer, body: str, field: str
) -> None:
    response = await client.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["detail"].startswith(f"{field}")
    assert queue.store.counts()[JobStatus.PENDING] == 0
    assert (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json() == {"job": None}


# Python's json.loads(bytes) decodes UTF-8 with "surrogatepass": these bytes become a lone surrogate that no
# answer can encode. Stored, it made every next-job that handed the job out a 500 (the job left running).
RAW_SURROGATE = b"\xed\xa0\x80"
RAW_SURROGATE_CASES = {
    "in-workflow": (b'{"user_id":"a","workflow":{"1":{"t":"' + RAW_SURROGATE + b'"}}}', "workflow.1.t"),
    "in-metadata-key": (b'{"user_id":"a","workflow":{"1":{}},"metadata":{"' + RAW_SURROGATE + b'":1}}', "metadata"),
    "utf-16": ('{"user_id":"a","workflow":{"1":{"t":"\ud800"}}}'.encode("utf-16", "surrogatepass"), "workflow.1.t"),
}


@pytest.mark.parametrize(("body", "field"), RAW_SURROGATE_CASES.values(), ids=RAW_SURROGATE_CASES.keys())
async def test_a_raw_encoded_surrogate_is_400_naming_the_field_and_nothing_is_queued(
    client: httpx.AsyncClient, queue: QueueManagerServer, body: bytes, field: str
) -> None:
    response = await client.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["detail"].startswith(f"{field}: ")
    assert "surrogate" in response.json()["detail"]
    assert (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json() == {"job": None}


async def test_a_result_with_a_raw_encoded_surrogate_is_400_and_the_job_stays_running(
    client: httpx.AsyncClient, queue: QueueManagerServer
) -> None:
    job = queue.store.submit("alice", WORKFLOW)
    queue.store.pop_next("w", queue.mode)
    body = b'{"result":{"images":["' + RAW_SURROGATE + b'.png"]}}'
    response = await client.post("/api/workers/complete-job", params={"job_id": job.id}, content=body)
    assert (response.status_code, response.json()["detail"][:16]) == (400, "result.images.0:")
    assert (await client.get(f"/api/jobs/{job.id}")).json()["status"] == "running"


async def test_a_well_formed_job_with_a_64_bit_seed_and_emoji_is_accepted(client: httpx.AsyncClient) -> None:
    body = '{"user_id":"a","workflow":{"1":{"inputs":{"seed":18446744073709551615,"t":"\\ud83d\\ude00"}}}}'
    response = await client.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 201


async def test_a_result_with_nan_is_400_and_the_job_stays_running(
    client: httpx.AsyncClient, queue: QueueManagerServer
) -> None:
    job = queue.store.submit("alice", WORKFLOW)
    queue.store.pop_next("w", queue.mode)
    response = await client.post(
        "/api/workers/complete-job", params={"job_id": job.id}, content=b'{"result":{"score":NaN}}'
    )
    assert (response.status_code, response.json()["detail"][:12]) == (400, "result.score")
    assert queue.store.get(job.id).status is JobStatus.RUNNING


@pytest.mark.parametrize(
    "workflow",
    [
        {"1": {"inputs": {"seed": float("nan")}}},
        {"1": {"inputs": {"seed": float("inf")}}},
        {"1": {"inputs": {"text": "\ud800"}}},
    ],
    ids=["planted-nan", "planted-inf", "planted-lone-surrogate"],
)
async def test_a_stored_job_that_cannot_be_served_is_failed_never_left_running(
    client: httpx.AsyncClient, queue: QueueManagerServer, workflow: dict[str, Any]
) -> None:
    bad = queue.store.submit("alice", workflow)  # written by an older version, or planted directly
    good = queue.store.submit("alice", WORKFLOW)
    response = await client.get("/api/workers/next-job", params={"worker_id": "w"})
    assert response.status_code == 200
    assert response.json()["job"]["id"] == good.id
    stored = (await client.get(f"/api/jobs/{bad.id}")).json()
    assert stored["status"] == "failed"
    assert stored["error"].startswith("Job cannot be served as JSON")


async def test_the_job_list_never_reads_the_workflows_it_does_not_show(
    client: httpx.AsyncClient, queue: QueueManagerServer
) -> None:
    """GET /api/jobs shows no workflow or metadata (up to 11 MB a job): decoding them anyway took 1.5 s and
    ~490 MB of memory to list 100 jobs of 2 MB. Here they cannot be decoded at all, and the list still answers."""
    job = queue.store.submit("alice", WORKFLOW)
    with contextlib.closing(sqlite3.connect(queue.store.path)) as db, db:
        db.execute("UPDATE jobs SET workflow = 'not JSON', metadata = 'not JSON' WHERE id = ?", (job.id,))
    for params in ({}, {"user_id": "alice"}, {"status": "pending", "order": "newest", "limit": "1000"}):
        response = await client.get("/api/jobs", params=params)
        assert response.status_code == 200, response.text
        assert [(listed["id"], listed["status"]) for listed in response.json()] == [(job.id, "pending")]


async def test_a_job_s_view_and_its_worker_s_calls_never_read_its_workflow(
    client: httpx.AsyncClient, queue: QueueManagerServer
) -> None:
    """GET /api/jobs/{id} shows no workflow (up to 11 MB): 200 concurrent reads of a job with a 9 MB one took the
    server from 344 MB to 2.8 GB, decoding it each time. A heartbeat, a report or a cancel do not need it either.
    Here it cannot be decoded, and each still answers."""
    running = queue.store.submit("alice", WORKFLOW, metadata={"seat": 7})
    queue.store.pop_next("w1", queue.mode)
    waiting = queue.store.submit("alice", WORKFLOW)
    with contextlib.closing(sqlite3.connect(queue.store.path)) as db, db:
        db.execute("UPDATE jobs SET workflow = 'not JSON'")
    for job, status in ((running, "running"), (waiting, "pending")):
        shown = await client.get(f"/api/jobs/{job.id}")
        assert shown.status_code == 200, shown.text
        assert (shown.json()["status"], shown.json()["metadata"]) == (status, job.metadata)
    fence = {"job_id": running.id, "worker_id": "w1", "attempt": 1}
    assert (await client.post("/api/workers/heartbeat", params=fence)).status_code == 200
    done = await client.post("/api/workers/complete-job", params=fence, json={"result": {"ok": True}})
    assert done.status_code == 200, done.text
    assert (await client.delete(f"/api/jobs/{waiting.id}")).status_code == 204
    assert (await client.get(f"/api/jobs/{running.id}")).json()["result"] == {"ok": True}


async def test_showing_no_pending_job_never_ranks_the_pending_queue(
    client: httpx.AsyncClient, queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Placing a job counts on an index (a page of them reads every pending job's index entry): the scaler's list
    of completed jobs every tick and a status poll of a finished job show no place in line, so count nothing."""
    done = queue.store.submit("alice", WORKFLOW)
    queue.store.pop_next("w", queue.mode)
    queue.store.complete(done.id, {})
    waiting = queue.store.submit("bob", WORKFLOW)
    placed = []
    place = queue.store.positions_of
    monkeypatch.setattr(queue.store, "positions_of", lambda mode, ids: placed.append(ids) or place(mode, ids))

    assert (await client.get(f"/api/jobs/{done.id}")).json()["position_in_queue"] is None
    listed = await client.get("/api/jobs", params={"status": "completed", "limit": "50", "order": "newest"})
    assert [job["id"] for job in listed.json()] == [done.id]
    assert placed == []

    assert (await client.get(f"/api/jobs/{waiting.id}")).json()["position_in_queue"] == 0
    assert [job["position_in_queue"] for job in (await client.get("/api/jobs")).json()] == [None, 0]
    assert placed == [[waiting.id], [waiting.id]], "only the pending job shown is placed"


# -- bounded bodies: 413 as JSON, at each route's own limit ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "size"),
    [
        ("/api/jobs", {}, 17 * 1024 * 1024),
        ("/api/workers/fail-job", {"job_id": "j"}, 300 * 1024),
        ("/api/workers/release-job", {"job_id": "j", "worker_id": "w", "attempt": "1"}, 100 * 1024),
    ],
    ids=["submit-17MiB", "fail-job-300KiB", "release-job-100KiB"],
)
async def test_a_body_over_its_route_limit_is_413_json(
    client: httpx.AsyncClient, path: str, params: dict[str, str], size: int
) -> None:
    response = await client.post(path, params=params, content=b"x" * size)
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/json")
    assert "at most" in response.json()["detail"]


async def test_a_chunked_body_over_the_limit_is_413_json(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"x" * 10_000

    response = await client.post("/api/workers/fail-job", params={"job_id": "j"}, content=chunks())
    assert response.status_code == 413
    assert "more than 262144 bytes" in response.json()["detail"]


async def _raw_request(url: str, head: str, body: bytes = b"") -> bytes:
    """Send a request head (and part of a body) and read the answer without sending the rest."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(3):
            return await reader.read(4096)
    finally:
        writer.close()


async def test_a_declared_60MB_report_is_refused_before_it_is_sent(queue: QueueManagerServer) -> None:
    head = (
        "POST /api/workers/complete-job?job_id=j HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 60000000\r\n"
    )
    answer = await _raw_request(queue.url, head, b'{"result":')
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"detail"' in answer


async def test_an_unauthenticated_50MB_post_is_401_before_any_of_it_is_read() -> None:
    async with QueueManagerServer(token="t0ken-value") as queue:
        head = (
            "POST /api/workers/fail-job?job_id=j HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\nContent-Length: 50000000\r\n"
        )
        answer = await _raw_request(queue.url, head, b'{"error": "')
    assert answer.startswith(b"HTTP/1.1 401")
    assert b'{"detail": "Not authenticated"}' in answer


async def test_a_body_that_does_not_decode_as_its_content_encoding_is_400_not_500(
    queue: QueueManagerServer, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = queue.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    with capture_logs() as logs:
        writer.write(
            b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!"
        )
        async with asyncio.timeout(5):
            answer = await reader.read()  # to the end: the server is done with the connection
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body) == {"detail": "Request body could not be read: Can not decode content-encoding: gzip"}
    assert [entry for entry in logs if entry["log_level"] == "error"] == []
    assert [record.getMessage() for record in caplog.records if record.levelname == "ERROR"] == []


@pytest.mark.parametrize("encoding", ["x-nope", "gzip, gzip", "compress"])
async def test_a_body_in_an_encoding_aiohttp_does_not_decode_is_415_naming_it(
    client: httpx.AsyncClient, encoding: str
) -> None:
    """aiohttp hands such a body over undecoded, as if it were sent as it is: an `x-nope` submission was queued
    (201), and a compressed one would have reached the JSON parser as bytes."""
    body = json.dumps({"user_id": "alice", "workflow": {"1": {"class_type": "Noop", "inputs": {}}}})
    answer = await client.post("/api/jobs", content=body,
                               headers={"Content-Type": "application/json", "Content-Encoding": encoding})
    assert answer.status_code == 415
    assert answer.json() == {
        "detail": f"Content-Encoding {encoding!r} is not supported: send the body as it is, or gzip"
    }
    assert (await client.get("/api/jobs")).json() == []


async def test_a_client_that_hangs_up_mid_body_is_logged_as_that_not_as_a_server_failure(
    queue: QueueManagerServer,
) -> None:
    host, port = queue.url.removeprefix("http://").split(":")
    with capture_logs() as logs:
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /api/workers/fail-job?job_id=j HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"error")
        await writer.drain()
        writer.close()
        async with asyncio.timeout(5):
            while not any(entry["event"] == "request_body_cut_short" for entry in logs):
                await asyncio.sleep(0.01)
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == []


async def test_a_body_that_stalls_mid_way_is_408_and_its_memory_freed(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stops sending mid-body held up to its route's limit (51 MiB for complete-job) for as long
    as it kept the connection open: 10 such submissions held 145 MB. It now has BODY_IDLE_TIMEOUT_S."""
    monkeypatch.setattr(app, "BODY_IDLE_TIMEOUT_S", 0.2)
    host, port = queue.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    with capture_logs() as logs:
        writer.write(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"[" * 500)
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"connection: close" in head.lower()
    assert json.loads(body) == {"detail": "Request body stalled: nothing received for 0.2 s"}
    assert [(e["event"], e["bytes_read"]) for e in logs if e["event"] == "request_body_stalled"] == [
        ("request_body_stalled", 500)
    ]
    assert [entry for entry in logs if entry["log_level"] == "error"] == []


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, Any]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, json.loads(await reader.readexactly(length))


async def test_a_body_dripped_a_byte_at_a_time_is_cut_off_and_its_reservation_freed(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BODY_IDLE_TIMEOUT_S bounded each read, not the body: a submission declaring 16 MB and sending a byte every
    59 s was read for ever and held 16 MB of the bodies' budget all that time (nine of them: audit of 2026-12-01).
    Here the budget holds one such body; the drip must keep BODY_MIN_BYTES_PER_S after BODY_GRACE_S."""
    monkeypatch.setattr(app, "BODY_GRACE_S", 0.5, raising=False)
    monkeypatch.setattr(app, "BODY_MIN_BYTES_PER_S", 1000, raising=False)
    job, reader, holder = await running_job_and_a_body_held(queue, monkeypatch, declared=299_000)  # 1000 B sent
    with capture_logs() as logs:
        async with asyncio.timeout(10):
            answer = asyncio.create_task(read_answer(reader))
            while not answer.done():
                holder.write(b" ")  # 20 bytes a second: never idle, never enough
                await asyncio.wait([answer], timeout=0.05)
            head, body = answer.result()
    holder.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert body["detail"].startswith("Request body too slow: "), body
    assert "at 1000 bytes a second" in body["detail"]
    assert [e["event"] for e in logs if e["event"].startswith("request_body_")] == ["request_body_too_slow"]
    async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
        report = json.dumps({"error": "x" * 9000}) + " " * 140_000  # over UNCOUNTED_BODY_BYTES: it needs the budget
        landed = await client.post("/api/workers/fail-job", params={"job_id": job.id}, content=report)
    assert landed.status_code == 200, landed.text[:300]  # not 503 Busy: the reservation went with the drip


async def test_a_slow_body_that_keeps_the_minimum_rate_is_read_past_the_grace(
    client: httpx.AsyncClient, queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An honest slow link: a body sent over longer than the grace, at 20 times the minimum rate, is read whole."""
    monkeypatch.setattr(app, "BODY_GRACE_S", 0.2, raising=False)
    monkeypatch.setattr(app, "BODY_MIN_BYTES_PER_S", 1000, raising=False)
    body = json.dumps({"user_id": "alice", "workflow": WORKFLOW, "metadata": {"pad": "x" * 20_000}}).encode()

    async def slowly() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 2000):
            yield body[start : start + 2000]
            await asyncio.sleep(0.1)  # 20 kB/s for about a second: past the grace, each chunk buys 2 s more

    response = await client.post("/api/jobs", content=slowly(), headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text[:300]
    assert queue.store.counts()[JobStatus.PENDING] == 1


@pytest.mark.parametrize("path", ["/api/jobs", "/api/workers/fail-job?job_id=j"], ids=["submit", "report"])
async def test_the_server_answers_others_while_it_parses_a_body(
    client: httpx.AsyncClient, queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Parsing is CPU work the client sizes: a 50 MB report of 25 million zeros took 14 s (16 million empty
    objects, 17 s). On the event loop it held up every other request, /health too (docker's healthcheck gives
    up after 4 s). Here a parse is held until a probe from another thread has had its answer, or 3 s passed."""
    probed, answers = threading.Event(), []

    def probe() -> None:
        try:
            answers.append(httpx.get(f"{queue.url}/health", timeout=3).json()["status"])
        except httpx.TimeoutException:
            answers.append("no answer within 3 s")
        finally:
            probed.set()

    parse = app.parse_json_body

    def parse_after_a_probe(*args: Any) -> Any:
        threading.Thread(target=probe).start()
        probed.wait(timeout=10)
        return parse(*args)

    monkeypatch.setattr(app, "parse_json_body", parse_after_a_probe)
    response = await client.post(path, json={"user_id": "a", "workflow": WORKFLOW, "error": "boom"})
    assert response.status_code in (201, 404), response.text
    assert answers == ["healthy"]


def test_the_production_server_keeps_no_report_log() -> None:
    """ReportLog holds every report body for good: only a test asks for it."""
    queue = QueueManagerServer()
    with pytest.raises(RuntimeError, match="test_hooks=True"):
        _ = queue.reports
    with pytest.raises(RuntimeError, match="test_hooks=True"):
        _ = queue.faults


# -- validation errors name the field and never echo the request --------------------------------------------

NO_ECHO_CASES = {
    "workflow-as-string": ({"user_id": "alice", "workflow": MARKER * 1000}, ["body", "workflow"]),
    "user-id-with-marker": ({"user_id": f"../{MARKER}", "workflow": WORKFLOW}, ["body", "user_id"]),
    "user-id-trailing-newline": ({"user_id": "alice\n", "workflow": WORKFLOW}, ["body", "user_id"]),
    "user-id-nul": ({"user_id": "alice\x00", "workflow": WORKFLOW}, ["body", "user_id"]),
    "priority-99": ({"user_id": "alice", "workflow": WORKFLOW, "priority": 99}, ["body", "priority"]),
    "metadata-as-list": ({"user_id": "alice", "workflow": WORKFLOW, "metadata": [MARKER]}, ["body", "metadata"]),
    "body-is-a-list": ([MARKER], ["body"]),
    "body-is-a-string": (MARKER * 100, ["body"]),
}


@pytest.mark.parametrize(("body", "loc"), NO_ECHO_CASES.values(), ids=NO_ECHO_CASES.keys())
async def test_422_names_the_field_without_echoing_the_request(
    client: httpx.AsyncClient, body: Any, loc: list[str]
) -> None:
    response = await client.post("/api/jobs", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc
    assert MARKER not in response.text and "alice" not in response.text


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"", None), (b"\xff\xfe{not utf-8", "application/json"), (b"{\"user_id\": ", "application/json"),
     (b"user_id=alice", "application/x-www-form-urlencoded")],
    ids=["empty", "invalid-utf8", "truncated", "form-encoded"],
)  # fmt: skip
async def test_undecodable_submissions_are_422_never_500(
    client: httpx.AsyncClient, content: bytes, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/api/jobs", content=content, headers=headers)
    assert response.status_code == 422
    assert "alice" not in response.text


@pytest.mark.parametrize("limit", ["0", "-5", "1001", "abc", "1e3", "99999999999999999999999"])
async def test_list_limit_is_bounded(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get("/api/jobs", params={"limit": limit})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"job_id": "j", "attempt": "abc"}, "attempt"), ({"job_id": "j", "attempt": "0"}, "attempt"), ({}, "job_id")],
    ids=["attempt-not-a-number", "attempt-zero", "no-job-id"],
)
async def test_bad_report_parameters_are_422_naming_them(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await client.post("/api/workers/complete-job", params=params, json={"result": {}})
    assert response.status_code == 422
    assert ["query", field] in [error["loc"] for error in response.json()["detail"]]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("PUT", "/api/jobs", 405), ("GET", "/api/jobs/%00", 404),
     ("DELETE", "/api/jobs/" + "x" * 5000, 404)],
    ids=["unknown-route", "wrong-method", "nul-job-id", "5000-char-job-id"],
)  # fmt: skip
async def test_routing_errors_are_json(client: httpx.AsyncClient, method: str, path: str, status: int) -> None:
    response = await client.request(method, path)
    assert response.status_code == status
    assert "detail" in response.json()


async def test_a_head_request_to_next_job_is_405_and_takes_no_job(
    client: httpx.AsyncClient, queue: QueueManagerServer
) -> None:
    """HEAD is a safe method (uptime monitors and proxies send it), but aiohttp routes it to the GET handler: a
    HEAD to next-job handed out the job to nobody, and three such probes failed it after three lease expiries."""
    job = queue.store.submit("alice", WORKFLOW)
    response = await client.head("/api/workers/next-job", params={"worker_id": "uptime-monitor"})
    assert response.status_code == 405
    assert queue.store.get(job.id).status is JobStatus.PENDING
    assert (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json()["job"]["id"] == job.id


async def test_a_deep_error_body_is_400_not_500(client: httpx.AsyncClient) -> None:
    body = '{"error": ' + _nested(5000) + "}"
    response = await client.post("/api/workers/fail-job", params={"job_id": "j"}, content=body)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("error")


async def test_wrong_token_is_401_json_and_the_token_never_echoed() -> None:
    async with QueueManagerServer(token="right-token") as queue, httpx.AsyncClient(base_url=queue.url) as client:
        response = await client.get("/api/queue/status", headers={"Authorization": "Bearer wrong-token"})
    assert (response.status_code, response.json()) == (401, {"detail": "Not authenticated"})
    assert "token" not in json.dumps(dict(response.headers)).lower().replace("www-authenticate", "")


# -- worker and job ids: 422 naming the field, never a job run under no one ---------------------------------

BAD_IDS = {
    "empty": "", "blank": "  \t", "newline": "w\n1", "nul": "w\x001", "escape": "w\x1b[2J", "201-chars": "w" * 201
}  # fmt: skip
ID_ROUTES = {
    "next-job": ("GET", "/api/workers/next-job", {}),
    "heartbeat": ("POST", "/api/workers/heartbeat", {"worker_id": "w", "job_id": "j"}),
    "complete-job": ("POST", "/api/workers/complete-job", {"job_id": "j", "worker_id": "w", "attempt": "1"}),
    "fail-job": ("POST", "/api/workers/fail-job", {"job_id": "j", "worker_id": "w", "attempt": "1"}),
    "release-job": ("POST", "/api/workers/release-job", {"job_id": "j", "worker_id": "w", "attempt": "1"}),
}
ID_BODIES = {"complete-job": {"result": {}}, "fail-job": {"error": "boom"}, "release-job": {"reason": "stopped"}}


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
@pytest.mark.parametrize(
    ("route", "field"),
    [("next-job", "worker_id"), ("heartbeat", "worker_id"), ("heartbeat", "job_id"), ("complete-job", "worker_id"),
     ("complete-job", "job_id"), ("fail-job", "job_id"), ("release-job", "worker_id"), ("release-job", "job_id")],
)  # fmt: skip
async def test_an_empty_blank_unprintable_or_overlong_id_is_422_naming_it(
    client: httpx.AsyncClient, queue: QueueManagerServer, route: str, field: str, bad: str
) -> None:
    """An empty worker_id took a job: it then ran under no one (`worker_id` "", handed back as "worker  stopped
    heartbeating"); a control character in one went into every log line naming the worker."""
    job = queue.store.submit("alice", WORKFLOW)
    method, path, params = ID_ROUTES[route]
    response = await client.request(method, path, params={**params, field: bad}, json=ID_BODIES.get(route))
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["query", field]]
    assert queue.store.get(job.id).status is JobStatus.PENDING


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [("/api/workers/next-job", {"worker_id": "w" * 10_000}, "worker_id"),
     ("/api/workers/heartbeat", {"worker_id": "w", "job_id": "j" * 10_000}, "job_id")],
    ids=["next-job-worker-id", "heartbeat-job-id"],
)  # fmt: skip
async def test_a_10kB_id_in_the_query_is_422_naming_it(
    client: httpx.AsyncClient, path: str, params: dict[str, str], field: str
) -> None:
    """aiohttp refused a request line over 8190 bytes with a text/plain 400 that named no field and echoed the
    first 100 bytes of the URL. comfy-multi (uvicorn) reads a 16 KiB request head."""
    method = "GET" if path != "/api/workers/heartbeat" else "POST"
    response = await client.request(method, path, params=params)
    assert response.status_code == 422, response.text[:300]
    assert [error["loc"] for error in response.json()["detail"]] == [["query", field]]


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [("/api/workers/next-job", "worker_id=w1&worker_id=w2", "worker_id"),
     ("/api/workers/complete-job", "job_id={job}&job_id=other", "job_id"),
     ("/api/workers/complete-job", "job_id={job}&worker_id=w1&attempt=1&attempt=2", "attempt"),
     ("/api/jobs", "status=pending&limit=1&limit=1000", "limit")],
    ids=["next-job-worker-id", "complete-job-id", "complete-attempt", "list-limit"],
)  # fmt: skip
async def test_a_query_parameter_given_twice_is_422_naming_it(
    client: httpx.AsyncClient, queue: QueueManagerServer, path: str, query: str, field: str
) -> None:
    """Which one counts? aiohttp's first, FastAPI's last: `worker_id=w1&worker_id=w2` took a job for w1 here and
    would for w2 at comfy-multi. A fence or a job id must never be a guess."""
    job = queue.store.submit("alice", WORKFLOW)
    method = "GET" if path != "/api/workers/complete-job" else "POST"
    response = await client.request(method, f"{path}?{query.format(job=job.id)}", json={"result": {}})
    assert response.status_code == 422, response.text[:300]
    assert [error["loc"] for error in response.json()["detail"]] == [["query", field]]
    assert queue.store.get(job.id).status is JobStatus.PENDING


@pytest.mark.parametrize("priority", [True, False, "0", "2", 1.5, None], ids=repr)
async def test_a_priority_that_is_not_a_number_0_to_3_is_422_naming_it(
    client: httpx.AsyncClient, queue: QueueManagerServer, priority: Any
) -> None:
    """`"priority": false` queued the job at instructor priority (0) and `true` at 1: JSON booleans and strings
    passed as numbers."""
    response = await client.post("/api/jobs", json={"user_id": "alice", "workflow": WORKFLOW, "priority": priority})
    assert response.status_code == 422, response.text[:300]
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "priority"]]
    assert queue.store.counts()[JobStatus.PENDING] == 0


async def test_a_priority_written_as_a_whole_float_is_that_priority(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/jobs", json={"user_id": "alice", "workflow": WORKFLOW, "priority": 0.0})
    assert (response.status_code, response.json()["priority"]) == (201, 0)


@pytest.mark.parametrize(
    "user_id", ["u" * 10_000, "alice\n", "../alice", " "], ids=["10kB", "newline", "dotdot", "blank"]
)
async def test_a_job_list_filtered_by_a_user_id_no_job_can_have_is_422_naming_it(
    client: httpx.AsyncClient, queue: QueueManagerServer, user_id: str
) -> None:
    """It answered 200 [] (a 10 kB one a text/plain 400): as if that user had no jobs."""
    queue.store.submit("alice", WORKFLOW)
    response = await client.get("/api/jobs", params={"user_id": user_id})
    assert response.status_code == 422, response.text[:300]
    assert [error["loc"] for error in response.json()["detail"]] == [["query", "user_id"]]
    assert len((await client.get("/api/jobs", params={"user_id": ""})).json()) == 1, "empty: no filter, as the peer"


async def test_a_client_dripping_its_headers_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing bounded how long a request head may take (with a token too: it is checked once the head is in):
    aiohttp closes a connection only after an hour without a complete head, and 300 clients each holding 120
    unfinished 8 KB headers kept 620 MB in the queue manager (bench/slow_headers.py)."""
    monkeypatch.setattr(queue_manager.server, "QUEUE_HEADS", replace(QUEUE_HEADS, timeout_s=0.5))
    async with QueueManagerServer(token="t0ken-value") as queue:
        host, port = queue.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /api/queue/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await drip_until_closed(reader, writer, within_s=30)  # cut at 0.5 s; 5 s was outlived by a loaded process
        assert json.loads(await _body_of_a_request_sent_whole(queue.url, "/health"))["status"] == "healthy"


async def _body_of_a_request_sent_whole(url: str, path: str) -> bytes:
    """The body of the 200 answering GET ``path``, its request sent before this event loop, the server's too, runs
    on: the server has it all when it first reads, however long the loop stalls. An HTTP client writes its request
    once connected, and a stall of the loaded test process past a short head timeout (0.5 s) had it cut unanswered."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    reader, writer = await asyncio.open_connection(sock=connection)
    try:
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:300]
    return body


async def running_job_and_a_body_held(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch, *, declared: int
) -> tuple[JobRecord, asyncio.StreamReader, asyncio.StreamWriter]:
    """A body budget of 300 kB (bodies up to 100 kB not counted, 0.3 s to wait for room), a running job to report
    on, and a submission declaring ``declared`` bytes that sends 1000 of them and then nothing."""
    monkeypatch.setattr(app, "BODIES_IN_FLIGHT_BYTES", 300_000, raising=False)
    monkeypatch.setattr(app, "BODY_BUDGET_WAIT_S", 0.3, raising=False)
    monkeypatch.setattr(app, "UNCOUNTED_BODY_BYTES", 100_000, raising=False)
    job = queue.store.submit("alice", WORKFLOW)
    queue.store.pop_next("w", queue.mode)
    host, port = queue.url.removeprefix("http://").split(":")
    reader, holder = await asyncio.open_connection(host, int(port))
    holder.write(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % declared + b" " * 1000)
    await holder.drain()
    await asyncio.sleep(0.1)
    return job, reader, holder


async def test_bodies_held_at_once_are_bounded_and_a_request_past_the_budget_is_503(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each route bounded its own body, nothing bounded them together: 20 concurrent 50 MB reports took the
    queue manager from 55 MB to a 904 MB peak (bench/queue_memory.py, 20-concurrent); a hundred, ~5 GB."""
    job, _, holder = await running_job_and_a_body_held(queue, monkeypatch, declared=200_000)
    async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
        refused = await client.post("/api/workers/fail-job", params={"job_id": job.id}, content=b" " * 150_000)
        assert refused.status_code == 503, refused.text[:300]
        assert refused.json()["detail"].startswith("Busy: request bodies being read")
        assert queue.store.get(job.id).status is JobStatus.RUNNING
        holder.close()  # its reservation ends with it
        await asyncio.sleep(0.1)
        landed = await client.post("/api/workers/fail-job", params={"job_id": job.id}, json={"error": "x" * 9000})
        assert landed.status_code == 200, landed.text[:300]


async def test_declared_bodies_that_never_arrive_do_not_hold_up_an_ordinary_report(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three complete-jobs declaring 51 MiB and sending a byte a minute held the whole budget for as long as they
    liked: every other body, a report of a few KB too, waited 10 s and was refused 503."""
    job, _, holder = await running_job_and_a_body_held(queue, monkeypatch, declared=299_000)
    try:
        async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
            report = await client.post("/api/workers/fail-job", params={"job_id": job.id}, json={"error": "x" * 9000})
        assert report.status_code == 200, report.text[:300]
    finally:
        holder.close()


async def test_past_the_cap_of_bodies_waiting_for_room_one_more_is_503_at_once(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests waiting for room in the budget were uncapped, and aiohttp reads on into each one's buffers while it
    waits: 200 complete-jobs declaring 51 MiB behind two holders took the queue manager from 63 to 196 MB. Here (a
    minute to wait, one waiter at most) the second waiter is 503 at once; the first lands once the holder goes."""
    job, _, holder = await running_job_and_a_body_held(queue, monkeypatch, declared=200_000)
    monkeypatch.setattr(app, "BODY_BUDGET_WAIT_S", 60.0, raising=False)
    monkeypatch.setattr(app, "BODIES_WAITING_MAX", 1, raising=False)
    report = json.dumps({"error": "x" * 9000}).encode() + b" " * 140_000
    async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
        waiter = asyncio.create_task(client.post("/api/workers/fail-job", params={"job_id": job.id}, content=report))
        await asyncio.sleep(0.2)
        try:
            refused = await client.post("/api/workers/fail-job", params={"job_id": job.id}, content=report)
        finally:
            holder.close()  # its reservation ends with it: the waiter's turn
        assert refused.status_code == 503, refused.text[:300]
        assert "1 more wait for room" in refused.json()["detail"]
        assert refused.headers["Retry-After"] == "1"
        assert (await waiter).status_code == 200
    assert queue.store.get(job.id).status is JobStatus.FAILED


async def test_a_flood_refused_for_want_of_room_logs_one_line_not_one_each(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refusal of the bodies' or the answers' budget logged a warning, unthrottled: a client repeating one
    wrote a line each. The first is logged, then one a minute at most, counting the rest."""
    job, _, holder = await running_job_and_a_body_held(queue, monkeypatch, declared=200_000)
    monkeypatch.setattr(app, "BODIES_WAITING_MAX", 0, raising=False)
    monkeypatch.setattr(app, "ANSWERS_IN_FLIGHT_BYTES", 100_000, raising=False)
    monkeypatch.setattr(app, "ANSWER_BUDGET_WAIT_S", 0.0, raising=False)
    large_id, _ = completed_with_a_large_result(queue, 200_000)
    try:
        with capture_logs() as logs:
            async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
                for _ in range(20):
                    refused = await client.post("/api/workers/fail-job", params={"job_id": job.id},
                                                content=b" " * 150_000)
                    assert refused.status_code == 503, refused.text[:300]
                    assert (await client.get(f"/api/jobs/{large_id}")).status_code == 503
    finally:
        holder.close()
    for event in ("request_body_budget_full", "answer_budget_full"):
        lines = [line for line in logs if line["event"] == event]
        assert [line.get("more_since_last") for line in lines] == [0], lines


async def test_a_compressed_body_reserves_its_routes_limit_not_its_declared_length(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compressed body holds its decompressed size, and its Content-Length is the compressed one: ten
    complete-jobs of 47 KB of gzip each (under the 1 MiB left uncounted) held 48 MB apiece and took the queue
    manager from 57 to 516 MB, the 128 MiB budget never asked (155 MB since: two fit, the rest wait)."""
    job, _, holder = await running_job_and_a_body_held(queue, monkeypatch, declared=1000)
    holder.close()  # this test's holder is a compressed one
    host, port = queue.url.removeprefix("http://").split(":")
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    start = compressor.compress(b'{"error":"' + b"x" * 200_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    _, compressed = await asyncio.open_connection(host, int(port))
    compressed.write(
        b"POST /api/workers/fail-job?job_id=%s HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n" % (job.id.encode(), len(start) + 100) + start  # the rest never comes
    )
    await compressed.drain()
    await asyncio.sleep(0.1)
    try:
        async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
            refused = await client.post("/api/workers/fail-job", params={"job_id": job.id}, content=b" " * 150_000)
        assert refused.status_code == 503, refused.text[:300]
        assert queue.store.get(job.id).status is JobStatus.RUNNING
    finally:
        compressed.close()


# -- answers: bounded together, cut off when unread, the stored result sent undecoded ------------------------


def completed_with_a_large_result(queue: QueueManagerServer, size: int = 6_000_000) -> tuple[str, dict[str, Any]]:
    """A job completed with a result of ``size`` bytes (more than loopback's socket buffers take), and it."""
    job = queue.store.submit("alice", WORKFLOW)
    queue.store.pop_next("w", queue.mode)
    result = {"outputs": [], "blob": "x" * size}
    queue.store.complete(job.id, result)
    return job.id, result


async def unread_get(queue: QueueManagerServer, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with a 4 KB receive buffer that sends GET ``path`` and reads nothing (yet)."""
    host, port = queue.url.removeprefix("http://").split(":")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=raw, limit=2**16)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.3)  # the server has begun to answer
    return reader, writer


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed the connection (within 5 s)."""
    received = b""
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(2**16):
                received += chunk
    return received


async def test_answers_held_at_once_are_bounded_and_a_view_past_the_budget_is_503(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing bounded the answers held together: 16 GETs at once of a job with a 48 MB result took the queue
    manager to 1.7 GB, and each client that left its answer unread held it for as long as it liked."""
    monkeypatch.setattr(app, "ANSWERS_IN_FLIGHT_BYTES", 10_000_000, raising=False)
    monkeypatch.setattr(app, "ANSWER_BUDGET_WAIT_S", 0.3, raising=False)
    job_id, result = completed_with_a_large_result(queue)
    _, holder = await unread_get(queue, f"/api/jobs/{job_id}")
    async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
        refused = await client.get(f"/api/jobs/{job_id}")
        assert refused.status_code == 503, refused.text[:300]
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["detail"].startswith("Busy: answers being sent hold")
        holder.close()  # its reservation ends with it
        await asyncio.sleep(0.3)
        shown = await client.get(f"/api/jobs/{job_id}")
        assert shown.status_code == 200, shown.text[:300]
        assert shown.json()["result"] == result


async def test_a_client_that_stops_reading_its_answer_is_cut_off_and_what_it_held_freed(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sent GET and never read the answer held it until it hung up: 20 such clients kept 1.9 GB for
    as long as they stayed, the 1000-connection cap their only bound. It now has ANSWER_STALL_TIMEOUT_S."""
    monkeypatch.setattr(app, "ANSWER_STALL_TIMEOUT_S", 0.3, raising=False)
    monkeypatch.setattr(app, "ANSWERS_IN_FLIGHT_BYTES", 10_000_000, raising=False)
    monkeypatch.setattr(app, "ANSWER_BUDGET_WAIT_S", 3, raising=False)
    job_id, result = completed_with_a_large_result(queue)
    with capture_logs() as logs:
        reader, writer = await unread_get(queue, f"/api/jobs/{job_id}")
        async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
            shown = await client.get(f"/api/jobs/{job_id}")  # waits for the room the stalled one held
        assert shown.status_code == 200, shown.text[:300]
        assert shown.json()["result"] == result
        received = await read_until_closed(reader)
    writer.close()
    assert received.startswith(b"HTTP/1.1 200") and len(received) < len(shown.content), len(received)
    assert [entry["event"] for entry in logs if entry["event"] == "answer_write_stalled"] == ["answer_write_stalled"]


TCP_ESTABLISHED = 1  # tcpi_state, the first byte of TCP_INFO (linux/tcp.h)


async def test_an_answer_cut_off_unread_is_reset_not_left_for_the_kernel_to_deliver(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a connection cut off for an unread answer was aborted, which drops only asyncio's buffer: the kernel
    went on offering the client what it had queued (up to 4 MB, for minutes) and the client got it once it read.
    Now the connection is reset: the client gets what its receive buffer held, then the reset."""
    monkeypatch.setattr(app, "ANSWER_STALL_TIMEOUT_S", 0.3, raising=False)
    job_id, _ = completed_with_a_large_result(queue)
    host, port = queue.url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    with socket.socket() as raw, capture_logs() as logs:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setblocking(False)
        await loop.sock_connect(raw, (host, int(port)))
        await loop.sock_sendall(raw, f"GET /api/jobs/{job_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await wait_for(lambda: any(entry["event"] == "answer_write_stalled" for entry in logs), 10)
        # The log comes before the socket is closed (a loop turn after the abort): reading at once on a loaded CPU,
        # the client read the kernel's queue meanwhile. A reset ends ESTABLISHED; a close leaves it (FIN queued).
        with contextlib.suppress(TimeoutError):
            await wait_for(lambda: raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED, 10)
        received = b""
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await loop.sock_recv(raw, 2**16):
                    received += chunk
    assert received.startswith(b"HTTP/1.1 200") and len(received) < 256 * 1024, len(received)


async def test_a_large_list_left_unread_is_cut_off_too(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any answer built whole (a list of jobs, up to 16 MB of results) was handed to the connection and held for
    as long as its client left it unread."""
    monkeypatch.setattr(app, "ANSWER_STALL_TIMEOUT_S", 0.3, raising=False)
    completed_with_a_large_result(queue)
    reader, writer = await unread_get(queue, "/api/jobs")
    await asyncio.sleep(0.5)
    received = await read_until_closed(reader)
    writer.close()
    assert received.startswith(b"HTTP/1.1 200") and len(received) < 6_000_000, len(received)


async def test_a_job_view_sends_the_stored_result_undecoded_and_byte_for_byte_as_before(
    client: httpx.AsyncClient, queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored result was decoded on the database thread only to be encoded again: 16 views at once of a 48 MB
    result held /health and next-job up for seconds (and a heartbeating worker lost its job to the lease reaper).
    It is sent as stored, the same bytes as before; a result an older version stored is still decoded."""
    job = queue.store.submit("alice", WORKFLOW, metadata={"seat": "é"})
    queue.store.pop_next("w", queue.mode)
    result = {"outputs": [{"path": "a/ü 😀.png"}], "f": [0.1, 1e100, -0.0, 2**62], "s": 'q"\\\n\u0001', "e": {}}
    done = await client.post("/api/workers/complete-job", params={"job_id": job.id}, json={"result": result})
    assert done.status_code == 200, done.text
    decoded: list[int] = []

    class CountingJson:
        dumps = staticmethod(json.dumps)

        @staticmethod
        def loads(text: Any) -> Any:
            decoded.append(len(text))
            return json.loads(text)

    monkeypatch.setattr(queue_manager.store, "json", CountingJson)
    shown = await client.get(f"/api/jobs/{job.id}")
    assert shown.status_code == 200 and shown.json()["result"] == result
    result_text = json.dumps(result, ensure_ascii=False, separators=(",", ":"))
    assert b"," + b'"result":' + result_text.encode() + b',"error":null' in shown.content
    assert decoded and max(decoded) < len(result_text), "the result was decoded"
    with contextlib.closing(sqlite3.connect(queue.store.path)) as db, db:  # as an older version stored it
        db.execute("UPDATE jobs SET result = ?, result_bytes = NULL WHERE id = ?", (json.dumps(result), job.id))
    again = await client.get(f"/api/jobs/{job.id}")
    assert again.content == shown.content
    assert again.headers["Content-Type"] == shown.headers["Content-Type"] == "application/json; charset=utf-8"


async def test_racing_fenced_reports_and_a_hand_back_end_the_job_once(
    client: httpx.AsyncClient, queue: QueueManagerServer
) -> None:
    """Two completes, a fail and a release for one run, sent at once, and a heartbeat from a worker that does not
    hold it: exactly one lands, the others are 409 and change nothing."""
    for _ in range(10):
        job = queue.store.submit("alice", WORKFLOW)
        queue.store.pop_next("w1", queue.mode)
        fence = {"job_id": job.id, "worker_id": "w1", "attempt": "1"}
        answers = await asyncio.gather(
            client.post("/api/workers/complete-job", params=fence, json={"result": {"n": 1}}),
            client.post("/api/workers/fail-job", params=fence, json={"error": "boom"}),
            client.post("/api/workers/release-job", params=fence, json={"reason": "stopped", "cause": "shutdown"}),
            client.post("/api/workers/complete-job", params=fence, json={"result": {"n": 2}}),
            client.post("/api/workers/heartbeat", params={**fence, "worker_id": "w2"}),
        )
        statuses = [answer.status_code for answer in answers]
        assert sorted(statuses[:4]) == [200, 409, 409, 409] and statuses[4] == 409, statuses
        won = statuses.index(200)
        final = queue.store.get(job.id)
        expected = [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PENDING, JobStatus.COMPLETED][won]
        assert final.status is expected
        if expected is JobStatus.COMPLETED:
            assert final.result == {"n": 1 if won == 0 else 2}
        if expected is JobStatus.PENDING:
            queue.store.cancel(job.id)  # off the queue before the next round


@pytest.mark.parametrize("raw", ["%ff%fe", "%fe%ff", "%ed%a0%80", "w%c3"], ids=["ff-fe", "fe-ff", "surrogate", "cut"])
async def test_a_worker_id_that_is_not_utf8_is_422_naming_it(
    client: httpx.AsyncClient, queue: QueueManagerServer, raw: str
) -> None:
    """The query is decoded with U+FFFD for every bad byte: %ff%fe and %fe%ff both became worker "\ufffd\ufffd",
    which took the job; two workers sending different bytes were one worker to the lease and the fences."""
    job = queue.store.submit("alice", WORKFLOW)
    response = await client.get(f"/api/workers/next-job?worker_id={raw}")
    assert response.status_code == 422, response.text[:300]
    assert [error["loc"] for error in response.json()["detail"]] == [["query", "worker_id"]]
    assert "UTF-8" in response.json()["detail"][0]["msg"]
    assert queue.store.get(job.id).status is JobStatus.PENDING


async def test_past_the_cap_the_oldest_waiting_connections_are_closed_never_a_request_being_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing capped the connections held open, and the open-file limit is raised on purpose: 20 000 half-sent
    requests (this machine's limit) took the queue manager from 58 to 168 MB and 7 of 20 fresh /health probes
    timed out at 5 s (bench/idle_connections.py). Here the cap is 5; a /health the server is still working on (its
    answer held 1 s) is the oldest connection and keeps its answer; the 2 oldest half-sent requests are closed."""
    monkeypatch.setattr(common.waiting_connections, "MAX_WAITING_CONNECTIONS", 5, raising=False)
    async with QueueManagerServer(test_hooks=True) as queue, httpx.AsyncClient(base_url=queue.url) as slow:
        queue.faults.inject("health", delay_s=1.0)
        served = asyncio.create_task(slow.get("/health"))
        while queue.faults.pending("health"):
            await asyncio.sleep(0.01)
        host, port = queue.url.removeprefix("http://").split(":")
        connections = await half_sent_requests(host, int(port), 5)
        async with httpx.AsyncClient(base_url=queue.url) as client:
            assert (await client.get("/health")).json()["status"] == "healthy"
            assert (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json() == {"job": None}
        assert (await served).status_code == 200
        assert [await closed_by_server(reader) for reader, _ in connections] == [True] * 2 + [False] * 3
        for _, writer in connections:
            writer.close()
