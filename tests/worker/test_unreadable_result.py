"""ComfyUI running as another uid with umask 077 writes results the worker may not read, though ComfyUI's own
GET /view serves them: the copy from COMFYUI_OUTPUT_DIR raised PermissionError and every job with results failed
as its own fault. Such a result is now fetched over /view, and the worker says once what to fix."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from structlog.testing import capture_logs

from ..conftest import LoopbackPeer, run_as_nobody
from .test_outputs import one_output


class ComfyUIServing(LoopbackPeer):
    """ComfyUI's GET /view, serving the file it wrote as the uid that may read it."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data
        self.views: list[str] = []

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.views.append(request.query["filename"])
        return web.Response(body=self.data, content_type="image/png")


async def deliver(comfyui_output_dir: Path, outputs: Path, data: bytes) -> dict[str, Any]:
    from worker.comfyui import ComfyUIClient
    from worker.outputs import OutputDelivery

    async with ComfyUIServing(data) as comfyui:
        client = ComfyUIClient(comfyui.url)
        try:
            delivery = OutputDelivery(outputs, client, comfyui_output_dir=comfyui_output_dir)
            with capture_logs() as logs:
                try:
                    files = [await delivery.deliver({"9": one_output(name)}, "alice", f"job-{name}")
                             for name in ("a.png", "b.png")]  # fmt: skip
                except Exception as exc:  # the child reports what the worker did
                    return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            await client.aclose()
    return {
        "delivered": [(outputs / file.path).read_bytes().decode() for [file] in files],
        "views": comfyui.views,
        "warnings": [(line["event"], line.get("owner")) for line in logs if line["log_level"] == "warning"],
    }


def test_a_result_the_worker_may_not_read_is_fetched_over_view_and_said_once(shared_tmp: Path):
    comfyui_output_dir = shared_tmp / "comfy-output"
    comfyui_output_dir.mkdir()
    for name in ("a.png", "b.png"):
        (comfyui_output_dir / name).write_bytes(b"png")
        (comfyui_output_dir / name).chmod(0o000)  # umask 077 and another uid: the worker is denied
    outputs = shared_tmp / "outputs"
    outputs.mkdir()
    outputs.chmod(0o777)  # the worker's, whoever it runs as

    outcome = run_as_nobody(lambda: asyncio.run(deliver(comfyui_output_dir, outputs, b"png")))

    assert "error" not in outcome, outcome
    assert outcome["delivered"] == ["png", "png"] and outcome["views"] == ["a.png", "b.png"]
    [(event, owner)] = outcome["warnings"]
    assert event.startswith("A result file in COMFYUI_OUTPUT_DIR is not readable by the worker")
    assert f"a.png belongs to uid {os.getuid()}" in owner and "mode ----------" in owner
