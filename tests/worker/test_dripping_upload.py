"""A ComfyUI dripping its answer to an image upload, a byte at a time: httpx's timeout bounds each read, not the
whole answer, and the uploads keep the worker's heartbeat fresh, so the job was held for as long as the drip went on
(one byte a second: 9 hours for a 32 KiB answer). The whole answer now comes within HTTP_TIMEOUT_S or the upload
is ComfyUI's failure."""

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
    """Answers POST /upload/image as ComfyUI does, preceded by 100 bytes of blanks sent one every DRIP_EVERY_S."""

    async def upload(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                await response.write(b" ")
                await asyncio.sleep(DRIP_EVERY_S)
            answer = {"name": form["image"].filename, "subfolder": form["subfolder"], "type": "input"}
            await response.write(json.dumps(answer).encode())
        return response

    app = web.Application()
    app.router.add_post("/upload/image", upload)
    async with served(app, shutdown_timeout=0.5) as url:
        client = ComfyUIClient(url, timeout_s=HTTP_TIMEOUT_S)
        yield client
        await client.aclose()


async def test_an_upload_answer_dripped_a_byte_at_a_time_fails_within_the_http_timeout(dripping_comfyui):
    with pytest.raises(ComfyUIUnavailable) as raised:
        await asyncio.wait_for(dripping_comfyui.upload_image("a.png", b"png", "alice"), 10)  # the drip lasts 20 s
    assert str(raised.value) == "ComfyUI POST /upload/image: no whole answer within 1 s (HTTP_TIMEOUT_S)"
