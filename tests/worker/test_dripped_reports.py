"""A proxy in front of the queue manager dripping its answer to a report, a byte now and then: httpx's timeout
bounds each read, not the answer, and REPORT_RETRY_BUDGET_S is checked only between tries, so one try held the
worker, its job reported but not known to be, for as long as the drip went on. A try's whole answer now comes within
what is left of the budget (HTTP_TIMEOUT_S at least), and the report is given up with its budget."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from aiohttp import web
from structlog.testing import capture_logs

from ..conftest import served


async def test_a_completion_answer_dripped_for_ever_is_given_up_at_the_report_budget(
    qm, comfy, make_worker, workflows
):
    upstream = httpx.AsyncClient(base_url=qm.url)

    async def proxy(request: web.Request) -> web.StreamResponse:
        answer = await upstream.request(
            request.method, request.path_qs, content=await request.read(), headers={"Content-Type": "application/json"}
        )
        if request.path != "/api/workers/complete-job":
            return web.Response(status=answer.status_code, body=answer.content, content_type="application/json")
        dripped = web.StreamResponse(status=answer.status_code, headers={"Content-Type": "application/json"})
        await dripped.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:
                await dripped.write(b" ")
                await asyncio.sleep(0.05)
        return dripped

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    job = qm.store.submit("alice", workflows["quick"])
    try:
        async with served(app, shutdown_timeout=0.1) as url:
            worker = make_worker(queue_manager_url=url, http_timeout_s=0.5, report_retry_budget_s=1)
            with capture_logs() as logs:
                assert await asyncio.wait_for(worker.run(), 30) == 0
    finally:
        await upstream.aclose()
    [given_up] = [e for e in logs if e["event"].startswith("Report could not be delivered within the retry budget")]
    assert given_up["error"].startswith("ReadTimeout: queue manager took more than ")
    assert given_up["error"].endswith(" s to answer POST /api/workers/complete-job")
    assert qm.store.get(job.id).status == "completed", "the first try landed; only its answer was dripped"
