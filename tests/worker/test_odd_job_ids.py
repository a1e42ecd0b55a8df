"""A job id the worker refuses as unsafe is still looked up when its failure report is refused (404, 409): the
look-up put the id in the path as it came, so a line break in it raised httpx.InvalidURL out of the worker loop (the
worker died with a traceback) and a "#" or "?" looked up another job. It is quoted now."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs


async def test_a_refused_failure_of_a_job_whose_id_has_a_line_break_does_not_end_the_worker(
    qm, comfy, make_worker, workflows
):
    odd = {"id": "job\n1", "user_id": "alice", "workflow": workflows["quick"]}
    qm.faults.inject("next-job", status=200, body={"job": odd})
    qm.faults.inject("fail-job", status=404, body={"detail": "Job not found"})
    good = qm.store.submit("alice", workflows["quick"])
    with capture_logs() as logs:
        assert await asyncio.wait_for(make_worker().run(), 30) == 0
    [refused] = qm.reports.for_job("job\n1")
    assert refused.endpoint == "fail-job" and "not safe as a folder name" in refused.body["error"]
    assert any(e["event"] == "Job no longer exists on the queue manager; report dropped" for e in logs)
    assert qm.reports.landed(good.id)[0].endpoint == "complete-job", "the worker went on to the next job"


async def test_a_job_whose_id_no_report_can_carry_is_skipped_without_a_traceback_or_logging_the_id(
    qm, comfy, make_worker, workflows
):
    """An id of 100,000 characters: its failure report raised httpx.InvalidURL ("URL component 'query' too long"),
    logged with a traceback as an unexpected answer, and each of the job's log lines carried the id twice."""
    huge = {"id": "a" * 100_000, "user_id": "alice", "workflow": workflows["quick"]}
    qm.faults.inject("next-job", status=200, body={"job": huge})
    good = qm.store.submit("alice", workflows["quick"])
    with capture_logs() as logs:
        assert await asyncio.wait_for(make_worker().run(), 30) == 0
    [skipped] = [e for e in logs if e["event"] == "Received a job that cannot be reported back; skipping it"]
    assert "100000 characters long; a report can name at most 1000" in skipped["error"]
    assert not [e for e in logs if e["event"].startswith("Report failed on an unexpected answer")]
    assert max(len(repr(e)) for e in logs) < 10_000
    assert qm.reports.landed(good.id)[0].endpoint == "complete-job"


async def test_an_id_of_exactly_the_reportable_length_is_reported_and_one_more_is_skipped(
    qm, comfy, make_worker, workflows
):
    """MAX_REPORTABLE_ID_CHARS is the longest id a report names: such a job is failed (its id is no folder name)
    and the report is sent; an id one character longer cannot be, and is skipped."""
    from worker.jobs import MAX_REPORTABLE_ID_CHARS

    longest, too_long = "a" * MAX_REPORTABLE_ID_CHARS, "b" * (MAX_REPORTABLE_ID_CHARS + 1)
    for job_id in (longest, too_long):
        qm.faults.inject("next-job", status=200, body={"job": {"id": job_id, "user_id": "alice",
                                                                "workflow": workflows["quick"]}})
    with capture_logs() as logs:
        assert await asyncio.wait_for(make_worker().run(), 30) == 0
    [sent] = qm.reports.for_job(longest)
    assert sent.endpoint == "fail-job" and "not safe as a folder name" in sent.body["error"]
    assert qm.reports.for_job(too_long) == []
    [skipped] = [e for e in logs if e["event"] == "Received a job that cannot be reported back; skipping it"]
    assert f"{MAX_REPORTABLE_ID_CHARS + 1} characters long" in skipped["error"]
