"""Two workers given the same WORKER_ID on one ComfyUI (a copy-pasted environment): the second must not take the
first's prompts for a killed run's. Each run keeps a record in ComfyUI's user data store (worker/run_record.py);
against the ComfyUI stand-in, whose /userdata is ComfyUI 0.8.0's (tests/standins/test_userdata.py)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from standins.comfyui import ComfyUISimulator
from worker.comfyui import ComfyUIClient
from worker.run_record import RECORDS_FOLDER, RecordsUnreadable, RunRecord

from ..conftest import served, wait_for

QUESTION_S = 5.0
FAST = {"interval_s": 0.2, "stale_s": 1.0}


def records(comfy: ComfyUISimulator) -> list[str]:
    folder = comfy.user_dir / "default" / RECORDS_FOLDER
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
async def client(comfy: ComfyUISimulator):
    comfy_client = ComfyUIClient(comfy.url, timeout_s=QUESTION_S)
    yield comfy_client
    await comfy_client.aclose()


async def test_a_second_worker_with_the_same_worker_id_refuses_to_start_and_the_first_ones_job_completes(
    qm, comfy, make_worker, workflows
):
    """Before, the second worker stopped the first's running prompt as an earlier run's: its job failed
    "interrupted by someone else". Now it exits 2 naming WORKER_ID, and touches nothing."""
    comfy.freeze(class_type="ImageBlur")
    first = make_worker(serverless_max_idle_polls=1_000_000)
    run = asyncio.create_task(first.run())
    job = qm.store.submit("alice", workflows["slow"])
    await asyncio.wait_for(comfy.wait_until_frozen(), 10)

    with capture_logs() as logs:
        assert await asyncio.wait_for(make_worker().run(), 20) == 2
    [refused] = [line for line in logs if line["log_level"] == "error"]
    assert (refused["event"], refused["worker_id"], refused["record"]) == (
        "Another live worker has this WORKER_ID on this ComfyUI; exiting", "test-worker", first.record.name
    )
    comfy.release()
    await wait_for(lambda: qm.reports.landed(job.id) and first.state.current_job_id is None)
    assert qm.store.get(job.id).status == "completed"
    assert list(comfy.interrupts_received) == []
    assert records(comfy) == [first.record.name], "the refused worker's record went with it"
    first.request_shutdown()
    assert await asyncio.wait_for(run, 20) == 0
    assert records(comfy) == [], "a stopped worker's record goes: its restart need not wait"


async def test_a_killed_runs_record_goes_stale_and_a_live_ones_does_not(comfy, client):
    killed = RunRecord(client, "w1", **FAST)
    await killed.write(QUESTION_S)  # and no more: killed
    other_id = RunRecord(client, "w2", **FAST)
    await other_id.write(QUESTION_S)
    other_writing = asyncio.create_task(other_id.keep_writing(QUESTION_S))
    try:
        restarted = RunRecord(client, "w1", **FAST)
        assert await asyncio.wait_for(restarted.twin(QUESTION_S), 10) is None
        assert records(comfy) == sorted([restarted.name, other_id.name]), "the killed run's record was deleted"

        later = RunRecord(client, "w1", **FAST)
        restarted_writing = asyncio.create_task(restarted.keep_writing(QUESTION_S))
        try:
            assert await asyncio.wait_for(later.twin(QUESTION_S), 10) == restarted.name
        finally:
            restarted_writing.cancel()
        assert await asyncio.wait_for(RunRecord(client, "w2", **FAST).twin(QUESTION_S), 10) == other_id.name
    finally:
        other_writing.cancel()


async def test_a_record_left_before_comfyui_restarted_long_ago_is_no_wait(comfy, client):
    """ComfyUI's user folder outlives its restart (the container's scratch disk): a record an hour old is a dead
    run's at the first look, whatever the stale time."""
    killed = RunRecord(client, "w1")
    await killed.write(QUESTION_S)
    hour_ago = time.time() - 3600
    os.utime(comfy.user_dir / "default" / RECORDS_FOLDER / killed.name, (hour_ago, hour_ago))
    other = comfy.user_dir / "default" / RECORDS_FOLDER / "notes%41.json"  # another client's: no record
    other.write_bytes(b"kept")
    os.utime(other, (hour_ago, hour_ago))
    await comfy.crash()
    await comfy.start()
    again = ComfyUIClient(comfy.url, timeout_s=QUESTION_S)
    restarted = RunRecord(again, "w1", interval_s=3600)
    try:
        assert await asyncio.wait_for(restarted.twin(QUESTION_S), 10) is None
    finally:
        await again.aclose()
    assert records(comfy) == sorted([restarted.name, other.name])



async def test_a_record_whose_write_was_cut_short_by_a_stop_goes_at_the_stop():
    """Before: a stop while the record's POST was answered (ComfyUI saved it, its answer late: a busy event loop)
    left `written` false, so the stop did not delete a record ComfyUI had saved: the next run of the id waited for
    it to go stale. A ComfyUI that saves a user file at once and answers a second late."""
    saved: set[str] = set()
    answered = asyncio.Event()

    async def save(request: web.Request) -> web.Response:
        saved.add(request.match_info["file"])
        await answered.wait()
        return web.json_response(request.match_info["file"])

    async def delete(request: web.Request) -> web.Response:
        saved.discard(request.match_info["file"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/userdata/{file}", save)
    app.router.add_delete("/userdata/{file}", delete)
    async with served(app, shutdown_timeout=1) as url:
        comfy_client = ComfyUIClient(url, timeout_s=QUESTION_S)
        try:
            cut = RunRecord(comfy_client, "w1")
            writing = asyncio.create_task(cut.write(QUESTION_S))
            async with asyncio.timeout(QUESTION_S):
                while not saved:
                    await asyncio.sleep(0.01)
            writing.cancel()  # the stop
            answered.set()
            await cut.remove(QUESTION_S)
        finally:
            await comfy_client.aclose()
    assert saved == set()


@pytest.mark.parametrize("listing", [
    b"not JSON", b'{"path": "a"}', b"[1]", b'[{"modified": 1.0}]', b'[{"path": 7, "modified": 1.0}]',
    *(b'[{"path": "%s", "modified": %s}]' % (b"0" * 16 + b"-" + b"0" * 32 + b".json", modified)
      for modified in (b'"x"', b'"1"', b"null", b"true", b"NaN", b"Infinity")),
])  # fmt: skip
async def test_a_userdata_listing_of_another_shape_is_unreadable_not_a_crash(listing: bytes):
    """Whatever a ComfyUI (or a proxy before it) answers to GET /userdata, the worker starts: a listing it cannot
    read is RecordsUnreadable, logged and passed over (worker/main.py). A file name or a time of another type let
    through would end the start in a TypeError or ValueError."""

    async def save(request: web.Request) -> web.Response:
        return web.json_response(request.match_info["file"])

    async def listed(_: web.Request) -> web.Response:
        return web.Response(body=listing, content_type="application/json")

    app = web.Application()
    app.router.add_post("/userdata/{file}", save)
    app.router.add_get("/userdata", listed)
    async with served(app) as url:
        comfy_client = ComfyUIClient(url, timeout_s=QUESTION_S)
        try:
            with pytest.raises(RecordsUnreadable, match="a list of another shape"):
                await RunRecord(comfy_client, "w1", **FAST).twin(QUESTION_S)
        finally:
            await comfy_client.aclose()
