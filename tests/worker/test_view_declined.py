"""A proxy in front of ComfyUI declining GET /view for now (408: it would not wait for the request; 429: too many
requests) said nothing of the file, yet the worker took it for a refusal of the file (FileNotServed) and failed the
job as its own fault. It is now ComfyUI's side's passing fault, as a 5xx is: the job is handed back."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from worker.comfyui import ComfyUIClient
from worker.outputs import ComfyUILostDuringDelivery, OutputDelivery

from ..conftest import LoopbackPeer
from .test_outputs import one_output


class DecliningProxy(LoopbackPeer):
    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    async def answer(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=self.status, headers={"Retry-After": "5"}, text="slow down")


@pytest.mark.parametrize("status", [408, 429])
async def test_view_declined_for_now_by_a_proxy_hands_the_job_back(status: int, tmp_path: Path):
    async with DecliningProxy(status) as proxy:
        client = ComfyUIClient(proxy.url)
        try:
            delivery = OutputDelivery(tmp_path / "outputs", client)
            with pytest.raises(ComfyUILostDuringDelivery, match=rf"GET /view 'x\.png' answered HTTP {status}"):
                await delivery.deliver({"9": one_output("x.png")}, "alice", "job-1")
        finally:
            await client.aclose()
