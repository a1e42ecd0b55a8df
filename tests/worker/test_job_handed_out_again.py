"""A queue manager that hands out again a job this worker already reported (comfy-multi's: the same id, no attempt
number; a manager restored from a backup): before, the worker ran it on ComfyUI again, GPU time for nothing, then its
report guard refused to send a second report ("Refusing to report a job twice", an error asking for a bug report).
The job is now skipped at intake with one warning: no ComfyUI run, nothing counted."""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web
from structlog.testing import capture_logs

from ..conftest import Answer, loopback_proxy


def replaying_proxy(qm_url: str) -> contextlib.AbstractAsyncContextManager[str]:
    """The queue manager, except that the first poll after a completion landed is answered with the job again."""
    handed: list[bytes] = []
    completed = [False]

    async def replay(request: web.Request, _body: bytes, _upstream: object) -> web.Response | None:
        if request.path == "/api/workers/next-job" and completed[0] and handed:
            completed[0] = False
            return web.Response(body=handed[0], content_type="application/json")
        return None

    async def record(request: web.Request, answer: Answer) -> None:
        if request.path == "/api/workers/next-job" and json.loads(answer.body).get("job") and not handed:
            handed.append(answer.body)
        if request.path == "/api/workers/complete-job" and answer.status == 200:
            completed[0] = True

    return loopback_proxy(qm_url, replay, record)


async def test_a_job_handed_out_again_after_its_report_is_skipped_without_running_it(
    qm, comfy, make_worker, workflows
):
    job = qm.store.submit("alice", workflows["quick"])
    async with replaying_proxy(qm.url) as url:
        worker = make_worker(queue_manager_url=url, serverless_max_idle_polls=3)
        with capture_logs() as logs:
            assert await asyncio.wait_for(worker.run(), 20) == 0
    assert qm.store.get(job.id).status == "completed"
    assert len(comfy.prompts_received) == 1, "ComfyUI ran the job once"
    assert (worker.state.jobs_completed, worker.state.jobs_failed, worker.state.jobs_abandoned) == (1, 0, 0)
    events = [e["event"] for e in logs]
    assert "Refusing to report a job twice" not in events
    [skipped] = [e for e in logs if e["event"] == "Job handed out again after this worker took it; skipping it"]
    assert skipped["job_id"] == job.id
