"""A proxy in front of ComfyUI refusing the worker GET /view (401, 403) while /system_stats passes: each job was handed
back, using up one of its attempts, and the replica stayed ready and took the next job, to hand it back too: one
broken replica failed job after job for good. It now goes fatal after the first, its reason naming COMFYUI_URL, and
exits for the platform to replace it. A proxy refusing only one file's name (a filter on what a user named it) says
nothing of the replica: a question naming no file, which ComfyUI answers 404, tells the two apart."""

from __future__ import annotations

import asyncio
import contextlib
import copy

import pytest
from aiohttp import web

from .conftest import comfyui_proxy

MARKER = "alice-private-prefix-5d2b"


def view_refusing_proxy(
    comfy_url: str, status: int, *, only_named: str | None = None
) -> contextlib.AbstractAsyncContextManager[str]:
    """Passes every HTTP request to ComfyUI (not the websocket) but GET /view, which it refuses with ``status``:
    every one, or ``only_named``: those whose filename holds it."""

    async def refuse(request: web.Request, _body: bytes, _upstream: object) -> web.Response | None:
        if request.path == "/view" and (only_named is None or only_named in request.query.get("filename", "")):
            return web.json_response({"error": "authentication required"}, status=status)
        return None

    return comfyui_proxy(comfy_url, refuse)


@pytest.mark.parametrize("status", [401, 403])
async def test_view_refusing_the_worker_makes_the_replica_fatal_after_one_job(
    qm, comfy, make_worker, workflows, status
):
    workflow = copy.deepcopy(workflows["quick"])
    workflow["3"]["inputs"]["filename_prefix"] = MARKER
    job = qm.store.submit("alice", workflow)
    waiting = qm.store.submit("bob", workflows["quick"])
    async with view_refusing_proxy(comfy.url, status) as proxy:
        worker = make_worker(comfyui_url=proxy, serverless_max_idle_polls=100)
        assert await asyncio.wait_for(worker.run(), 15) == 1
    handed_back = qm.reports.landed(job.id)[0].body["error"]
    assert handed_back.startswith("Handed back: "), handed_back
    assert f"answered HTTP {status}" in handed_back and "COMFYUI_URL" in handed_back, handed_back
    assert qm.store.get(waiting.id).status == "pending", "a replica ComfyUI's proxy refuses takes no new job"
    reason = worker.state.fatal_reason or ""
    assert "COMFYUI_URL" in reason and f"HTTP {status}" in reason, reason
    assert MARKER not in reason, "/health and /status carry no user data"


async def test_view_refusing_one_files_name_leaves_the_replica_taking_jobs(qm, comfy, make_worker, workflows):
    workflow = copy.deepcopy(workflows["quick"])
    workflow["3"]["inputs"]["filename_prefix"] = MARKER
    job = qm.store.submit("alice", workflow)
    served_next = qm.store.submit("bob", workflows["quick"])
    async with view_refusing_proxy(comfy.url, 403, only_named=MARKER) as proxy:
        worker = make_worker(comfyui_url=proxy)
        assert await asyncio.wait_for(worker.run(), 15) == 0
    assert qm.reports.landed(job.id)[0].body["error"].startswith("Handed back: ")
    assert qm.store.get(served_next.id).status == "completed"
    assert worker.state.fatal_reason is None
