"""A proxy in front of ComfyUI refusing POST /interrupt and POST /queue (403 with its own JSON) had its answer taken
for the prompt stopped: a worker stopped past its grace handed the job back as a clean shutdown, and logged nothing,
while the prompt ran on in ComfyUI for no one. A refusal is now no answer, as a 5xx or a timeout is: the worker logs
that it could not interrupt the prompt and hands the job back as the fault it is, naming the refusal."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from structlog.testing import capture_logs

from ..conftest import wait_for
from .conftest import comfyui_proxy


def interrupt_refusing_proxy(comfy_url: str) -> contextlib.AbstractAsyncContextManager[str]:
    """Passes every HTTP request to ComfyUI (not the websocket: it forbids upgrades) but POST /interrupt and
    POST /queue, which it refuses with 403 and its own JSON."""

    async def refuse(request: web.Request, _body: bytes, _upstream: object) -> web.Response | None:
        if request.method == "POST" and request.path in ("/interrupt", "/queue"):
            return web.json_response({"error": "forbidden"}, status=403)
        return None

    return comfyui_proxy(comfy_url, refuse)


async def test_a_refused_interrupt_at_a_stop_hands_the_job_back_as_a_fault_naming_it(
    qm, comfy, make_worker, workflows
):
    job = qm.store.submit("alice", workflows["slow"])
    async with interrupt_refusing_proxy(comfy.url) as proxy:
        worker = make_worker(comfyui_url=proxy, shutdown_grace_s=0.1)
        run = asyncio.create_task(worker.run())
        await wait_for(lambda: comfy.running_prompt_id)
        with capture_logs() as logs:
            worker.request_shutdown()
            assert await asyncio.wait_for(run, 10) == 0
    [report] = qm.reports.landed(job.id)
    assert report.body["error"].startswith(
        "Handed back: worker test-worker could not interrupt the prompt when it was stopped: ComfyUI POST "
        "/interrupt answered HTTP 403"
    ), report.body["error"]
    assert "Could not interrupt the prompt" in [e["event"] for e in logs]
    assert comfy.interrupts_received == [], "the proxy let no interrupt through"
