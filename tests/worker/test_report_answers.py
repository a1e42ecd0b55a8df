"""A hand back whose answer is not what the queue manager sends (a proxy's page with 200, a JSON list, nesting too
deep to read): the job still ends once, by the queue manager's lease if the hand back did not land, and the worker
goes on. Before, the answer's JSONDecodeError, AttributeError or RecursionError ended the worker with a traceback."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from queue_manager.server import QueueManagerServer

from ..conftest import wait_for


@pytest.mark.parametrize(
    "body", ["<html>maintenance</html>", ["pending"], "[" * 100_000 + "]" * 100_000], ids=["html", "list", "deep"]
)
async def test_a_hand_back_answered_200_with_a_body_not_of_its_shape_ends_the_job_and_the_worker_goes_on(
    comfy, make_worker, workflows, body
):
    async with QueueManagerServer(lease_timeout_s=30, test_hooks=True) as qm:
        job = qm.store.submit("alice", workflows["slow"])
        qm.faults.inject("release-job", status=200, body=body, after=True)
        worker = make_worker(queue_manager_url=qm.url, shutdown_grace_s=0.1)
        run = asyncio.create_task(worker.run())
        await wait_for(lambda: comfy.prompts_received)
        with capture_logs() as logs:
            worker.request_shutdown()
            assert await asyncio.wait_for(run, 10) == 0
        again = qm.store.get(job.id)
        assert (again.status, again.attempt) == ("pending", 2)
    assert (worker.state.jobs_finished, worker.state.jobs_abandoned) == (1, 1)
    [refused] = [e for e in logs if e["event"] == "Queue manager refused the report"]
    assert refused["error"] == (f"release-job for job {job.id} answered HTTP 200 with no JSON object: the queue "
                                "manager's answer did not reach the worker")
