"""A proxy in front of ComfyUI refusing the worker (401, 403) one of the questions a job asks, while /system_stats
passes: GET /view (its results), POST /prompt (its workflow), POST /upload/image (its input images). Each job was
handed back, using up one of its attempts (an upload's refusal even failed it for good, blamed on its image), and
the replica stayed ready and took the next job, to hand it back too: one broken replica failed job after job. It now
goes fatal after the first, its reason naming COMFYUI_URL and no user data, and exits for the platform to replace it.
A proxy refusing only some files, workflows or images (a filter on what a user wrote) says nothing of the replica:
the same question with no job data in it (ComfyUI answers it 404 or 400) tells the two apart."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from .conftest import comfyui_proxy
from .test_input_images import TINY, load_and_save

MARKER = "alice-private-prefix-5d2b"


@dataclass(frozen=True)
class Refused:
    method: str
    path: str
    carries_images: bool = False

    @property
    def question(self) -> str:
        return f"{self.method} {self.path}"


QUESTIONS = [Refused("GET", "/view"), Refused("POST", "/prompt"), Refused("POST", "/upload/image", True)]


def refusing_proxy(
    comfy_url: str, refused: Refused, status: int, *, only_holding: str | None = None
) -> contextlib.AbstractAsyncContextManager[str]:
    """Passes every HTTP request to ComfyUI (not the websocket) but ``refused``, answered ``status``: every one, or
    ``only_holding``: those whose query or body holds it."""

    async def refuse(request: web.Request, body: bytes, _upstream: object) -> web.Response | None:
        held = only_holding is None or only_holding in request.query_string or only_holding.encode() in body
        if (request.method, request.path) == (refused.method, refused.path) and held:
            return web.json_response({"error": "authentication required"}, status=status)
        return None

    return comfyui_proxy(comfy_url, refuse)


def submit(qm: Any, workflows: dict[str, dict], refused: Refused, user_id: str, private: bool) -> Any:
    """A job of ``user_id``'s: a result named MARKER (or an image so named, for the upload), when ``private``."""
    if refused.carries_images:
        name = f"{MARKER}.png" if private else f"{user_id}.png"
        return qm.store.submit(user_id, load_and_save(name), metadata={"images": [{"name": name, "image": TINY}]})
    workflow = copy.deepcopy(workflows["quick"])
    if private:
        workflow["3"]["inputs"]["filename_prefix"] = MARKER
    return qm.store.submit(user_id, workflow)


@pytest.mark.parametrize("refused", QUESTIONS, ids=lambda refused: refused.path.strip("/"))
@pytest.mark.parametrize("status", [401, 403])
async def test_a_question_refusing_the_worker_makes_the_replica_fatal_after_one_job(
    qm, comfy, make_worker, workflows, refused, status
):
    job = submit(qm, workflows, refused, "alice", private=True)
    waiting = submit(qm, workflows, refused, "bob", private=False)
    async with refusing_proxy(comfy.url, refused, status) as proxy:
        worker = make_worker(comfyui_url=proxy, serverless_max_idle_polls=100)
        assert await asyncio.wait_for(worker.run(), 15) == 1
    handed_back = qm.reports.landed(job.id)[0].body["error"]
    assert handed_back.startswith("Handed back: "), handed_back
    assert f"answered HTTP {status}" in handed_back and "COMFYUI_URL" in handed_back, handed_back
    assert qm.store.get(waiting.id).status == "pending", "a replica ComfyUI's proxy refuses takes no new job"
    reason = worker.state.fatal_reason or ""
    assert "COMFYUI_URL" in reason and f"{refused.question} (HTTP {status})" in reason, reason
    assert MARKER not in reason, "/health and /status carry no user data"


@pytest.mark.parametrize("refused", QUESTIONS, ids=lambda refused: refused.path.strip("/"))
async def test_a_question_refused_for_one_jobs_data_leaves_the_replica_taking_jobs(
    qm, comfy, make_worker, workflows, refused
):
    job = submit(qm, workflows, refused, "alice", private=True)
    served_next = submit(qm, workflows, refused, "bob", private=False)
    async with refusing_proxy(comfy.url, refused, 403, only_holding=MARKER) as proxy:
        worker = make_worker(comfyui_url=proxy)
        assert await asyncio.wait_for(worker.run(), 15) == 0
    assert qm.reports.landed(job.id)[0].body["error"].startswith("Handed back: ")
    assert qm.store.get(served_next.id).status == "completed"
    assert worker.state.fatal_reason is None
