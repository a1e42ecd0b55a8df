"""comfy-multi's hand back resubmits the job as a copy (POST /api/jobs): an answer to that submission which is not the
manager's (a JSON list, a string, nesting too deep to read) ends the original once, saying what became of the copy,
and the worker goes on. Before, the answer's TypeError or RecursionError ended the worker."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from ..conftest import wait_for

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "body",
    [["x"], "a proxy's page", {"id": None}, {"id": ["x"]}, DEEP],
    ids=["list", "text", "null", "list-id", "deep"],
)
async def test_a_resubmission_answered_201_without_a_job_id_fails_the_original_naming_it_and_the_worker_goes_on(
    qm, comfy, make_worker, workflows, body
):
    job = qm.store.submit("alice", workflows["slow"])
    qm.faults.inject("submit-job", status=201, body=body, after=True)
    worker = make_worker(shutdown_grace_s=0.1, serverless_job_limit=1)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    with capture_logs() as logs:
        worker.request_shutdown()
        assert await asyncio.wait_for(run, 10) == 0
    [report] = qm.reports.landed(job.id)
    assert report.body["error"].startswith("Handed back: worker test-worker")
    assert "resubmitted, but the queue manager's answer (HTTP 201) named no copy" in report.body["error"]
    [copy] = [j for j in qm.store.list() if j.id != job.id]
    assert copy.metadata["requeued_from"] == job.id
    assert worker.state.jobs_finished == worker.state.jobs_handed_back == 1, "the copy exists: handed back"
    [handed_back] = [e for e in logs if e["event"] == f"Job {job.id} handed back"]
    assert handed_back["next_attempt"] == 2
    assert not [e for e in logs if e.get("exc_info")]


@pytest.mark.parametrize("fault", [{"status": 502}, {"status": 504}, {"drop": True}], ids=["502", "504", "dropped"])
async def test_a_resubmission_whose_answer_was_lost_is_not_submitted_again(qm, comfy, make_worker, workflows, fault):
    """POST /api/jobs creates a job each time: after a lost answer (a proxy's 502 once the copy was made) a retry ran
    the job twice. Now only a submission that surely did not land (408, 429, no connection) is sent again."""
    job = qm.store.submit("alice", workflows["slow"])
    qm.faults.inject("submit-job", after=True, **fault)
    worker = make_worker(shutdown_grace_s=0.1, serverless_job_limit=1)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    with capture_logs() as logs:
        worker.request_shutdown()
        assert await asyncio.wait_for(run, 10) == 0
    copies = [j for j in qm.store.list() if j.id != job.id]
    assert len(copies) == 1, "one copy, not two"
    [report] = qm.reports.landed(job.id)
    assert report.body["error"].startswith("Handed back: worker test-worker")
    assert "resubmitting it may not have worked: its answer was lost (" in report.body["error"]
    assert report.body["error"].endswith("look among your jobs for a copy before submitting it again")
    assert worker.state.jobs_failed == 1, "the worker cannot know the copy exists: the job ends failed"
    assert f"Job {job.id} failed" in [e["event"] for e in logs]


@pytest.mark.parametrize("status", [429, 503])
async def test_a_resubmission_refused_before_it_was_taken_is_sent_again(qm, comfy, make_worker, workflows, status):
    """429 (the queue is full) and 503 (a proxy with no manager behind it, a manager at its budget) come before the
    job is made: sending it again cannot make a second copy, and failing it would lose a job no fault of its own."""
    job = qm.store.submit("alice", workflows["slow"])
    qm.faults.inject("submit-job", status=status, body={"detail": "Queue is full (max depth: 100)"})
    worker = make_worker(shutdown_grace_s=0.1, serverless_job_limit=1)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    with capture_logs() as logs:
        worker.request_shutdown()
        assert await asyncio.wait_for(run, 10) == 0
    [copy] = [j for j in qm.store.list() if j.id != job.id]
    assert qm.reports.landed(job.id)[0].body["error"].endswith(f"; resubmitted as {copy.id}")
    [handed_back] = [e for e in logs if e["event"] == f"Job {job.id} handed back"]
    assert (handed_back["new_job_id"], handed_back["next_attempt"]) == (copy.id, 2)
