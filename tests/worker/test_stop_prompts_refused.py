"""A restarted worker (or a job's next attempt) stops the prompts its killed run left in ComfyUI: it deletes the
pending ones and interrupts the running one. A proxy refusing the delete of one stopped there: the other pending
prompts stayed queued and the running one ran on, every later job waiting behind them. Now each is tried, and the
refusals are told together."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web

from worker.comfyui import WORKER_ID_KEY, ComfyUIClient, ComfyUIUnavailable

from ..conftest import wait_for
from .conftest import comfyui_proxy


def delete_refusing_proxy(comfy_url: str, refused_id: str) -> contextlib.AbstractAsyncContextManager[str]:
    """Passes every HTTP request to ComfyUI but POST /queue deleting ``refused_id``, refused 403 with its own JSON."""

    async def refuse(request: web.Request, body: bytes, _upstream: object) -> web.Response | None:
        if request.method == "POST" and request.path == "/queue" and refused_id.encode() in body:
            return web.json_response({"error": "forbidden"}, status=403)
        return None

    return comfyui_proxy(comfy_url, refuse)


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
