"""A 404 whose body nests too deep to parse (a broken or hostile proxy in front of the queue manager): before, its
RecursionError escaped the check for an unknown route. On a heartbeat it ended the lease task silently, so the job
ran on unrenewed, its lease lost to a second worker; on a report it was logged with a traceback as an unexpected
answer. Such a body is now read like one that is not JSON: the job is gone."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from structlog.testing import capture_logs

from queue_manager.server import QueueManagerServer

from ..conftest import loopback_proxy, wait_for

DEEP = "[" * 5_000 + "]" * 5_000


def deep_not_found_proxy(qm_url: str, path: str, armed: list[int]) -> contextlib.AbstractAsyncContextManager[str]:
    """The queue manager behind a proxy answering ``path`` 404 with DEEP while ``armed[0]`` > 0 (one less each)."""

    async def not_found(request: web.Request, _body: bytes, _upstream: object) -> web.Response | None:
        if request.path == path and armed[0] > 0:
            armed[0] -= 1
            return web.Response(status=404, text=DEEP, content_type="application/json")
        return None

    return loopback_proxy(qm_url, not_found)


async def test_a_heartbeat_answered_404_nested_too_deep_is_a_job_gone_not_a_silent_end_of_the_heartbeats(
    comfy, make_worker, workflows
):
    async with QueueManagerServer(lease_timeout_s=30, test_hooks=True) as qm:
        job = qm.store.submit("alice", workflows["slow"])
        armed = [0]
        async with deep_not_found_proxy(qm.url, "/api/workers/heartbeat", armed) as url:
            comfy.freeze(class_type="ImageBlur")
            worker = make_worker(queue_manager_url=url, lease_heartbeat_s=0.05, serverless_job_limit=1)
            run = asyncio.create_task(worker.run())
            await comfy.wait_until_frozen()
            with capture_logs() as logs:
                armed[0] = 1
                await wait_for(lambda: worker.state.jobs_abandoned == 1, timeout=10)
            comfy.release()
            assert await asyncio.wait_for(run, 10) == 0
        assert qm.reports.for_job(job.id) == [], "no report for a job the manager said it no longer knows"
    [lost] = [e for e in logs if e["event"] == "The queue manager took the job back; abandoning it without a report"]
    assert lost["error"] == f"heartbeat for job {job.id}: the queue manager no longer knows this job (404)"


async def test_a_report_answered_404_nested_too_deep_is_a_job_gone(comfy, make_worker, workflows):
    async with QueueManagerServer(lease_timeout_s=30, test_hooks=True) as qm:
        job = qm.store.submit("alice", workflows["quick"])
        async with deep_not_found_proxy(qm.url, "/api/workers/complete-job", [1]) as url:
            worker = make_worker(queue_manager_url=url, serverless_job_limit=1)
            with capture_logs() as logs:
                assert await asyncio.wait_for(worker.run(), 10) == 0
        assert qm.store.get(job.id).status == "running", "left to the lease: the report never reached the manager"
    events = [e["event"] for e in logs]
    assert "Job no longer exists on the queue manager; report dropped" in events
    assert not [e for e in logs if e["event"].startswith("Report failed on an unexpected answer")]
