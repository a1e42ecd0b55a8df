"""A restarted worker (or a job's next attempt) stops the prompts its killed run left in ComfyUI: it deletes the
pending ones and interrupts the running one. A proxy refusing the delete of one stopped there: the other pending
prompts stayed queued and the running one ran on, every later job waiting behind them. Now each is tried, and the
refusals are told together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from worker.comfyui import WORKER_ID_KEY, ComfyUIClient, ComfyUIUnavailable

from ..conftest import served, wait_for


@contextlib.asynccontextmanager
async def delete_refusing_proxy(comfy_url: str, refused_id: str) -> AsyncIterator[str]:
    """Passes every HTTP request to ComfyUI but POST /queue deleting ``refused_id``, refused 403 with its own JSON."""
    async with aiohttp.ClientSession(auto_decompress=False) as upstream:

        async def forward(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            if request.method == "POST" and request.path == "/queue" and refused_id.encode() in body:
                return web.json_response({"error": "forbidden"}, status=403)
            headers = {"Content-Type": request.headers.get("Content-Type", "application/octet-stream")}
            async with upstream.request(request.method, comfy_url + str(request.rel_url), data=body,
                                        headers=headers) as answer:  # fmt: skip
                return web.Response(status=answer.status, body=await answer.read(), content_type=answer.content_type)

        app = web.Application()
        app.router.add_route("*", "/{path:.*}", forward)
        async with served(app) as url:
            yield url


async def test_one_refused_delete_leaves_the_other_prompts_stopped_and_is_told(comfy, workflows):
    comfy.freeze(class_type="ImageBlur")
    killed_run = ComfyUIClient(comfy.url, worker_id="killed-run")
    try:
        for prompt_id in ("running-1", "pending-refused", "pending-2"):
            await killed_run.queue_prompt(workflows["slow"], "client-1", prompt_id)
        await asyncio.wait_for(comfy.wait_until_frozen(), 10)
        assert comfy.running_prompt_id == "running-1"
        async with delete_refusing_proxy(comfy.url, "pending-refused") as proxy:
            restarted = ComfyUIClient(proxy, worker_id="killed-run")
            try:
                with pytest.raises(ComfyUIUnavailable, match=r"pending-refused.*answered HTTP 403") as refused:
                    await asyncio.wait_for(restarted.stop_prompts_of(WORKER_ID_KEY, "killed-run"), 10)
            finally:
                await restarted.aclose()
        assert "pending-2" not in str(refused.value)
        _, pending = await killed_run.queued_prompt_ids()
        assert pending == {"pending-refused"}, "the other pending prompt is deleted"
        await wait_for(lambda: [i.body.get("prompt_id") for i in comfy.interrupts_received] == ["running-1"], 10)
    finally:
        comfy.release()
        await killed_run.aclose()
