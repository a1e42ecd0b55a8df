"""A ComfyUI (or a proxy in front of it) serving a result file over /view a byte at a time: httpx's timeout bounds
each read, not the whole answer, and each MiB written kept the delivery "moving", so the job was held for as long as
the drip went on while its lease was renewed. Each 32 MiB of a file (or the rest of it) now comes within
HTTP_TIMEOUT_S, or the job is handed back as ComfyUI's failure; a file served at loopback speed is not affected."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from worker.comfyui import ComfyUIClient
from worker.outputs import OutputDelivery

from .conftest import HEALTHY_WITHIN_S, comfyui_proxy
from .test_outputs import hostile_save_image, one_output

DRIP_EVERY_S = 0.2  # well inside the per-read timeout: httpx never times a read out
DRIP_FOR_S = 60.0  # far past the bound the test waits for; the old worker waited it out, then failed the file


@contextlib.asynccontextmanager
async def dripping_view(comfy_url: str) -> AsyncIterator[str]:
    """A proxy in front of ComfyUI that passes every request and the websocket through, and answers GET /view
    with a byte every DRIP_EVERY_S: its base URL."""

    async def pass_websocket(request: web.Request, upstream: aiohttp.ClientSession) -> web.WebSocketResponse:
        client = web.WebSocketResponse(max_msg_size=0)
        await client.prepare(request)
        async with upstream.ws_connect(comfy_url + str(request.rel_url), max_msg_size=0) as comfyui:

            async def pass_events() -> None:
                async for message in comfyui:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        await client.send_str(message.data)
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        await client.send_bytes(message.data)

            passing = asyncio.create_task(pass_events())
            async for _ in client:  # the worker sends nothing; its close ends this
                pass
            passing.cancel()
        return client

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(int(DRIP_FOR_S / DRIP_EVERY_S)):
                await response.write(b"x")
                await asyncio.sleep(DRIP_EVERY_S)
        return response

    async def drip_view(request: web.Request, _: bytes, upstream: aiohttp.ClientSession) -> web.StreamResponse | None:
        if request.path == "/ws":
            return await pass_websocket(request, upstream)
        return await drip(request) if request.path == "/view" else None

    async with comfyui_proxy(comfy_url, drip_view) as url:
        yield url


async def test_a_result_dripped_over_view_hands_the_job_back_within_the_http_timeout(
    qm, comfy, make_worker, workflows
):
    hostile_save_image(comfy, lambda _env: one_output("slow.png"))
    job = qm.store.submit("alice", workflows["quick"])
    async with dripping_view(comfy.url) as proxy:
        worker = make_worker(comfyui_url=proxy, http_timeout_s=HEALTHY_WITHIN_S, serverless_job_limit=1)
        assert await asyncio.wait_for(worker.run(), 30) == 0  # the drip lasts 60 s
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert report.body["error"].startswith(
        "Handed back: Output delivery failed: could not deliver output slow.png of node 3: ComfyUIUnavailable: "
        "ComfyUI GET /view 'slow.png': less than 32 MiB, and not the whole file, came within 2.5 s (HTTP_TIMEOUT_S)"
    )
    [copy] = [j for j in qm.store.list() if j.id != job.id]
    assert copy.status == "pending" and copy.metadata["attempt"] == 2
    assert worker.state.jobs_handed_back == 1 and worker.state.jobs_failed == 0


async def test_a_large_result_served_at_loopback_speed_is_delivered_whole(comfy, tmp_path: Path):
    size = 160 << 20  # five 32-MiB pieces, each within the test's HTTP timeout
    with open(comfy.output_dir / "big.bin", "wb") as out:
        out.truncate(size)
    client = ComfyUIClient(comfy.url, timeout_s=HEALTHY_WITHIN_S)
    try:
        delivery = OutputDelivery(tmp_path / "outputs", client)
        [delivered] = await delivery.deliver({"9": one_output("big.bin")}, "alice", "job-1")
    finally:
        await client.aclose()
    assert delivered.bytes == size
    assert (tmp_path / "outputs" / delivered.path).stat().st_size == size
