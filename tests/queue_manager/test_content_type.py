"""A body sent without a JSON Content-Type: FastAPI (and so comfy-multi) answers 422 naming no header; here the
same status names the Content-Type header and what to send, on every route that reads a body."""

from __future__ import annotations

import json

import httpx
import pytest

from queue_manager import QueueManagerServer

SUBMISSION = json.dumps({"user_id": "alice", "workflow": {"1": {}}}).encode()


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        ("text/plain", "text/plain"),
        ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),  # what `curl -d` sends
        ("text/plain; charset=utf-8; secret=kept", "text/plain"),
        (b"text/\xff\xfe", "text/??"),  # not UTF-8: neither a 500 nor echoed
        ("text/ ~", "text/ ~"),  # the first and the last printable character shown as they are
        ("text/" + "x" * 200, "text/" + "x" * 95),  # cut to 100 characters
    ],
)
async def test_a_submission_that_is_not_sent_as_json_is_422_naming_the_content_type(
    client: httpx.AsyncClient, content_type: str | bytes, shown: str
) -> None:
    response = await client.post("/api/jobs", content=SUBMISSION, headers={"Content-Type": content_type})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["header", "content-type"]
    assert f"Content-Type is {shown!r}, not JSON" in error["msg"] and "Content-Type: application/json" in error["msg"]
    assert "secret" not in response.text and "alice" not in response.text
    assert (await client.get("/api/jobs")).json() == [], "nothing queued"


async def test_a_body_without_content_type_is_read_as_json_and_says_so_when_it_is_not(
    client: httpx.AsyncClient,
) -> None:
    accepted = await client.post("/api/jobs", content=SUBMISSION)  # comfy-multi takes it too: no change there
    assert "content-type" not in accepted.request.headers and accepted.status_code == 201
    refused = await client.post("/api/jobs", content=b"user_id=alice&workflow=x")
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert (error["type"], error["loc"]) == ("json_invalid", ["body", 0])
    assert "no Content-Type header" in error["msg"] and "Content-Type: application/json" in error["msg"]


@pytest.mark.parametrize(
    ("route", "body"), [("complete-job", {"result": {"images": []}}), ("fail-job", {"error": "boom"})]
)
async def test_a_report_not_sent_as_json_is_422_naming_the_content_type_and_the_job_runs_on(
    queue: QueueManagerServer, client: httpx.AsyncClient, route: str, body: dict[str, object]
) -> None:
    job = queue.store.submit("alice", {"1": {}})
    queue.store.pop_next("w1", queue.mode)
    response = await client.post(
        f"/api/workers/{route}", params={"job_id": job.id}, content=json.dumps(body),
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["header", "content-type"]]
    assert queue.store.get(job.id).status == "running"  # type: ignore[union-attr]
