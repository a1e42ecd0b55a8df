"""Removals from OUTPUTS_PATH on a slow volume (a network share with many abandoned folders): the worker loop
waits for them in a thread, so they are given a budget and the heartbeat is kept fresh that long. Slow is not
wedged; a volume hung inside one entry still is. The slow volume is a stand-in: a gate the test holds."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from queue_manager.server import QueueManagerServer

from ..conftest import wait_for
from .conftest import HEARTBEAT_LIMIT_S, wedged_verdicts

HELD_S = HEARTBEAT_LIMIT_S + 1  # held past the heartbeat limit, as a slow volume would
GATE_TIMEOUT_S = 30  # a test that fails never leaves a thread waiting for ever


def abandoned(outputs: Path, count: int) -> list[Path]:
    """Staging folders of workers killed mid-delivery, untouched for two hours."""
    folders = []
    then = time.time() - 7200
    for n in range(count):
        folder = outputs / ".partial" / f"alice.job-{n}.killed"
        folder.mkdir(parents=True)
        (folder / "ComfyUI_00001_.png").write_bytes(b"half")
        for path in (folder / "ComfyUI_00001_.png", folder):
            os.utime(path, (then, then))
        folders.append(folder)
    return folders


class Gate:
    """Holds every call of a wrapped function in its thread until opened: a volume that answers slowly."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.waiting = threading.Event()

    def wrap(self, original: Callable[..., object], holds: Callable[..., bool] = lambda *_: True):
        def gated(*args, **kwargs):
            if holds(*args):
                self.waiting.set()
                self.opened.wait(GATE_TIMEOUT_S)
            return original(*args, **kwargs)

        return gated


@pytest.fixture
def gate() -> Iterator[Gate]:
    held = Gate()
    yield held
    held.opened.set()


async def completed_never_wedged(qm, job, worker) -> list[dict]:
    """Run ``worker`` through ``job``: /health never said wedged and the job completed. Its outputs."""
    code, wedged = await wedged_verdicts(worker)
    assert (code, wedged) == (0, [])
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", report.body
    return report.body["result"]["outputs"]


async def liveness_while(worker, seconds: float) -> list:
    from health.verdict import liveness

    verdicts = []
    for _ in range(int(seconds / 0.05)):
        verdicts.append(liveness(worker.state, HEARTBEAT_LIMIT_S))
        await asyncio.sleep(0.05)
    return verdicts


async def test_a_sweep_out_of_budget_leaves_the_rest_for_a_sweep_soon_after_and_says_so(monkeypatch, tmp_path):
    """Before: the sweep removed every abandoned folder in one go, however long that took on the volume."""
    import worker.outputs
    from worker.comfyui import ComfyUIClient
    from worker.outputs import OutputDelivery

    outputs = tmp_path / "outputs"
    folders = abandoned(outputs, 3)
    client = ComfyUIClient("http://127.0.0.1:9")
    try:
        delivery = OutputDelivery(outputs, client)
        with capture_logs() as logs:
            swept = delivery.remove_abandoned(budget_s=0)  # one entry is always removed, none after the budget
        assert (swept.folders, swept.left) == (1, 2)
        assert sum(folder.exists() for folder in folders) == 2
        [line] = [e for e in logs if e["event"] == "Removed abandoned partial deliveries"]
        assert (line["left_for_next_sweep"], line["next_sweep_in_s"]) == (2, worker.outputs.SWEEP_RESUME_S)
        assert not delivery.sweep_due(), "jobs are taken before the sweep goes on"
        monkeypatch.setattr(worker.outputs, "SWEEP_RESUME_S", 0)  # a minute, made nothing
        delivery.remove_abandoned(budget_s=0)
        assert delivery.sweep_due(), "the rest goes on SWEEP_RESUME_S later, not an hour later"
        swept = delivery.remove_abandoned()
        assert (swept.folders, swept.left) == (1, 0)
        assert not any(folder.exists() for folder in folders)
        assert not delivery.sweep_due(), "all done: the next sweep is an hour later"
    finally:
        await client.aclose()


async def test_the_removal_of_earlier_attempts_files_stops_at_its_budget_and_says_what_it_left(tmp_path):
    """Before: every file an earlier attempt left was removed before the job's prompt was sent, however long."""
    from worker.comfyui import ComfyUIClient
    from worker.outputs import OutputDelivery

    job_dir = tmp_path / "outputs" / "alice" / "job-1"
    job_dir.mkdir(parents=True)
    for n in range(3):
        (job_dir / f"ComfyUI_0000{n}_.png").write_bytes(b"x")
    client = ComfyUIClient("http://127.0.0.1:9")
    try:
        with capture_logs() as logs:
            removed = OutputDelivery(tmp_path / "outputs", client).remove_earlier_attempts(
                "alice", "job-1", 2, budget_s=0
            )
    finally:
        await client.aclose()
    assert removed == 1 and len(list(job_dir.iterdir())) == 2
    [line] = [e for e in logs if e["event"] == "Removed the files of earlier attempts of the job"]
    assert (line["log_level"], line["entries"], line["left_in_place"]) == ("warning", 1, 2)


async def test_a_slow_sweep_between_polls_is_not_a_wedged_loop(monkeypatch, make_worker, tmp_path, gate):
    """Before: the hourly sweep ran in a thread with no heartbeat: on a slow volume with many abandoned folders it
    passed HEARTBEAT_TIMEOUT_S and /health said "worker loop wedged", so the supervisor restarted a working worker."""
    import worker.outputs

    monkeypatch.setattr(worker.outputs, "_newest_change", gate.wrap(worker.outputs._newest_change))
    monkeypatch.setattr(worker.outputs, "STALE_STAGING_S", 0.5)  # the hourly sweep, made frequent
    worker = make_worker(serverless_mode=False, heartbeat_timeout_s=HEARTBEAT_LIMIT_S)
    run = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.state.consecutive_idle_polls > 0)  # started, swept, polling
        folders = abandoned(tmp_path / "outputs", 2)
        await wait_for(gate.waiting.is_set)
        verdicts = await liveness_while(worker, HELD_S)
        gate.opened.set()
        await wait_for(lambda: not any(folder.exists() for folder in folders))
    finally:
        gate.opened.set()
        worker.request_shutdown()
        assert await run == 0
    assert [v.reason for v in verdicts if not v.healthy] == []


async def test_a_sweep_hung_past_its_budget_is_still_a_wedged_loop(monkeypatch, make_worker, tmp_path, gate):
    """The heartbeat is kept only for the sweep's budget: a volume hung inside one entry is not hidden for ever."""
    import worker.main
    import worker.outputs
    from health.verdict import liveness

    monkeypatch.setattr(worker.main, "REMOVAL_BUDGET_S", 0.5)
    monkeypatch.setattr(worker.outputs, "_newest_change", gate.wrap(worker.outputs._newest_change))
    monkeypatch.setattr(worker.outputs, "STALE_STAGING_S", 0.5)
    worker_ = make_worker(serverless_mode=False, heartbeat_timeout_s=HEARTBEAT_LIMIT_S)
    run = asyncio.create_task(worker_.run())
    try:
        await wait_for(lambda: worker_.state.consecutive_idle_polls > 0)
        abandoned(tmp_path / "outputs", 1)
        await wait_for(gate.waiting.is_set)
        await wait_for(lambda: not liveness(worker_.state, HEARTBEAT_LIMIT_S).healthy, timeout=GATE_TIMEOUT_S / 2)
        assert liveness(worker_.state, HEARTBEAT_LIMIT_S).reason.startswith("worker loop wedged")
    finally:
        gate.opened.set()
        worker_.request_shutdown()
        assert await run == 0


async def expire_lease(qm: QueueManagerServer, job_id: str) -> None:
    attempt = qm.store.get(job_id).attempt
    async with asyncio.timeout(15):
        while qm.store.get(job_id).attempt == attempt:
            qm.clock.advance(1)
            await asyncio.sleep(0.05)


async def test_a_slow_removal_of_an_earlier_attempts_files_is_not_a_wedged_loop(
    monkeypatch, comfy, make_worker, workflows, tmp_path, gate
):
    """Before: attempt N removed what earlier attempts left in a thread with no heartbeat: many files on a slow
    volume held it past HEARTBEAT_TIMEOUT_S, /health said wedged, and the restart handed the job back again."""
    from tests.conftest import ManualClock

    async with QueueManagerServer(lease_timeout_s=0.5, clock=ManualClock(), test_hooks=True) as qm:
        job = qm.store.submit("alice", workflows["quick"])
        assert qm.store.pop_next("killed-worker", qm.mode).id == job.id
        await expire_lease(qm, job.id)  # the killed worker's attempt 1 is handed back
        earlier = tmp_path / "outputs" / "alice" / job.id
        earlier.mkdir(parents=True)
        (earlier / "ComfyUI_00001_.png").write_bytes(b"attempt 1's")
        monkeypatch.setattr(os, "unlink", gate.wrap(os.unlink, lambda path, *_: str(path).startswith(str(earlier))))
        worker = make_worker(queue_manager_url=qm.url, serverless_job_limit=1, heartbeat_timeout_s=HEARTBEAT_LIMIT_S)
        run = asyncio.create_task(worker.run())
        await wait_for(gate.waiting.is_set)
        verdicts = await liveness_while(worker, HELD_S)
        gate.opened.set()
        assert await run == 0
        [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job"
    assert not (earlier / "ComfyUI_00001_.png").exists()
    assert [v.reason for v in verdicts if not v.healthy] == []


async def test_a_slow_removal_of_a_refused_completions_outputs_is_not_a_wedged_loop(
    monkeypatch, qm, comfy, make_worker, workflows, tmp_path, gate
):
    """A completion the queue manager refuses for good leaves files that are no one's result: up to
    MAX_JOB_OUTPUT_FILES of them were removed in a thread with no heartbeat, and on a slow volume /health said
    "worker loop wedged". Now they get the removal budget (the rest is left in place, and said) and beat."""
    qm.faults.inject("complete-job", status=404, body={"detail": "Job not found"})
    qm.faults.inject("get-job", status=404, body={"detail": "Job not found"})
    job = qm.store.submit("alice", workflows["quick"])
    delivered = tmp_path / "outputs" / "alice" / job.id
    monkeypatch.setattr(os, "unlink", gate.wrap(os.unlink, lambda path, *_: str(path).startswith(str(delivered))))
    worker = make_worker(heartbeat_timeout_s=HEARTBEAT_LIMIT_S)
    with capture_logs() as logs:
        run = asyncio.create_task(worker.run())
        await wait_for(gate.waiting.is_set)
        verdicts = await liveness_while(worker, HELD_S)
        gate.opened.set()
        assert await run == 0
    assert [v.reason for v in verdicts if not v.healthy] == []
    [removed] = [e for e in logs if e["event"] == "Removed the outputs of a completion the queue manager refused"]
    assert (removed["files"], removed["left_in_place"]) == (2, 0), "the quick workflow delivers 2 files"
    assert not list(delivered.parent.rglob("*.png"))


async def test_a_removal_of_delivered_files_stops_at_its_budget_and_says_how_many_it_left(tmp_path):
    from worker.comfyui import ComfyUIClient
    from worker.outputs import DeliveredFile, OutputDelivery

    folder = tmp_path / "outputs" / "alice" / "job-1"
    folder.mkdir(parents=True)
    files = []
    for n in range(3):
        (folder / f"ComfyUI_0000{n}_.png").write_bytes(b"x")
        files.append(DeliveredFile(node_id="9", kind="images", path=f"alice/job-1/ComfyUI_0000{n}_.png", bytes=1,
                                   sha256="0" * 64))
    client = ComfyUIClient("http://127.0.0.1:9")
    try:
        delivery = OutputDelivery(tmp_path / "outputs", client)
        assert delivery.remove(files, budget_s=0) == 2, "one file is always removed, none after the budget"
        assert len(list(folder.iterdir())) == 2
        assert delivery.remove(files) == 0 and not folder.exists()
    finally:
        await client.aclose()


async def test_a_stop_during_a_slow_sweep_starts_no_further_folder(monkeypatch, make_worker, tmp_path, gate):
    """Before: a stop waited for the whole sweep, up to its 30-s budget, which is the platform's default kill
    delay: the worker could be killed before "Worker shutdown complete". Now the sweep starts no folder after the
    stop, and the next worker's sweep takes the rest."""
    import worker.outputs

    monkeypatch.setattr(worker.outputs, "_newest_change", gate.wrap(worker.outputs._newest_change))
    folders = abandoned(tmp_path / "outputs", 3)
    worker = make_worker(serverless_mode=False)
    with capture_logs() as logs:
        run = asyncio.create_task(worker.run())
        await wait_for(gate.waiting.is_set)  # the start-up sweep is inside its first folder
        worker.request_shutdown()
        gate.opened.set()
        assert await run == 0
    [swept] = [e for e in logs if e["event"] == "Removed abandoned partial deliveries"]
    assert (swept["folders"], swept["left_for_next_sweep"]) == (1, 2)
    assert sum(folder.exists() for folder in folders) == 2
    assert "Worker shutdown complete" in [e["event"] for e in logs]


@pytest.mark.parametrize("source", ["COMFYUI_OUTPUT_DIR", "/view"])
async def test_a_delivery_hung_inside_a_write_shows_as_a_wedged_worker(
    monkeypatch, qm, comfy, make_worker, workflows, gate, source
):
    """Before: the delivery kept the heartbeat fresh for as long as it took, so a volume hung inside a write (an NFS
    server gone) left /health ok and the job running for ever. Now the heartbeat stops DELIVERY_STALL_S after the
    delivery last moved, and /health says wedged: the platform replaces the replica and the job is retried.
    Over /view the file was written on the event loop: a hung write froze the health server, the lease and SIGTERM's
    handler with it (here the test's own checks, until the gate gave up after GATE_TIMEOUT_S)."""
    import worker.main
    import worker.outputs
    from health.verdict import liveness

    monkeypatch.setattr(worker.main, "DELIVERY_STALL_S", 1.0)
    monkeypatch.setattr(worker.outputs._HashingFile, "write", gate.wrap(worker.outputs._HashingFile.write))
    job = qm.store.submit("alice", workflows["quick"])
    output_dir = comfy.output_dir if source == "COMFYUI_OUTPUT_DIR" else None
    worker_ = make_worker(comfyui_output_dir=output_dir, heartbeat_timeout_s=HEARTBEAT_LIMIT_S)
    run = asyncio.create_task(worker_.run())
    try:
        await wait_for(gate.waiting.is_set)  # the copy's thread is inside its first write
        await wait_for(lambda: not liveness(worker_.state, HEARTBEAT_LIMIT_S).healthy, timeout=GATE_TIMEOUT_S / 2)
        assert liveness(worker_.state, HEARTBEAT_LIMIT_S).reason.startswith("worker loop wedged")
    finally:
        gate.opened.set()
        assert await run == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", "the volume came back: the job completes"


async def test_a_slow_delivery_that_keeps_moving_is_not_a_wedged_worker(
    monkeypatch, qm, comfy, make_worker, workflows
):
    """Each chunk written 0.3 s after the last (a slow volume, well within DELIVERY_STALL_S, here 1 s), for longer
    than HEARTBEAT_TIMEOUT_S and the stall together: slow, not wedged."""
    import worker.main
    import worker.outputs

    write = worker.outputs._HashingFile.write

    def slow_write(self, chunk):
        time.sleep(0.3)
        write(self, chunk)

    monkeypatch.setattr(worker.main, "DELIVERY_STALL_S", 1.0)
    monkeypatch.setattr(worker.outputs, "CHUNK", 16)  # the quick workflow's two images: 13 chunks each
    monkeypatch.setattr(worker.outputs._HashingFile, "write", slow_write)
    job = qm.store.submit("alice", workflows["quick"])
    worker_ = make_worker(comfyui_output_dir=comfy.output_dir, heartbeat_timeout_s=HEARTBEAT_LIMIT_S, job_timeout_s=60)
    outputs = await completed_never_wedged(qm, job, worker_)
    chunks = sum(math.ceil(entry["bytes"] / 16) for entry in outputs)
    assert chunks * 0.3 > HEARTBEAT_LIMIT_S + 1.0, "it outlasted the heartbeat limit and the stall together"


@pytest.mark.parametrize("source", ["COMFYUI_OUTPUT_DIR", "/view"])
async def test_a_stop_hands_the_job_back_while_its_delivery_hangs_inside_a_write(
    monkeypatch, qm, comfy, make_worker, workflows, gate, source
):
    """Before: at the end of the grace the stopping worker cancelled the delivery and waited for its thread, held
    inside a write by a hung volume, so the job was never handed back before the platform's kill: it stayed
    running until its lease ran out (on comfy-multi, which has no leases, for ever). Now the hand back waits
    CANCELLED_DELIVERY_WAIT_S for the thread at most; the thread, once the volume answers, still removes its
    staging folder."""
    import worker.main
    import worker.outputs

    monkeypatch.setattr(worker.main, "CANCELLED_DELIVERY_WAIT_S", 0.2)
    monkeypatch.setattr(worker.outputs._HashingFile, "write", gate.wrap(worker.outputs._HashingFile.write))
    job = qm.store.submit("alice", workflows["quick"])
    output_dir = comfy.output_dir if source == "COMFYUI_OUTPUT_DIR" else None
    worker_ = make_worker(comfyui_output_dir=output_dir, shutdown_grace_s=0.5, platform_kill_delay_s=5)
    run = asyncio.create_task(worker_.run())
    try:
        await wait_for(gate.waiting.is_set)  # the delivery's thread is inside its first write
        worker_.request_shutdown()
        await wait_for(lambda: qm.reports.landed(job.id), timeout=4)  # before the platform's kill
        assert not gate.opened.is_set()
        [report] = qm.reports.landed(job.id)
        assert report.endpoint == "fail-job" and report.body["error"].startswith("Handed back"), report.body
        assert "was stopped (shutdown signal)" in report.body["error"]
        assert await asyncio.wait_for(run, 4) == 0, "the worker stops without the thread"
    finally:
        gate.opened.set()
        await run
    staging = worker_.delivery.outputs_root / ".partial"
    await wait_for(lambda: not any(staging.iterdir()), timeout=5)


async def test_a_slow_volume_syncing_a_large_result_is_not_a_wedged_worker(
    monkeypatch, qm, comfy, make_worker, workflows
):
    """An fsync takes as long as the bytes it still has to write (here 0.35 s a 16-byte chunk, a slow volume).
    Before: each file was synced once, at its end, in one step longer than DELIVERY_STALL_S and the heartbeat limit
    together (13 chunks: 4.5 s), so the delivery showed as a wedged worker and the platform would replace the replica
    at every attempt. Now a file is synced every SYNC_EVERY_BYTES, each sync a step of its own."""
    import worker.main
    import worker.outputs

    synced: dict[tuple[int, int], int] = {}  # bytes on disk, by file

    def sync_as_slow_as_its_bytes(descriptor: int) -> None:
        info = os.fstat(descriptor)
        time.sleep(0.35 * (info.st_size - synced.get((info.st_dev, info.st_ino), 0)) / 16)
        synced[info.st_dev, info.st_ino] = info.st_size
        os.fsync(descriptor)

    monkeypatch.setattr(worker.main, "DELIVERY_STALL_S", 1.0)
    monkeypatch.setattr(worker.outputs, "CHUNK", 16)
    monkeypatch.setattr(worker.outputs, "SYNC_EVERY_BYTES", 32)
    monkeypatch.setattr(worker.outputs, "sync", sync_as_slow_as_its_bytes)
    job = qm.store.submit("alice", workflows["quick"])
    worker_ = make_worker(comfyui_output_dir=comfy.output_dir, heartbeat_timeout_s=HEARTBEAT_LIMIT_S, job_timeout_s=60)
    outputs = await completed_never_wedged(qm, job, worker_)
    for entry in outputs:
        path = worker_.delivery.outputs_root / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], "whole and as hashed"
    assert min(math.ceil(entry["bytes"] / 16) for entry in outputs) * 0.35 > HEARTBEAT_LIMIT_S + 1.0


HUNG_WORKER = """
import os, sys, threading
from pathlib import Path

import worker.outputs
from worker.__main__ import main


def hung(self, chunk):  # a volume that never answers
    Path(os.environ["HUNG_MARKER"]).touch()
    threading.Event().wait()


worker.outputs._HashingFile.write = hung
sys.exit(main())
"""


async def test_a_worker_process_left_holding_a_hung_write_still_exits(qm, comfy, workflows, tmp_path):
    """`python -m worker` with every write to OUTPUTS_PATH hung for ever, stopped by SIGTERM. Before: the job was
    handed back, but the process never exited (asyncio.run's teardown and the interpreter's exit wait for every
    thread), so the replica ran until the platform's kill, and a serverless one that had reached its idle exit would
    run, and bill, until something replaced it. Now it exits with its own code once the job is handed back."""
    job = qm.store.submit("alice", workflows["quick"])
    code, log = await _stopped_once_hung(HUNG_WORKER, qm, comfy, tmp_path)
    assert code == 0, log
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job" and report.body["error"].startswith("Handed back"), report.body
    assert "Exiting without waiting for a write to OUTPUTS_PATH that has not returned" in log


HUNG_AFTER_THE_RENAME = """
import os, sys, threading
from pathlib import Path

import worker.outputs
from worker.__main__ import main

synced = worker.outputs.sync_folder


def hung_once_published(folder):  # the staging folder syncs; the folders the rename changed never answer
    if ".partial" not in folder.parts:
        Path(os.environ["HUNG_MARKER"]).touch()
        threading.Event().wait()
    synced(folder)


worker.outputs.sync_folder = hung_once_published
sys.exit(main())
"""


async def test_a_stop_while_a_published_delivery_syncs_leaves_no_result_for_the_handed_back_job(
    qm, comfy, workflows, tmp_path
):
    """`python -m worker` stopped by SIGTERM while its delivery, renamed into OUTPUTS_PATH/<user>/<job>/, is still
    syncing the folders (a slow or hung volume). Before: the job was handed back and the process exited at once,
    the published folder with it: a whole result (2 files) for a job the manager saw handed back, which nothing
    removed on comfy-multi. Now the exit removes what the rename published (0 files left), still without waiting
    for the thread inside the sync."""
    job = qm.store.submit("alice", workflows["quick"])

    def published() -> None:
        assert len(list((tmp_path / "outputs" / "alice" / job.id).iterdir())) == 2, "published: the rename landed"

    code, log = await _stopped_once_hung(HUNG_AFTER_THE_RENAME, qm, comfy, tmp_path, before_the_stop=published)
    assert code == 0, log
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job" and report.body["error"].startswith("Handed back"), report.body
    assert not (tmp_path / "outputs" / "alice" / job.id).exists(), log
    assert "Removed the outputs a stopped delivery had published: its job was handed back" in log


async def _stopped_once_hung(script, qm, comfy, tmp_path, before_the_stop=lambda: None) -> tuple[int, str]:
    """`python -m worker` run by ``script`` (which hangs a write to OUTPUTS_PATH and touches HUNG_MARKER), stopped
    by SIGTERM once hung: its exit code, within half the platform's kill delay, and its log."""
    marker = tmp_path / "hung"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "PYTHONUNBUFFERED": "1", "QUEUE_MANAGER_URL": qm.url, "COMFYUI_URL": comfy.url,
        "OUTPUTS_PATH": str(tmp_path / "outputs"), "HEALTH_PORT": "0", "HEALTH_HOST": "127.0.0.1",
        "WORKER_POLL_INTERVAL": "0.05", "SHUTDOWN_GRACE_S": "0.5", "PLATFORM_KILL_DELAY_S": "20", "LOG_FORMAT": "json",
        "HUNG_MARKER": str(marker),
    }  # fmt: skip
    with (tmp_path / "worker.log").open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, env=env, cwd=tmp_path, stdout=log_file, stderr=log_file
        )
    try:
        await wait_for(marker.exists, timeout=30)
        before_the_stop()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 10)  # half the platform's kill delay
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return code, (tmp_path / "worker.log").read_text()
