"""A poll answered with a job no report can name (`{"job": {}}`, `{"job": false}`: a broken queue manager, or a proxy
rewriting its answers) was taken as a job, skipped, and the next poll sent at once: 2813 polls in 3 s at a poll
interval of 0.5 s, an error line each, and a serverless worker never went idle nor gave up. It is a failed poll now:
backed off, and counted towards SERVERLESS_MAX_UNREACHABLE_S."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

ANSWERS = 1000


@pytest.mark.parametrize("job", [{}, False, {"id": " "}])
async def test_polls_answered_with_a_job_without_an_id_are_backed_off_and_end_a_serverless_worker(
    qm, comfy, make_worker, job
):
    qm.faults.inject("next-job", status=200, body={"job": job}, times=ANSWERS)
    worker = make_worker(poll_interval_s=0.2, serverless_max_unreachable_s=1)
    with capture_logs() as logs:
        assert await asyncio.wait_for(worker.run(), 30) == 1
    polls = ANSWERS - qm.faults.pending("next-job")
    assert polls <= 8, f"{polls} polls: not backed off"
    skipped = [e for e in logs if e["event"] == "Received a job that cannot be reported back; skipping it"]
    assert len(skipped) == polls
    [gave_up] = [e for e in logs if e["event"] == "Queue manager unreachable; exiting"]
    assert "a job that cannot be reported back" in gave_up["error"]
