"""An auth proxy in front of ComfyUI refusing the worker GET /view (401, 403: a misconfigured COMFYUI_URL or proxy)
said nothing of the file, yet the worker took it for ComfyUI refusing the file (FileNotServed) and failed every job
for good as its own. ComfyUI asks no credentials, and its 403 (a subfolder out of its folder) needs a path the
worker refuses before asking: it is now a fault of the replica's side, as POST /prompt's 401 and 403 are, and the
job is handed back with a reason naming COMFYUI_URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from worker.comfyui import ComfyUIClient
from worker.outputs import ComfyUILostDuringDelivery, OutputDelivery

from ..conftest import LoopbackPeer
from .test_outputs import one_output


class RefusingProxy(LoopbackPeer):
    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    async def answer(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "authentication required"}, status=self.status)


@pytest.mark.parametrize("status", [401, 403])
async def test_view_refused_by_an_auth_proxy_hands_the_job_back_naming_comfyui_url(status: int, tmp_path: Path):
    async with RefusingProxy(status) as proxy:
        client = ComfyUIClient(proxy.url)
        try:
            delivery = OutputDelivery(tmp_path / "outputs", client)
            refused = rf"GET /view 'x\.png' answered HTTP {status}: .* check COMFYUI_URL"
            with pytest.raises(ComfyUILostDuringDelivery, match=refused):
                await delivery.deliver({"9": one_output("x.png")}, "alice", "job-1")
        finally:
            await client.aclose()
