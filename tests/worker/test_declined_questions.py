"""A proxy in front of ComfyUI declining GET /history/{id} or GET /queue for now (429 with its own JSON,
{"error": ...}) had its answer read as ComfyUI's: an empty history ("not finished yet") and an empty queue. Once
neither listed the prompt for RunTimings.lost_confirm_s, the run took it for removed ("ComfyUI no longer knows the
prompt") and handed the job back, a finished one too, leaving a running prompt to run on for no one. Such an
answer is now no answer, as one ComfyUI did not give at all: the run asks again while ComfyUI answers within
lost_after_s, and the job completes once the proxy lets the questions through."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import replace

import pytest
from aiohttp import web

from .conftest import HEALTHY_TIMINGS, comfyui_proxy

DECLINED = 20  # answers declined: far past lost_confirm_s (0.3 s) at the HTTP poll pace (0.05 s)


def declining_proxy(
    comfy_url: str, declines: re.Pattern[str], times: int
) -> contextlib.AbstractAsyncContextManager[str]:
    """A proxy passing every HTTP request to ComfyUI (not the websocket: it forbids upgrades) that answers the
    first ``times`` GETs whose path ``declines`` matches, and whose answer names a prompt, with 429 and its JSON."""
    left = times

    def decline(request: web.Request, body: bytes) -> web.Response | None:
        nonlocal left
        names_a_prompt = body not in (b"{}", b'{"queue_running": [], "queue_pending": []}')
        if request.method == "GET" and declines.fullmatch(request.path) and names_a_prompt and left > 0:
            left -= 1
            return web.json_response({"error": "rate limit exceeded, retry later"}, status=429)
        return None

    return comfyui_proxy(comfy_url, rewrite=decline)


@pytest.mark.parametrize("declines", [r"/history/[^/]+", "/queue"], ids=["history", "queue"])
async def test_a_question_a_proxy_declines_for_now_is_asked_again_and_the_job_completes(
    declines, qm, comfy, make_worker, workflows
):
    job = qm.store.submit("alice", workflows["slow"])
    async with declining_proxy(comfy.url, re.compile(declines), DECLINED) as proxy:
        worker = make_worker(comfyui_url=proxy, timings=replace(HEALTHY_TIMINGS, lost_after_s=10.0))
        assert await worker.run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", json.dumps(report.body)
    assert len(comfy.prompts_received) == 1
