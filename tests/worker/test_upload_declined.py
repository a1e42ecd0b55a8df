"""A proxy in front of ComfyUI declining POST /upload/image for now (408, 429) said nothing of the image, yet the
worker took it for ComfyUI refusing the image (UploadRefused) and failed the job for good as its input's fault. It is
now ComfyUI's side's passing fault, as a 5xx is: the job is handed back."""

from __future__ import annotations

import pytest

from worker.comfyui import ComfyUIClient, ComfyUIUnavailable

from .test_view_declined import DecliningProxy


@pytest.mark.parametrize("status", [408, 429])
async def test_an_upload_declined_for_now_by_a_proxy_is_comfyuis_passing_fault_not_the_images(status: int):
    async with DecliningProxy(status) as proxy:
        client = ComfyUIClient(proxy.url)
        try:
            with pytest.raises(ComfyUIUnavailable, match=rf"POST /upload/image answered HTTP {status}"):
                await client.upload_image("a.png", b"png")
        finally:
            await client.aclose()
