"""comfy-multi's hand back resubmits the job as a copy whose metadata adds the marks of a copy (`requeued_from`,
`attempt`, `faults`, `requeue_reasons`) to the job's: within the queue manager's 1 MiB cap however close to it the
job's own metadata was. Before, a job within ~600 bytes of the cap got a 422 and failed "please submit it again"."""

from __future__ import annotations

import asyncio
import json

import pytest

from worker.input_images import MAX_METADATA_BYTES

from ..conftest import wait_for


def padded(metadata: dict, size: int) -> dict:
    """``metadata`` with a `note` that makes it ``size`` characters of JSON, as the queue manager measures it."""
    return {**metadata, "note": "x" * (size - len(json.dumps({**metadata, "note": ""})))}


async def stop_under(qm, comfy, make_worker, workflows, metadata: dict):
    job = qm.store.submit("alice", workflows["slow"], metadata=metadata)
    worker = make_worker(shutdown_grace_s=0.1, serverless_job_limit=1)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    worker.request_shutdown()
    assert await asyncio.wait_for(run, 10) == 0
    return job, qm.reports.landed(job.id)[0].body["error"], [j for j in qm.store.list() if j.id != job.id]


@pytest.mark.parametrize(
    ("earlier", "room"),
    [({}, 200), ({"requeued_from": "job-0", "attempt": 3, "faults": 0, "requeue_reasons": ["r" * 500, "s" * 500]}, 0)],
    ids=["first", "a-copy"],
)
async def test_a_copy_of_a_job_whose_metadata_is_near_the_cap_fits_in_it(
    qm, comfy, make_worker, workflows, earlier, room
):
    metadata = padded(earlier, MAX_METADATA_BYTES - room)
    job, error, copies = await stop_under(qm, comfy, make_worker, workflows, metadata)
    [copy] = copies
    assert error.endswith(f"; resubmitted as {copy.id}"), error
    assert len(json.dumps(copy.metadata)) <= MAX_METADATA_BYTES
    assert copy.metadata["note"] == job.metadata["note"] and copy.metadata["requeued_from"] == job.id
    assert copy.metadata["requeue_reasons"][-1].startswith("worker test-worker was stopped"), "the newest is kept"


async def test_a_copy_that_cannot_fit_the_cap_fails_the_job_naming_it(qm, comfy, make_worker, workflows):
    _, error, copies = await stop_under(qm, comfy, make_worker, workflows, padded({}, MAX_METADATA_BYTES - 10))
    assert copies == []
    assert error.endswith(f"resubmitting it failed: the metadata of its copy would be over the queue manager's cap "
                          f"({MAX_METADATA_BYTES} characters of JSON): please submit it again"), error


def test_a_copys_metadata_is_never_over_the_cap_and_keeps_the_newest_reasons_that_fit():
    from worker.reports import _within_cap

    for size in range(MAX_METADATA_BYTES - 1200, MAX_METADATA_BYTES - 900, 7):
        copy = {**padded({}, size), "requeued_from": "j", "attempt": 4, "faults": 1,
                "requeue_reasons": ["é" * 100, "b" * 300, "c" * 200]}  # fmt: skip
        fitted = _within_cap(copy)
        assert fitted is not None and len(json.dumps(fitted)) <= MAX_METADATA_BYTES
        one_more = copy["requeue_reasons"][-len(fitted["requeue_reasons"]) - 1:]
        if one_more != fitted["requeue_reasons"]:
            assert len(json.dumps({**fitted, "requeue_reasons": one_more})) > MAX_METADATA_BYTES


@pytest.mark.parametrize("reasons", [[], ["é" * 100, "b" * 300]], ids=["no-reasons", "two-reasons"])
def test_a_copys_metadata_of_exactly_the_cap_is_sent_whole(reasons):
    """The queue manager takes metadata of exactly its cap and refuses one character more: a copy that fits
    exactly keeps every reason, one character over drops the oldest (or, with none to drop, cannot be sent)."""
    from pydantic import ValidationError

    from queue_manager.models import JobSubmitRequest
    from worker.reports import _within_cap

    def submitted(metadata: dict) -> JobSubmitRequest:
        return JobSubmitRequest(user_id="alice", workflow={"1": {"class_type": "X", "inputs": {}}}, metadata=metadata)

    marks = {"requeued_from": "j", "attempt": 4, "faults": 1, "requeue_reasons": reasons}
    exact = padded(marks, MAX_METADATA_BYTES)
    submitted(exact)  # the manager's own measure takes it
    assert _within_cap(exact) == exact

    over = padded(marks, MAX_METADATA_BYTES + 1)
    with pytest.raises(ValidationError, match="metadata size"):
        submitted(over)
    assert _within_cap(over) == ({**over, "requeue_reasons": reasons[1:]} if reasons else None)
