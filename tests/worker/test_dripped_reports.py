"""A proxy in front of the queue manager dripping its answer to a report, a byte now and then: httpx's timeout
bounds each read, not the answer, and REPORT_RETRY_BUDGET_S is checked only between tries, so one try held the
worker, its job reported but not known to be, for as long as the drip went on. A try's whole answer now comes within
what is left of the budget (HTTP_TIMEOUT_S at least), and the report is given up with its budget."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from structlog.testing import capture_logs

from ..conftest import Answer, loopback_proxy


async def test_a_completion_answer_dripped_for_ever_is_given_up_at_the_report_budget(
    qm, comfy, make_worker, workflows
):
    async def drip_completions(request: web.Request, answer: Answer) -> web.StreamResponse | None:
        if request.path != "/api/workers/complete-job":
            return None
        dripped = web.StreamResponse(status=answer.status, headers={"Content-Type": "application/json"})
        await dripped.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:
                await dripped.write(b" ")
                await asyncio.sleep(0.05)
        return dripped

    job = qm.store.submit("alice", workflows["quick"])
    async with loopback_proxy(qm.url, rewrite=drip_completions) as url:
        worker = make_worker(queue_manager_url=url, http_timeout_s=0.5, report_retry_budget_s=1)
        with capture_logs() as logs:
            assert await asyncio.wait_for(worker.run(), 30) == 0
    [given_up] = [e for e in logs if e["event"].startswith("Report could not be delivered within the retry budget")]
    assert given_up["error"].startswith("ReadTimeout: queue manager took more than ")
    assert given_up["error"].endswith(" s to answer POST /api/workers/complete-job")
    assert qm.store.get(job.id).status == "completed", "the first try landed; only its answer was dripped"
