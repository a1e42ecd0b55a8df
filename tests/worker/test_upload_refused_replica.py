"""A proxy in front of ComfyUI refusing the worker POST /upload/image (401, 403) was taken for ComfyUI refusing the
image: every job carrying images failed for good, blamed on its image, and the replica took the next one. It is now
the replica's fault, as for GET /view and POST /prompt: the job is handed back, and when an upload carrying no image
(which ComfyUI answers 400) is refused too, the replica goes fatal naming COMFYUI_URL and exits."""

from __future__ import annotations

import asyncio

import pytest

from .test_input_images import TINY, load_and_save
from .test_prompt_refused_replica import refusing_proxy

MARKER = "alice-private-name-3f7a"


@pytest.mark.parametrize("status", [401, 403])
async def test_upload_refusing_the_worker_hands_the_job_back_and_makes_the_replica_fatal(
    qm, comfy, make_worker, status
):
    name = f"{MARKER}.png"
    job = qm.store.submit("alice", load_and_save(name), metadata={"images": [{"name": name, "image": TINY}]})
    waiting = qm.store.submit("bob", load_and_save("b.png"), metadata={"images": [{"name": "b.png", "image": TINY}]})
    async with refusing_proxy(comfy.url, "/upload/image", status) as proxy:
        worker = make_worker(comfyui_url=proxy, serverless_max_idle_polls=100)
        assert await asyncio.wait_for(worker.run(), 15) == 1
    handed_back = qm.reports.landed(job.id)[0].body["error"]
    assert handed_back.startswith("Handed back: "), handed_back
    assert f"answered HTTP {status}" in handed_back and "COMFYUI_URL" in handed_back, handed_back
    assert qm.store.get(waiting.id).status == "pending", "a replica ComfyUI's proxy refuses takes no new job"
    reason = worker.state.fatal_reason or ""
    assert "COMFYUI_URL" in reason and f"POST /upload/image (HTTP {status})" in reason, reason
    assert MARKER not in reason, "/health and /status carry no user data"


async def test_upload_refusing_one_image_leaves_the_replica_taking_jobs(qm, comfy, make_worker):
    name = f"{MARKER}.png"
    job = qm.store.submit("alice", load_and_save(name), metadata={"images": [{"name": name, "image": TINY}]})
    images = [{"name": "b.png", "image": TINY}]
    served_next = qm.store.submit("bob", load_and_save("b.png"), metadata={"images": images})
    async with refusing_proxy(comfy.url, "/upload/image", 403, only_holding=MARKER) as proxy:
        worker = make_worker(comfyui_url=proxy)
        assert await asyncio.wait_for(worker.run(), 15) == 0
    assert qm.reports.landed(job.id)[0].body["error"].startswith("Handed back: ")
    assert qm.store.get(served_next.id).status == "completed"
    assert worker.state.fatal_reason is None
