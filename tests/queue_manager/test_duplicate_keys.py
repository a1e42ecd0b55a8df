"""A key given twice in one JSON object is refused with a 400 naming it: Python keeps the last, a proxy or validator
before the queue manager may have read the first (user "a" checked, user "b" queued)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from queue_manager import JobStatus, QueueManagerServer
from queue_manager.validation import MAX_KEY_CHARS_NAMED

JSON = {"Content-Type": "application/json"}


async def test_a_key_given_twice_is_400_naming_it_at_any_depth(
    client: httpx.AsyncClient, queue: QueueManagerServer, workflow: dict[str, Any]
) -> None:
    """Before: 201 each time, the last value kept (user "b", priority 2, seed 2): 0 of 4 refused."""
    node = next(iter(workflow))
    nested = json.dumps({"user_id": "a", "workflow": workflow}).replace(
        '"inputs": {', '"inputs": {"seed": 1, "seed": 2, "seed": 3, ', 1)
    long_key = "k" * 1000
    bodies = {
        '{"user_id": "a", "workflow": {}, "user_id": "b"}': "user_id: given 2 times",
        '{"user_id": "a", "priority": 0, "workflow": {}, "priority": 2}': "priority: given 2 times",
        nested: f"workflow.{node}.inputs.seed: given 3 times",
        f'{{"user_id": "a", "workflow": {{"{long_key}": 1, "{long_key}": 2}}}}':
            f"workflow.{'k' * MAX_KEY_CHARS_NAMED}…: given 2 times",
    }
    for body, named in bodies.items():
        response = await client.post("/api/jobs", headers=JSON, content=body.encode())
        assert (response.status_code, response.json()["detail"]) == (
            400, f"{named} in one object (strict JSON): send it once")
    assert queue.store.counts()[JobStatus.PENDING] == 0


async def test_a_report_with_a_key_given_twice_is_400_and_the_job_still_runs(
    client: httpx.AsyncClient, queue: QueueManagerServer, workflow: dict[str, Any]
) -> None:
    created = (await client.post("/api/jobs", json={"user_id": "a", "workflow": workflow})).json()
    assert (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json()["job"]["id"] == created["id"]
    response = await client.post("/api/workers/complete-job", params={"job_id": created["id"]}, headers=JSON,
                                 content=b'{"result": {"images": []}, "result": {"images": [1]}}')
    assert (response.status_code, response.json()["detail"]) == (
        400, "result: given 2 times in one object (strict JSON): send it once")
    assert queue.store.get(created["id"]).status is JobStatus.RUNNING


async def test_the_same_key_in_sibling_objects_is_accepted(
    client: httpx.AsyncClient, workflow: dict[str, Any]
) -> None:
    twice = {"user_id": "a", "workflow": {"1": {"inputs": {"seed": 1}}, "2": {"inputs": {"seed": 1}}}}
    assert (await client.post("/api/jobs", json=twice)).status_code == 201
    assert (await client.post("/api/jobs", json={"user_id": "a", "workflow": workflow})).status_code == 201
