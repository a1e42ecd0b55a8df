"""What the worker reads of ComfyUI's answers is bounded (MAX_COMFYUI_MESSAGE_BYTES): a workflow can make its
history as large as it likes, and the job fails naming the answer instead of the worker holding it all."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc

import pytest
from aiohttp import web

import worker.comfyui
from bench.comfyui_reply_memory import text_output_workflow
from worker.comfyui import ComfyUIClient, ComfyUIUnavailable, ReplyTooLarge

from ..conftest import served

SMALL_BOUND = 256 << 10


async def test_a_workflow_whose_history_is_too_large_fails_naming_the_answer_and_the_worker_goes_on(
    qm, comfy, make_worker, workflows, monkeypatch
):
    monkeypatch.setattr(worker.comfyui, "MAX_COMFYUI_MESSAGE_BYTES", SMALL_BOUND)
    hostile = qm.store.submit("mallory", text_output_workflow(1 << 20))  # PreviewAny of a 1 MiB text
    follower = qm.store.submit("alice", workflows["quick"])
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(hostile.id)
    assert report.endpoint == "fail-job"
    prompt_id = comfy.prompts_received[0].prompt_id
    assert report.body["error"] == (
        f"ComfyUI's answer to GET /history/{prompt_id} is larger than 0.25 MiB, the most the worker reads: it repeats "
        "what the workflow sent and made (its inputs, a node's text output), so the workflow made it that large"
    )
    assert qm.reports.landed(follower.id)[0].endpoint == "complete-job", "the worker went on working"


@pytest.fixture
async def endless_comfyui():
    """A server whose every answer is JSON that never ends, sent in chunks without a Content-Length."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"x": "')
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(b"x" * 65536)
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", endless)
    async with served(app) as url:
        client = ComfyUIClient(url, timeout_s=5)
        yield client
        await client.aclose()


async def test_an_answer_without_end_is_cut_at_the_bound(endless_comfyui, monkeypatch):
    monkeypatch.setattr(worker.comfyui, "MAX_COMFYUI_MESSAGE_BYTES", SMALL_BOUND)
    with pytest.raises(ReplyTooLarge, match=r"GET /history/p1 is larger than 0\.25 MiB"):
        await asyncio.wait_for(endless_comfyui.history("p1"), 5)
    # /queue lists every client's prompts, /system_stats nothing a workflow wrote: too large is like no answer.
    with pytest.raises(ComfyUIUnavailable, match=r"GET /queue is larger than 0\.25 MiB"):
        await asyncio.wait_for(endless_comfyui.queued_prompt_ids(), 5)
    with pytest.raises(ComfyUIUnavailable, match=r"GET /system_stats is larger than 0\.25 MiB"):
        await asyncio.wait_for(endless_comfyui.system_stats(), 5)
    await asyncio.wait_for(endless_comfyui.interrupt("p1"), 5)  # an answer that says nothing is not read


async def test_a_finished_job_leaves_none_of_its_comfyui_answers_in_the_worker(qm, comfy, make_worker):
    """The worker kept the last job's outcome, its prompt's history outputs with it, until the next job came: a
    workflow's 16 MiB text stayed in an idle worker's memory for as long as none did."""
    text_bytes = 16 << 20
    job = qm.store.submit("mallory", text_output_workflow(text_bytes))
    worker = make_worker()
    tracemalloc.start()
    try:
        assert await asyncio.wait_for(worker.run(), 30) == 0
        gc.collect()
        traces = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, "*/standins/*")])
    finally:
        tracemalloc.stop()
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"
    held = sum(stat.size for stat in traces.statistics("filename"))
    assert held < text_bytes // 4, f"{held / (1 << 20):.1f} MiB still held by the worker"
