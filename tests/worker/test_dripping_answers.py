"""A ComfyUI (or a proxy in front of it) dripping its answers, a byte at a time: httpx's timeout bounds each read,
not the whole answer, and the uploads and the submission keep the worker's heartbeat fresh, so a job was held for
as long as the drip went on (one byte a second: 9 hours for a 32 KiB answer). The whole answer now comes within
HTTP_TIMEOUT_S or the call is ComfyUI's failure."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from aiohttp import web

from worker.comfyui import ComfyUIClient, ComfyUIUnavailable

from ..conftest import served

DRIP_EVERY_S = 0.2  # well inside the per-read timeout below
HTTP_TIMEOUT_S = 1.0


@pytest.fixture
async def dripping_comfyui():
    """Answers as ComfyUI does, each answer preceded by 100 bytes of blanks sent one every DRIP_EVERY_S."""

    async def drip(request: web.Request) -> web.StreamResponse:
        if request.path == "/upload/image":
            form = await request.post()
            answer = {"name": form["image"].filename, "subfolder": form["subfolder"], "type": "input"}
        else:
            answer = {"prompt_id": "p1", "number": 0, "node_errors": {}} if request.path == "/prompt" else {}
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                await response.write(b" ")
                await asyncio.sleep(DRIP_EVERY_S)
            await response.write(json.dumps(answer).encode())
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", drip)
    async with served(app, shutdown_timeout=0.5) as url:
        client = ComfyUIClient(url, timeout_s=HTTP_TIMEOUT_S)
        yield client
        await client.aclose()


async def test_an_upload_answer_dripped_a_byte_at_a_time_fails_within_the_http_timeout(dripping_comfyui):
    with pytest.raises(ComfyUIUnavailable) as raised:
        await asyncio.wait_for(dripping_comfyui.upload_image("a.png", b"png", "alice"), 10)  # the drip lasts 20 s
    assert str(raised.value) == "ComfyUI POST /upload/image: no whole answer within 1 s (HTTP_TIMEOUT_S)"


@pytest.mark.parametrize(
    ("call", "request_line"),
    [
        (lambda comfy: comfy.queue_prompt({"1": {}}, "client", "p1"), "POST /prompt"),
        (lambda comfy: comfy.history("p1"), "GET /history/p1"),
        (lambda comfy: comfy.queued_prompt_ids(), "GET /queue"),
        (lambda comfy: comfy.system_stats(), "GET /system_stats"),
    ],
)
async def test_every_other_answer_dripped_fails_within_the_http_timeout(dripping_comfyui, call, request_line):
    with pytest.raises(ComfyUIUnavailable) as raised:
        await asyncio.wait_for(call(dripping_comfyui), 10)  # the drip lasts 20 s
    assert str(raised.value) == f"ComfyUI {request_line}: no whole answer within 1 s (HTTP_TIMEOUT_S)"
