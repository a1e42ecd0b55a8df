"""Fault cases: deadlines, dropped websockets, ComfyUI dying, the queue manager failing."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path

import aiohttp
import httpx
import pytest
from structlog.testing import capture_logs

from demo.replicas import free_loopback_port
from standins.comfyui import ComfyUISimulator
from worker.main import Worker
from worker.replica_faults import replica_fault

from ..conftest import served, wait_for
from .conftest import (
    COMFYUI_KILLED_TIMINGS,
    HEALTHY_TIMINGS,
    HEALTHY_WITHIN_S,
    HEARTBEAT_LIMIT_S,
    wedged_verdicts,
)


async def test_deadline_interrupts_the_prompt_and_fails_the_job(qm, comfy, make_worker, workflows):
    # The prompt must be running when the deadline comes (with 0.3 s a stall before the submission beat it): ten
    # blurs of 0.4 s, which the interrupt stops between two of them.
    slow = workflows["slow"]
    blurs = {str(n): {**slow["2"], "inputs": {**slow["2"]["inputs"], "image": [str(n - 1), 0]}} for n in range(2, 12)}
    save = {**slow["4"], "inputs": {**slow["4"]["inputs"], "images": ["11", 0]}}
    job = qm.store.submit("alice", {"1": slow["1"], **blurs, "12": save})
    worker = make_worker(job_timeout_s=HEALTHY_WITHIN_S)
    worker.timings = replace(worker.timings, interrupt_wait_s=HEALTHY_WITHIN_S)
    assert await worker.run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert f"timed out after {HEALTHY_WITHIN_S:g} s" in report.body["error"]
    assert "stopped it at node" in report.body["error"]
    [prompt] = comfy.prompts_received
    assert {"prompt_id": prompt.prompt_id} in [i.body for i in comfy.interrupts_received]


async def test_websocket_drop_mid_job_reconnects_and_completes(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["slow"])
    worker = make_worker()
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    await asyncio.sleep(0.1)
    await comfy.drop_websockets()
    assert await run == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", report.body
    assert len(report.body["result"]["outputs"]) == 1
    client_id = comfy.prompts_received[0].client_id
    assert comfy.ws_connections[client_id] >= 2, "reconnected with the same clientId"


async def test_comfyui_gone_mid_job_hands_the_job_back(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["slow"])
    worker = make_worker(serverless_job_limit=1, timings=COMFYUI_KILLED_TIMINGS)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    await comfy.crash()
    assert await run == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert report.body["error"].startswith("Handed back: ComfyUI stopped answering")
    [copy] = [j for j in qm.store.list() if j.id != job.id]
    assert copy.status == "pending" and copy.metadata["attempt"] == 2
    assert worker.state.comfyui_up is False and worker.state.jobs_failed == 0


async def test_comfyui_back_at_once_after_a_lost_job_is_reported_up_again(qm, comfy, make_worker, workflows):
    """Before: ComfyUI silent long enough to lose a job, then answering again by the next probe (restarted
    outside the supervisor, or a stall that passed), left comfyui_up False for good: /status said
    "comfyui_up": false and comfy_worker_comfyui_up stayed 0 while the worker completed the next job, which
    fires ComfyUIDown after 5 minutes on a replica that renders fine."""
    lost = qm.store.submit("alice", workflows["slow"])
    worker = make_worker(serverless_max_idle_polls=1_000_000, timings=COMFYUI_KILLED_TIMINGS)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    port = comfy.port
    await comfy.crash()
    await wait_for(lambda: not worker.state.comfyui_up)  # the job saw ComfyUI go: it is being handed back
    await comfy.start(port=port)
    await wait_for(lambda: qm.reports.landed(lost.id))
    assert qm.reports.landed(lost.id)[0].body["error"].startswith("Handed back")
    served = qm.store.submit("bob", workflows["quick"])
    await wait_for(lambda: qm.store.get(served.id).status == "completed", timeout=10)
    worker.request_shutdown()
    assert await run == 0
    assert worker.state.comfyui_up is True
    assert worker.state.metrics.comfyui_up._value.get() == 1


async def test_a_password_in_comfyui_url_reaches_neither_the_probes_nor_the_hand_back_reason(
    qm, comfy, make_worker, workflows
):
    """Before: "ComfyUI at http://user:hunter2@… unreachable" went into /ready's and /status's reason while the
    worker waited for a silent ComfyUI, and into the hand-back reason the queue manager stores on the job (its
    user reads it); only the log was scrubbed."""
    from health.server import HealthServer

    job = qm.store.submit("alice", workflows["slow"])
    worker = make_worker(
        comfyui_url=comfy.url.replace("http://", "http://comfy:hunter2@"), timings=COMFYUI_KILLED_TIMINGS
    )
    health = HealthServer(worker.state, host="127.0.0.1", port=0)
    port = await health.start()
    run = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: comfy.prompts_received)
        await comfy.crash()
        await wait_for(lambda: qm.reports.landed(job.id))
        await wait_for(lambda: worker.state.not_ready_reason and "not answering" in worker.state.not_ready_reason)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as probe:
            bodies = {path: (await probe.get(path)).text for path in ("/ready", "/status")}
    finally:
        worker.request_shutdown()
        await run
        await health.stop()
    assert "unreachable" in bodies["/ready"]
    for path, body in bodies.items():
        assert "hunter2" not in body, path
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error.startswith("Handed back") and "hunter2" not in error


async def test_user_text_that_looks_like_a_cuda_error_does_not_make_the_worker_unhealthy(
    qm, comfy, make_worker, workflows
):
    from health.verdict import liveness

    workflow = json.loads(json.dumps(workflows["quick"]))
    workflow["3"]["inputs"]["filename_prefix"] = "../../CUDA error: an illegal memory access was encountered/x"
    job = qm.store.submit("mallory", workflow)
    follower = qm.store.submit("alice", workflows["quick"])
    worker = make_worker()
    assert await worker.run() == 0
    error = qm.reports.landed(job.id)[0].body["error"]
    assert "CUDA error: an illegal memory access" in error, "ComfyUI echoed the user's text"
    assert worker.state.fatal_reason is None
    assert liveness(worker.state, 120).healthy
    assert qm.reports.landed(follower.id)[0].endpoint == "complete-job", "the worker went on working"


async def test_an_error_naming_an_undecodable_file_is_reported_not_a_crash(qm, comfy, make_worker, workflows):
    # A model file whose name is not UTF-8: Python's error carries the byte as a lone surrogate, ComfyUI's JSON
    # as "\udcff"; neither httpx nor the queue manager's strict JSON take it as it is.
    comfy.inject_error("No such file or directory: '/models/\udcff.safetensors'", exception_type="FileNotFoundError")
    job = qm.store.submit("alice", workflows["quick"])
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert "FileNotFoundError: No such file or directory: '/models/\ufffd.safetensors'" in report.body["error"]


@pytest.mark.parametrize(
    ("exception_type", "message", "fatal"),
    [
        ("torch.AcceleratorError", "CUDA error: an illegal memory access was encountered\n", True),
        ("torch.AcceleratorError", "CUDA error: device-side assert triggered\nCompile with ...", True),
        ("torch.AcceleratorError", "CUDA error: unspecified launch failure", True),
        ("torch.cuda.CudaError", "CUDA error: uncorrectable ECC error encountered", True),
        ("torch.AcceleratorError", "CUDA error: out of memory\n", False),
        ("torch.AcceleratorError", "CUDA error: invalid configuration argument", False),
        ("torch.OutOfMemoryError", "Allocation on device", False),
        ("RuntimeError", "CUDA error: an illegal memory access was encountered", False),
        ("Exception", "**** ERROR: Saving image outside ... CUDA error: device-side assert triggered", False),
        ("safetensors._safetensors_rust.SafetensorError", "illegal memory access", False),
    ],
)
def test_fatality_comes_from_the_exception_type_never_from_free_text(exception_type, message, fatal):
    assert (replica_fault(exception_type, message) == "fatal GPU error") is fatal


def _error_as_comfyui_reports_it(exc: BaseException) -> tuple[str, str]:
    """execution.py: full_type_name (module omitted for builtins) and "{ex}\n{tips}"."""
    module = type(exc).__module__
    name = type(exc).__qualname__ if module == "builtins" else f"{module}.{type(exc).__qualname__}"
    return name, f"{exc}\n"


def _real_disk_full_error() -> OSError:
    try:
        with open("/dev/full", "wb", buffering=0) as full:
            full.write(b"x")
    except OSError as exc:
        return exc
    raise AssertionError("/dev/full took a write")


@pytest.mark.parametrize(
    ("exception_type", "message", "broken"),
    [
        ("OSError", "[Errno 28] No space left on device: '/comfyui/output/ComfyUI_00001_.png'\n", True),
        ("OSError", f"[Errno {errno.EDQUOT}] Disk quota exceeded\n", True),
        ("OSError", "[Errno 5] Input/output error\n", True),
        ("OSError", "[Errno 30] Read-only file system: '/usr/x.png'\n", False),
        ("OSError", "[Errno 13] Permission denied: '/root/x'\n", False),
        ("OSError", "cannot write mode RGBA as JPEG [Errno 28] No space left on device\n", False),
        ("FileNotFoundError", "[Errno 2] No such file or directory: '[Errno 28] No space left on device'\n", False),
        ("RuntimeError", "[Errno 28] No space left on device\n", False),
        ("Exception", "**** ERROR: Saving image outside the output folder ... [Errno 28] No space left", False),
        # PyAV (SaveVideo, SaveWEBM): FFmpeg's errno, printed as Python does; EIO is also FFmpeg's bad-input answer.
        ("av.error.OSError", "[Errno 28] No space left on device: '/data/comfyui/output/video/x_00001_.mp4'\n", True),
        ("av.error.OSError", f"[Errno {errno.EDQUOT}] Disk quota exceeded\n", True),
        ("av.error.OSError", "[Errno 5] Input/output error: '/data/comfyui/input/upload.mp4'\n", False),
        ("av.error.InvalidDataError", "[Errno 1094995529] Invalid data found when processing input\n", False),
    ],
)
def test_a_broken_disk_is_told_from_the_errno_python_prints_first_never_from_free_text(
    exception_type, message, broken
):
    assert (replica_fault(exception_type, message) == "ComfyUI's disk failed") is broken


def test_a_real_disk_full_error_as_comfyui_reports_it_is_a_broken_disk():
    assert replica_fault(*_error_as_comfyui_reports_it(_real_disk_full_error())) == "ComfyUI's disk failed"


OWN = (Path("/data/comfyui/output"), Path("/data/comfyui/temp"))


@pytest.mark.parametrize(
    ("exception_type", "message", "broken"),
    [
        ("OSError", "[Errno 30] Read-only file system: '/data/comfyui/output/ComfyUI_00001_.png'\n", True),
        ("OSError", "[Errno 30] Read-only file system: '/data/comfyui/temp/sub/ComfyUI_temp_x_00001_.png'", True),
        ("OSError", "[Errno 30] Read-only file system: '/models/checkpoints/downloaded.safetensors'", False),
        ("OSError", "[Errno 30] Read-only file system: '/data/comfyui/output/../../../models/x.safetensors'", False),
        ("OSError", "[Errno 30] Read-only file system: '/data/comfyui/outputs-elsewhere/x.png'", False),
        ("OSError", "[Errno 30] Read-only file system: 'relative/x.png'", False),
        ("OSError", "[Errno 30] Read-only file system: '/data/comfyui/output/x.png' -> '/models/y'", False),
        ("OSError", "[Errno 13] Permission denied: '/data/comfyui/output/x.png'", False),
        ("Exception", "[Errno 30] Read-only file system: '/data/comfyui/output/x.png'", False),
        ("av.error.OSError", "[Errno 30] Read-only file system: '/data/comfyui/output/x.mp4'", False),
    ],
)
def test_a_read_only_disk_counts_only_in_comfyuis_own_folders(exception_type, message, broken):
    assert (replica_fault(exception_type, message, OWN) == "ComfyUI's disk failed") is broken
    assert replica_fault(exception_type, message) is None, "a worker that does not know the folders never guesses"


async def test_comfyuis_output_folder_turned_read_only_hands_the_job_back_and_stops_the_replica(
    qm, comfy, make_worker, workflows
):
    """Before: every job failed in milliseconds as the workflow's fault (measured under the supervisor: 3 jobs
    failed in 2.9 s, /health 200, exit 0 at the idle timeout): a failing disk the kernel remounted read-only
    turned the replica into a black hole for the queue."""
    written = comfy.output_dir / "ComfyUI_00001_.png"
    comfy.inject_error(f"[Errno 30] Read-only file system: '{written}'", exception_type="OSError", prompts=None)
    job = qm.store.submit("alice", workflows["quick"])
    waiting = qm.store.submit("bob", workflows["quick"])
    worker = make_worker(serverless_max_idle_polls=100, comfyui_output_dir=comfy.output_dir)
    assert await asyncio.wait_for(worker.run(), 10) == 1
    handed_back = qm.reports.landed(job.id)[0].body["error"]
    assert handed_back.startswith("Handed back: ComfyUI's disk failed on worker test-worker:"), handed_back
    assert qm.store.get(waiting.id).status == "pending"


def _disk_full_as_comfyui_reports_it() -> tuple[str, str]:
    exception_type, message = _error_as_comfyui_reports_it(_real_disk_full_error())
    return exception_type, message.rstrip("\n")  # the stand-in appends the newline ComfyUI adds


@pytest.mark.parametrize(
    ("error", "reason", "names"),
    [
        (
            ("torch.AcceleratorError", "CUDA error: an illegal memory access was encountered\nCUDA kernel errors "
             "might be asynchronously reported at some other API call"),
            "fatal GPU error", "AcceleratorError: CUDA error: an illegal memory access",
        ),
        # Before, this job failed as the workflow's fault and the worker went on failing every job it took: a
        # black hole draining the queue into failures until the replica was replaced for some other reason.
        (_disk_full_as_comfyui_reports_it(), "ComfyUI's disk failed", "OSError: [Errno 28] No space left on device"),
        # SaveVideo on a full disk: PyAV's av.error.OSError (was failed as the workflow's fault, the worker went on).
        (("av.error.OSError", "[Errno 28] No space left on device: '/data/comfyui/output/video/ComfyUI_00001_.mp4'"),
         "ComfyUI's disk failed", "OSError: [Errno 28] No space left on device"),
    ],
    ids=["fatal-gpu-error", "comfyui-disk-full", "comfyui-disk-full-writing-video"],
)
async def test_a_broken_replica_hands_the_job_back_takes_no_new_job_and_exits_1(
    qm, comfy, make_worker, workflows, error, reason, names
):
    exception_type, message = error
    comfy.inject_error(message, exception_type=exception_type, node_id="2", prompts=None)
    job = qm.store.submit("alice", workflows["quick"])
    waiting = qm.store.submit("bob", workflows["quick"])
    worker = make_worker(serverless_max_idle_polls=100)
    with capture_logs() as logs:
        assert await asyncio.wait_for(worker.run(), 10) == 1
    handed_back = qm.reports.landed(job.id)[0].body["error"]
    assert handed_back.startswith(f"Handed back: {reason} on worker test-worker: ComfyUI execution error in node 2")
    assert names in handed_back
    assert qm.store.get(waiting.id).status == "pending", "a broken replica takes no new job"
    assert len(comfy.prompts_received) == 1
    assert worker.state.fatal_reason and names.split(": ", 1)[1] in worker.state.fatal_reason
    assert "Fatal error: taking no new job; exiting so the platform replaces this replica" in [
        e["event"] for e in logs
    ]


async def test_queue_manager_down_while_polling_is_retried_not_counted_idle(qm, comfy, make_worker, workflows):
    qm.faults.inject("next-job", status=503, times=2)
    qm.faults.inject("next-job", status=502, body="<html>Bad Gateway</html>")
    qm.faults.inject("next-job", drop=True)
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(serverless_max_idle_polls=2)
    with capture_logs() as logs:
        assert await worker.run() == 0
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"
    poll_failures = [e for e in logs if e["event"] == "Poll failed; backing off"]
    assert len(poll_failures) == 4
    assert "non-JSON" not in poll_failures[0]["error"] and "HTTP 503" in poll_failures[0]["error"]
    assert "Bad Gateway" in poll_failures[2]["error"]
    assert worker.state.metrics.poll_errors._value.get() == 4


@pytest.mark.parametrize(("sent", "named"), [("not-the-token", "wrong"), (None, "unset")])
async def test_a_refused_token_is_a_poll_error_naming_queue_manager_token(comfy, make_worker, sent, named):
    """Before: `queue manager answered HTTP 401: {"detail":"Not authenticated"}`, naming no setting."""
    from queue_manager.server import QueueManagerServer

    async with QueueManagerServer(token="the-token") as secured:
        worker = make_worker(queue_manager_url=secured.url, queue_manager_token=sent)
        with capture_logs() as logs:
            running = asyncio.create_task(worker.run())
            async with asyncio.timeout(10):
                while not [e for e in logs if e["event"] == "Poll failed; backing off"]:
                    await asyncio.sleep(0.01)
            worker.request_shutdown()
            assert await running == 0
    failure = next(e for e in logs if e["event"] == "Poll failed; backing off")
    assert "refused this worker's credentials (HTTP 401" in failure["error"]
    assert failure["error"].endswith(f"QUEUE_MANAGER_TOKEN is {named}")


async def test_a_serverless_worker_whose_token_is_refused_exits_2_after_3_refusals(comfy, make_worker):
    """Before: it backed off and polled for ever, never idle-exiting (refusals are not idle polls), so the
    replica billed until someone noticed."""
    from queue_manager.server import QueueManagerServer

    async with QueueManagerServer(token="the-token") as secured:
        worker = make_worker(queue_manager_url=secured.url, queue_manager_token="not-the-token")
        with capture_logs() as logs:
            assert await asyncio.wait_for(worker.run(), 10) == 2
    events = [e["event"] for e in logs]
    assert events.count("Poll failed; backing off") == 2
    [exit_line] = [e for e in logs if e["event"] == "Queue manager refused this worker's credentials; exiting"]
    assert exit_line["refused_polls"] == 3
    assert exit_line["error"].endswith("QUEUE_MANAGER_TOKEN is wrong")
    assert "not-the-token" not in str(logs)
    assert events[-1] == "Worker shutdown complete"
    # ComfyWorkerRestarting's runbook reads the last "Worker shutdown complete" line's reason: it was null here.
    assert logs[-1]["reason"].endswith("QUEUE_MANAGER_TOKEN is wrong")


async def test_refusals_that_stop_before_the_third_are_a_blip(qm, comfy, make_worker, workflows):
    """A proxy refusing twice during a deploy costs nothing: the count is of refusals in a row."""
    qm.faults.inject("next-job", status=401, times=2)
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(serverless_max_idle_polls=1_000_000)
    running = asyncio.create_task(worker.run())
    await wait_for(lambda: qm.store.get(job.id).status == "completed")
    qm.faults.inject("next-job", status=403, times=2)
    await wait_for(lambda: worker.state.metrics.poll_errors._value.get() == 4)
    idle_polls = worker.state.consecutive_idle_polls
    await wait_for(lambda: worker.state.consecutive_idle_polls > idle_polls)
    worker.request_shutdown()
    assert await running == 0


@pytest.mark.parametrize("status", [401, 403, 404, 503])
async def test_ready_is_503_while_the_queue_manager_refuses_every_poll_and_200_once_a_poll_lands(
    qm, comfy, make_worker, status
):
    """Before: /ready answered 200 "ready" (comfy_worker_ready 1) all the while every poll of a non-serverless
    worker was refused (a wrong token: 401), so a readiness check or the dashboard counted a replica that could
    take no work. /health stays 200: a restart cannot fix a token or a queue manager."""
    from health.server import HealthServer

    qm.faults.inject("next-job", status=status, times=1_000)
    worker = make_worker(serverless_mode=False)
    health = HealthServer(worker.state, host="127.0.0.1", port=0)
    port = await health.start()
    running = asyncio.create_task(worker.run())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as probe:
            await wait_for(lambda: worker.state.metrics.poll_errors._value.get() >= 3)
            ready = await probe.get("/ready")
            assert ready.status_code == 503, ready.text
            assert ready.json()["reason"].startswith("queue manager")
            assert "QUEUE_MANAGER" not in ready.text and "127.0.0.1" not in ready.text
            assert (await probe.get("/health")).status_code == 200
            assert "comfy_worker_ready 0.0" in (await probe.get("/metrics")).text

            qm.faults.clear()
            polls = worker.state.metrics.idle_polls._value.get()
            await wait_for(lambda: worker.state.metrics.idle_polls._value.get() > polls, timeout=10)
            assert (await probe.get("/ready")).status_code == 200
    finally:
        worker.request_shutdown()
        assert await running == 0
        await health.stop()


@pytest.mark.parametrize("wait", ["the poll interval", "a slow queue manager"])
async def test_a_wait_on_the_queue_longer_than_the_heartbeat_limit_is_not_a_wedged_loop(qm, comfy, make_worker, wait):
    """Before: the loop beat only between polls, so a WORKER_POLL_INTERVAL, a poll back-off (up to 30 s) or a
    queue manager slow to answer a poll longer than HEARTBEAT_TIMEOUT_S turned /health 503 "worker loop wedged":
    the platform restarts a replica for the queue's sake, which a restart cannot fix (measured: /health 503 with
    a heartbeat 1.1-1.5 s old against a 0.5 s limit)."""
    from health.verdict import liveness

    # Waits 1 s longer than the limit, which lets a stall of the test's process up to 2.25 s pass (1 s did not).
    wait_s = HEARTBEAT_LIMIT_S + 1
    if wait == "a slow queue manager":
        qm.faults.inject("next-job", delay_s=wait_s, times=2)
        worker = make_worker(serverless_mode=False, heartbeat_timeout_s=HEARTBEAT_LIMIT_S)
    else:
        worker = make_worker(serverless_mode=False, heartbeat_timeout_s=HEARTBEAT_LIMIT_S, poll_interval_s=wait_s)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.state.phase.value == "idle")
    verdicts = []
    for _ in range(int(wait_s / 0.05)):  # the whole of one wait
        verdicts.append(liveness(worker.state, HEARTBEAT_LIMIT_S))
        await asyncio.sleep(0.05)
    worker.request_shutdown()
    assert await run == 0
    assert [v for v in verdicts if not v.healthy] == []


async def test_a_poll_answer_dripped_byte_by_byte_ends_at_http_timeout_s_and_the_worker_says_not_ready(
    comfy, make_worker
):
    """Before: HTTP_TIMEOUT_S bounded each read of a poll, not the poll (docs/worker.md: "Timeout of each HTTP call
    to the queue manager"), so a peer sending a byte now and then held the poll for ever: the worker stopped
    polling while /health and /ready said ok and ready. After: the poll fails at HTTP_TIMEOUT_S, /ready is 503."""
    from aiohttp import web

    from health.verdict import readiness

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"job": null')
        while True:
            await response.write(b" ")
            await asyncio.sleep(0.05)

    app = web.Application()
    app.router.add_get("/api/workers/next-job", drip)
    async with served(app, shutdown_timeout=0.1) as url:
        worker = make_worker(queue_manager_url=url, http_timeout_s=0.5, serverless_mode=False)
        run = asyncio.create_task(worker.run())
        try:
            with capture_logs() as logs:
                await wait_for(lambda: worker.state.metrics.poll_errors._value.get() >= 1)
            assert not readiness(worker.state).healthy
        finally:
            worker.request_shutdown()
            await run
    [failure, *_] = [e for e in logs if e["event"] == "Poll failed; backing off"]
    assert "took more than 0.5 s" in failure["error"]


async def test_non_json_200_from_the_queue_is_a_poll_error(qm, comfy, make_worker):
    qm.faults.inject("next-job", status=200, body="this is not json")
    with capture_logs() as logs:
        assert await make_worker(serverless_max_idle_polls=1).run() == 0
    [failure] = [e for e in logs if e["event"] == "Poll failed; backing off"]
    assert "non-JSON" in failure["error"]


async def test_report_is_retried_until_the_queue_manager_returns(qm, comfy, make_worker, workflows):
    qm.faults.inject("complete-job", status=503, times=2)
    qm.faults.inject("complete-job", drop=True)
    job = qm.store.submit("alice", workflows["quick"])
    assert await make_worker().run() == 0
    attempts = qm.reports.for_job(job.id)
    assert [a.status for a in attempts] == [503, 503, None, 200]
    assert len(qm.reports.landed(job.id)) == 1
    assert qm.store.get(job.id).status == "completed"


async def test_report_whose_answer_was_lost_is_not_sent_twice_as_a_new_report(qm, comfy, make_worker, workflows):
    qm.faults.inject("complete-job", status=502, after=True)
    job = qm.store.submit("alice", workflows["quick"])
    assert await make_worker().run() == 0
    assert [a.endpoint for a in qm.reports.for_job(job.id)] == ["complete-job", "complete-job"]
    assert qm.store.get(job.id).status == "completed"


async def test_404_on_report_is_logged_and_not_retried(qm, comfy, make_worker, workflows):
    qm.faults.inject("complete-job", status=404, body={"detail": "Job not found"})
    job = qm.store.submit("alice", workflows["quick"])
    with capture_logs() as logs:
        assert await make_worker().run() == 0
    assert len(qm.reports.for_job(job.id)) == 1
    assert any(e["event"] == "Job no longer exists on the queue manager; report dropped" for e in logs)


async def test_report_budget_exhausted_is_logged_with_the_reason(qm, comfy, make_worker, workflows):
    qm.faults.inject("fail-job", status=503, times=50)
    job = qm.store.submit("alice", workflows["invalid_unknown_node"])
    worker = make_worker(report_retry_budget_s=0.5)
    with capture_logs() as logs:
        assert await worker.run() == 0
    assert qm.reports.landed(job.id) == []
    [event] = [e for e in logs if e["event"].startswith("Report could not be delivered")]
    assert event["outcome"] == "failed" and "503" in event["error"] and "NoSuchNode" in event["job_error"]
    assert worker.state.jobs_failed == 1


async def test_a_report_retried_for_a_while_keeps_the_worker_alive(qm, comfy, make_worker, workflows):
    from health.verdict import liveness

    # Four refusals: the retries wait about 0.25, 0.5, 1 and 2 s, 3.75 s in all, past the 3-s limit, which lets
    # a stall of the test's process up to 2.25 s pass (the 1-s limit before: 0.75 s).
    qm.faults.inject("complete-job", status=503, times=4)
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(heartbeat_timeout_s=HEARTBEAT_LIMIT_S)
    run = asyncio.create_task(worker.run())
    verdicts = []
    while not run.done():
        verdicts.append(liveness(worker.state, HEARTBEAT_LIMIT_S))
        await asyncio.sleep(0.05)
    assert await run == 0
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"
    assert len(qm.reports.for_job(job.id)) == 5, "four refusals, then the report landed"
    assert all(v.healthy for v in verdicts), [v.reason for v in verdicts if not v.healthy]


async def test_without_a_websocket_the_job_is_followed_over_http(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["slow"])
    comfy.refuse_websockets()  # a proxy that forbids upgrades
    worker = make_worker()
    assert await asyncio.wait_for(worker.run(), 10) == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job" and len(report.body["result"]["outputs"]) == 1
    assert comfy.ws_connections == {}


async def test_a_lost_answer_to_post_prompt_does_not_lose_the_prompt(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["slow"])
    comfy.lose_connections("/prompt", carried_out=True)
    worker = make_worker()
    assert await asyncio.wait_for(worker.run(), 10) == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", report.body
    assert len(comfy.prompts_received) == 1, "not submitted twice"


async def test_a_lost_post_prompt_request_hands_the_job_back(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["quick"])
    comfy.lose_connections("/prompt")
    worker = make_worker(serverless_job_limit=1)
    assert await worker.run() == 0
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error.startswith("Handed back: ComfyUI unavailable while submitting the workflow: ComfyUI at http://"), error
    assert comfy.prompts_received == [], "the request was lost before ComfyUI read it"


def answer_queue_too_large(comfy: ComfyUISimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """ComfyUI's GET /queue past the worker's bound, as another client's pending prompt makes it; the bound lowered to
    256 KiB, as in test_comfyui_replies.py, where it is tested itself: 32 MiB answers cost the test 280 MB."""
    monkeypatch.setattr("worker.comfyui.MAX_COMFYUI_MESSAGE_BYTES", 256 << 10)
    prompt = {"1": {"class_type": "PrimitiveString", "inputs": {"value": "x" * (256 << 10)}}}
    other = [1_000, "another-client-s-prompt", prompt, {}, ["1"]]
    comfy.reshape("/queue", lambda answer: {**answer, "queue_pending": [*answer["queue_pending"], other]})


async def test_a_lost_post_prompt_with_a_queue_too_large_to_read_hands_the_job_back(
    qm, comfy, make_worker, workflows, monkeypatch
):
    """Whether ComfyUI has the prompt cannot be told when its /queue, full of other clients' prompts, is past the
    bound: the job is handed back as the infrastructure fault it is, not failed as its workflow's doing."""
    job = qm.store.submit("alice", workflows["quick"])
    comfy.lose_connections("/prompt")
    answer_queue_too_large(comfy, monkeypatch)
    worker = make_worker(serverless_job_limit=1)
    assert await worker.run() == 0
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error.startswith("Handed back: ComfyUI unavailable while submitting the workflow: ComfyUI at http://"), error


async def test_a_queue_too_large_to_read_while_following_the_prompt_does_not_fail_the_job(
    qm, comfy, make_worker, workflows, monkeypatch
):
    """Over HTTP the prompt is followed by /history and /queue: a /queue past the bound (other clients' prompts)
    says nothing of this one, which /history reports once it ends. Before, the job failed as its workflow's doing."""
    job = qm.store.submit("alice", workflows["slow"])
    comfy.refuse_websockets()  # a proxy that forbids upgrades
    answer_queue_too_large(comfy, monkeypatch)
    worker = make_worker()
    assert await worker.run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", report.body


async def test_no_job_is_popped_while_comfyui_is_not_answering(qm, comfy, make_worker, workflows):
    from health.verdict import liveness, readiness

    worker = make_worker(serverless_mode=False, heartbeat_timeout_s=HEARTBEAT_LIMIT_S)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.state.consecutive_idle_polls >= 1)
    await comfy.crash()
    job = qm.store.submit("alice", workflows["quick"])
    await asyncio.sleep(HEARTBEAT_LIMIT_S + 0.5)
    assert qm.store.get(job.id).status == "pending", "a worker without ComfyUI must not take jobs"
    assert readiness(worker.state).reason.startswith("ComfyUI not answering")
    assert liveness(worker.state, HEARTBEAT_LIMIT_S).healthy, "waiting for ComfyUI is not a wedged loop"
    await comfy.start(port=comfy.port)
    await wait_for(lambda: qm.reports.landed(job.id), timeout=10)
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"
    worker.request_shutdown()
    assert await run == 0


async def test_comfyui_that_never_comes_back_ends_the_worker_with_1(qm, comfy, make_worker, workflows):
    worker = make_worker(serverless_mode=False, comfyui_unresponsive_timeout_s=0.5, comfyui_startup_timeout_s=60)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.state.consecutive_idle_polls >= 1)
    await comfy.crash()
    job = qm.store.submit("alice", workflows["quick"])
    assert await asyncio.wait_for(run, 5) == 1
    assert qm.store.get(job.id).status == "pending"
    assert worker.state.fatal_reason == "ComfyUI stopped answering and did not come back within 0.5 s"


@pytest.fixture
async def comfyui_process(tmp_path: Path):
    """The ComfyUI stand-in as a process of its own, as ComfyUI runs in the container: one a test can SIGSTOP."""
    port = free_loopback_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "standins.comfyui", "--port", str(port), "--output-directory", str(tmp_path / "out"),
        "--node-seconds", "ImageBlur=30", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as http, asyncio.timeout(15):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/system_stats")).status_code == 200:
                    break
            await asyncio.sleep(0.05)
    yield process, url
    with contextlib.suppress(ProcessLookupError):
        process.kill()  # SIGKILL ends a stopped process too
    await process.wait()


async def test_a_hung_comfyui_hands_the_running_job_back_and_ends_the_worker_long_before_the_startup_timeout(
    qm, comfyui_process, make_worker, workflows
):
    process, url = comfyui_process
    job = qm.store.submit("alice", workflows["slow"])
    waiting = qm.store.submit("bob", workflows["quick"])
    # ComfyUI runs in a process of its own: on a loaded machine its answers before the hang took longer than the
    # 0.5-s HTTP timeout, 0.6-s silence and 1-s unresponsive limit this test once had (the silence is now
    # HEALTHY_TIMINGS' HEALTHY_WITHIN_S).
    worker = make_worker(
        comfyui_url=url, serverless_mode=False, http_timeout_s=HEALTHY_WITHIN_S,
        comfyui_unresponsive_timeout_s=HEALTHY_WITHIN_S, comfyui_startup_timeout_s=300,
    )  # fmt: skip
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.state.current_prompt_id is not None)
    process.send_signal(signal.SIGSTOP)  # alive, its sockets open, answering nothing: a deadlocked ComfyUI
    assert await asyncio.wait_for(run, 20) == 1
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert report.body["error"].startswith(f"Handed back: ComfyUI stopped answering for {HEALTHY_WITHIN_S:g} s during")
    [copy] = [j for j in qm.store.list() if j.id not in (job.id, waiting.id)]
    assert copy.status == "pending", "the job is retried elsewhere, not failed"
    assert qm.store.get(waiting.id).status == "pending", "no job is popped in front of a hung ComfyUI"
    assert worker.state.fatal_reason == f"ComfyUI stopped answering and did not come back within {HEALTHY_WITHIN_S:g} s"
    assert worker.state.jobs_failed == 0 and worker.state.jobs_handed_back == 1


async def test_a_hang_mid_job_ends_the_worker_its_unresponsive_timeout_after_comfyuis_last_answer(
    qm, comfyui_process, settings_for, workflows
):
    """The silence that lost the job (lost_after_s: 30 s in production, 4 s here) counts toward
    COMFYUI_UNRESPONSIVE_TIMEOUT_S: before, that wait started again at the first probe after the hand back, and a
    hung ComfyUI kept its replica 150 s instead of 120 (lost_after_s + the timeout: 9 s here, now 5)."""
    process, url = comfyui_process
    job = qm.store.submit("alice", workflows["slow"])
    settings = settings_for(
        comfyui_url=url, serverless_mode=False, http_timeout_s=20, comfyui_unresponsive_timeout_s=5,
        comfyui_startup_timeout_s=300,
    )  # fmt: skip
    worker = Worker(settings, timings=replace(HEALTHY_TIMINGS, lost_after_s=4.0))
    with capture_logs() as logs:
        run = asyncio.create_task(worker.run())
        await wait_for(lambda: worker.state.current_prompt_id is not None)
        process.send_signal(signal.SIGSTOP)
        hung_at = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(run, 20) == 1
    # Before, the line read "ComfyUI not up after 0 s" beside timeout_s 5: the wait's budget, spent by the lost job.
    [gave_up] = [e for e in logs if e["event"] == "ComfyUI did not come back; exiting"]
    assert "after 0 s" not in gave_up["error"] and gave_up["silent_s"] >= 5, gave_up
    # Before, at least 9 s (timers never fire early); now 5 s, and up to 7.5 s was measured on a loaded machine.
    assert asyncio.get_running_loop().time() - hung_at < 8.5, "before: 4 s to lose the job, then 5 s more"
    assert qm.reports.landed(job.id)[0].body["error"].startswith("Handed back: ComfyUI stopped answering for 4 s")
    assert worker.state.fatal_reason == "ComfyUI stopped answering and did not come back within 5 s"


async def test_an_idle_worker_gives_up_on_a_hung_comfyui_at_its_unresponsive_timeout_not_an_http_timeout_later(
    qm, comfyui_process, make_worker
):
    """Each /system_stats probe waited the whole HTTP timeout (30 s in production): the first one, and the last
    one started just before COMFYUI_UNRESPONSIVE_TIMEOUT_S ran out. A hung ComfyUI kept the replica 150 s, not 120."""
    process, url = comfyui_process
    worker = make_worker(
        comfyui_url=url, serverless_mode=False, http_timeout_s=20, comfyui_unresponsive_timeout_s=2,
        comfyui_startup_timeout_s=300,
    )  # fmt: skip
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.state.consecutive_idle_polls >= 1)
    process.send_signal(signal.SIGSTOP)
    assert await asyncio.wait_for(run, 10) == 1, "before: 20 s for the first probe, 20 s for the last"
    assert worker.state.fatal_reason == "ComfyUI stopped answering and did not come back within 2 s"


async def test_a_probe_of_a_hung_comfyui_longer_than_the_heartbeat_limit_is_not_a_wedged_loop(
    qm, comfyui_process, make_worker
):
    """HTTP_TIMEOUT_S and COMFYUI_UNRESPONSIVE_TIMEOUT_S both above HEARTBEAT_TIMEOUT_S: before, the first probe of a
    hung ComfyUI held the loop that long with no heartbeat, so /health said "worker loop wedged" (a restart that
    loses the reason) before the worker could give ComfyUI up as "ComfyUI stopped answering"."""
    process, url = comfyui_process
    worker = make_worker(
        comfyui_url=url, serverless_mode=False, heartbeat_timeout_s=HEARTBEAT_LIMIT_S, http_timeout_s=20,
        comfyui_unresponsive_timeout_s=HEARTBEAT_LIMIT_S + 2, comfyui_startup_timeout_s=300,
    )  # fmt: skip
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.state.consecutive_idle_polls >= 1)
    process.send_signal(signal.SIGSTOP)
    assert await wedged_verdicts(worker, run) == (1, [])
    assert worker.state.fatal_reason.startswith("ComfyUI stopped answering")


async def test_the_silence_before_a_hand_back_counts_from_comfyuis_last_answer_not_from_a_timed_out_call(
    qm, comfyui_process, make_worker, workflows
):
    """30 s of silence (lost_after_s, 0.6 s here) from ComfyUI's last answer: a question to a hung ComfyUI is
    not first given the whole HTTP timeout (30 s, as in production), which made it about 70 s."""
    process, url = comfyui_process
    job = qm.store.submit("alice", workflows["slow"])
    worker = make_worker(
        comfyui_url=url, serverless_mode=False, http_timeout_s=30, comfyui_unresponsive_timeout_s=60,
        timings=COMFYUI_KILLED_TIMINGS,
    )  # fmt: skip
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.state.current_prompt_id is not None)
    process.send_signal(signal.SIGSTOP)
    await wait_for(lambda: qm.reports.landed(job.id), timeout=10)  # before: only after the 30 s HTTP timeout
    process.send_signal(signal.SIGCONT)  # so the worker's probe is answered and it can stop
    worker.request_shutdown()
    await asyncio.wait_for(run, 10)
    [report] = qm.reports.landed(job.id)
    assert report.body["error"].startswith(
        f"Handed back: ComfyUI stopped answering for {COMFYUI_KILLED_TIMINGS.lost_after_s:g} s during the job"
    )
    assert "nothing heard from ComfyUI for" in report.body["error"]


async def test_a_busy_comfyui_that_answers_over_http_keeps_its_job_however_quiet_its_socket(
    qm, comfy, make_worker, workflows
):
    job = qm.store.submit("alice", workflows["slow"])
    comfy.freeze(class_type="ImageBlur")  # a long node: no event on the socket, HTTP answered all along
    worker = make_worker(serverless_job_limit=1)
    run = asyncio.create_task(worker.run())
    await comfy.wait_until_frozen()
    await asyncio.sleep(2 * worker.timings.lost_after_s)
    assert qm.reports.for_job(job.id) == [], "a busy ComfyUI is not a silent one"
    comfy.release()
    assert await asyncio.wait_for(run, 10) == 0
    assert qm.store.get(job.id).status == "completed"


# A stop (0.1 s grace) or a crash must come before the job ends: at the fixture's 0.4 s a node, a loaded machine
# noticed the prompt late enough that the job completed instead of being handed back (KeyError on "error").
STOPPED_BEFORE_IT_ENDS_S = 2.0


async def test_the_fallback_hand_back_gives_up_after_max_job_attempts(qm, comfy, make_worker, workflows):
    # A copy made by a worker from before causes were told: every earlier run counts as a fault.
    metadata = {"requeued_from": "job-0", "attempt": 3, "requeue_reasons": ["worker a was stopped", "ComfyUI died"]}
    comfy.node_seconds["ImageBlur"] = STOPPED_BEFORE_IT_ENDS_S
    job = qm.store.submit("alice", workflows["slow"], metadata=metadata)
    worker = make_worker(max_job_attempts=3, serverless_job_limit=1, timings=COMFYUI_KILLED_TIMINGS)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    await comfy.crash()
    assert await run == 0
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error.startswith("Gave up after 3 attempts: worker a was stopped; ComfyUI died; ComfyUI stopped answering")
    assert [j.id for j in qm.store.list()] == [job.id], "no fourth copy"


async def test_the_fallback_resubmits_a_job_stopped_under_again_and_again(qm, comfy, make_worker, workflows):
    """comfy-multi: four replicas stopped under the job (MAX_JOB_ATTEMPTS 3); each copy counts no fault."""
    comfy.node_seconds["ImageBlur"] = STOPPED_BEFORE_IT_ENDS_S
    job = qm.store.submit("alice", workflows["slow"], priority=0)
    for stop in range(1, 5):
        worker = make_worker(worker_id=f"replica-{stop}", shutdown_grace_s=0.1, max_job_attempts=3)
        run = asyncio.create_task(worker.run())
        await wait_for(lambda n=stop: len(comfy.prompts_received) == n)
        worker.request_shutdown()
        assert await run == 0
        assert qm.reports.landed(job.id)[0].body["error"].startswith("Handed back: worker replica-")
        [job] = [j for j in qm.store.list() if j.status == "pending"]
        assert (job.metadata["attempt"], job.metadata["faults"], job.priority) == (stop + 1, 0, 0)
    assert len(job.metadata["requeue_reasons"]) == 4
    comfy.node_seconds["ImageBlur"] = 0.05
    assert await make_worker(worker_id="replica-5").run() == 0
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"


@pytest.mark.parametrize(
    ("earlier", "how", "gives_up", "copy_faults"),
    [
        ({"attempt": 3, "faults": 2}, "crash", True, None),  # the third fault
        ({"attempt": 3, "faults": 0}, "crash", False, 1),  # two stops, then the first fault
        ({"attempt": 6, "faults": 1}, "crash", False, 2),  # faults, not runs, are bounded
        ({"attempt": 20, "faults": 0}, "stop", True, None),  # the twentieth stop
        ({"attempt": 20, "faults": 1}, "stop", False, 1),  # the nineteenth stop
        ({"attempt": 2, "faults": 7}, "crash", False, 2),  # a count over the runs is cut to the runs
        ({"attempt": 3, "faults": "0"}, "crash", True, None),  # not a count: every earlier run was a fault
    ],
)
async def test_the_fallback_bounds_faults_by_max_job_attempts_and_stops_by_twenty(
    qm, comfy, make_worker, workflows, earlier, how, gives_up, copy_faults
):
    metadata = {"requeued_from": "job-0", **earlier, "requeue_reasons": ["earlier"]}
    comfy.node_seconds["ImageBlur"] = STOPPED_BEFORE_IT_ENDS_S
    job = qm.store.submit("alice", workflows["slow"], metadata=metadata)
    worker = make_worker(
        max_job_attempts=3, serverless_job_limit=1, shutdown_grace_s=0.1, timings=COMFYUI_KILLED_TIMINGS
    )
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    if how == "crash":
        await comfy.crash()
    else:
        worker.request_shutdown()
    await run
    error = qm.reports.landed(job.id)[0].body["error"]
    copies = [j for j in qm.store.list() if j.id != job.id]
    if gives_up:
        assert error.startswith(f"Gave up after {earlier['attempt']} attempts: earlier; "), error
        assert copies == []
    else:
        [copy] = copies
        assert error == f"Handed back: {copy.metadata['requeue_reasons'][-1]}; resubmitted as {copy.id}"
        assert (copy.metadata["attempt"], copy.metadata["faults"]) == (earlier["attempt"] + 1, copy_faults)


async def test_a_busy_websocket_does_not_hide_a_prompt_comfyui_forgot(qm, comfy, make_worker, workflows):
    """Preview frames without end (a custom node's send_sync) must not stop the worker asking ComfyUI over HTTP:
    here the worker's prompt is deleted from ComfyUI's queue while the socket never goes quiet."""
    import httpx

    from standins.comfyui import PNG_FORMAT, PREVIEW_IMAGE_EVENT

    comfy.freeze(class_type="ImageBlur")
    async with httpx.AsyncClient(base_url=comfy.url) as http:
        await http.post("/prompt", json={"prompt": workflows["slow"], "client_id": "someone-else"})
        await comfy.wait_until_frozen()  # the worker's prompt will wait behind this one
        job = qm.store.submit("alice", workflows["quick"])
        worker = make_worker(job_timeout_s=5, serverless_job_limit=1)
        run = asyncio.create_task(worker.run())
        await wait_for(lambda: len(comfy.prompts_received) == 2)

        async def flood():
            while True:
                comfy.send_sync(PREVIEW_IMAGE_EVENT, PNG_FORMAT.to_bytes(4, "big") + b"\x89PNG" + bytes(1000))
                await asyncio.sleep(0.01)

        flooding = asyncio.create_task(flood())
        await http.post("/queue", json={"delete": [comfy.prompts_received[1].prompt_id]})
        try:
            assert await asyncio.wait_for(run, 10) == 0
        finally:
            flooding.cancel()
            comfy.release()
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error.startswith("Handed back: ComfyUI no longer knows the prompt"), error


async def test_a_socket_comfyui_forgot_is_replaced_once_a_prompt_ended_unheard(qm, comfy, make_worker, workflows):
    """ComfyUI forgets a clientId whenever one of its sockets closes (websocket_handler's `finally:
    sockets.pop(sid)`), even one a reconnect replaced: the worker's open socket then hears nothing. The job ends
    over HTTP; the worker must then reconnect, or every later job would be learned only a check_interval_s late."""
    first = qm.store.submit("alice", workflows["slow"])
    second = qm.store.submit("bob", workflows["quick"])
    comfy.freeze(class_type="ImageBlur")
    running = make_worker()
    run = asyncio.create_task(running.run())
    await asyncio.wait_for(comfy.wait_until_frozen(), 10)
    client_id = comfy.prompts_received[0].client_id
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{comfy.url}/ws?clientId={client_id}"):
        pass  # another socket with the worker's clientId replaces the worker's, then closes
    comfy.release()
    assert await asyncio.wait_for(run, 30) == 0
    assert [r.endpoint for r in qm.reports.landed(first.id)] == ["complete-job"]
    assert [r.endpoint for r in qm.reports.landed(second.id)] == ["complete-job"]
    assert comfy.ws_connections[client_id] == 3, "the worker, the other socket, the worker again"


async def test_an_oversized_websocket_message_drops_the_socket_not_the_job(qm, comfy, make_worker, workflows):
    from worker.comfyui import MAX_COMFYUI_MESSAGE_BYTES

    job = qm.store.submit("alice", workflows["slow"])
    running = make_worker()
    run = asyncio.create_task(running.run())
    await wait_for(lambda: comfy.prompts_received)
    comfy.send_sync("custom_node_dump", {"blob": "x" * MAX_COMFYUI_MESSAGE_BYTES})
    assert await run == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", report.body
    assert comfy.ws_connections[running.events.client_id] >= 2, "dropped, then reconnected"


async def test_a_prompt_comfyui_cannot_stop_fails_its_job_and_takes_no_other_down_with_it(
    qm, comfy, make_worker, workflows
):
    from dataclasses import replace

    comfy.freeze(class_type="ImageBlur")  # a node that ignores interrupts and never returns
    stuck = qm.store.submit("alice", workflows["slow"])
    next_in_line = qm.store.submit("bob", workflows["quick"])
    # The prompt must reach ComfyUI before the deadline (0.3 s was beaten by a stall); the interrupt is meant to
    # go unheeded, so its short wait stays.
    worker = make_worker(job_timeout_s=HEALTHY_WITHIN_S)
    worker.timings = replace(worker.timings, interrupt_wait_s=0.3)
    try:
        assert await asyncio.wait_for(worker.run(), 10) == 1
    finally:
        comfy.release()
    assert "ComfyUI did not stop it within 0.3 s" in qm.reports.landed(stuck.id)[0].body["error"]
    assert qm.store.get(next_in_line.id).status == "pending", "not popped only to wait behind the stuck prompt"
    assert "only a restart of ComfyUI frees it" in worker.state.fatal_reason


def _history_entry(change):
    return "/history/{prompt_id}", lambda answer: {prompt: {**entry, **change} for prompt, entry in answer.items()}


# What a broken ComfyUI (or a proxy or plug-in in front of it) may answer with a 200 and JSON of the wrong shape.
WRONG_SHAPES = {
    "queue-a-list": (("/queue", lambda _answer: []), "completed"),  # history tells
    "history-status-a-string": (_history_entry({"status": "weird"}), "failed"),
    "history-messages-not-pairs": (_history_entry({"status": {"status_str": "error", "messages": [1, "x"]}}), "failed"),
    "history-outputs-a-list": (_history_entry({"outputs": [1, 2]}), "completed"),
    "system-stats-system-a-string": (("/system_stats", lambda _answer: {"system": "x"}), "completed"),
}


@pytest.mark.parametrize("case", WRONG_SHAPES)
async def test_json_of_the_wrong_shape_from_comfyui_ends_the_job_and_never_crashes_the_worker(
    leased_qm_for_shapes, comfy, make_worker, workflows, case
):
    (route, rewrite), status = WRONG_SHAPES[case]
    qm = leased_qm_for_shapes
    job = qm.store.submit("alice", workflows["quick"])
    comfy.refuse_websockets()  # everything goes through the HTTP answers
    comfy.reshape(route, rewrite)
    worker = make_worker(queue_manager_url=qm.url, serverless_job_limit=1)
    assert await asyncio.wait_for(worker.run(), 10) == 0
    assert qm.store.get(job.id).status == status, qm.store.get(job.id).history
    assert not comfy.ws_connections, "the websocket was refused: the prompt was followed over HTTP"


@pytest.fixture
async def leased_qm_for_shapes():
    from queue_manager.server import QueueManagerServer

    async with QueueManagerServer(lease_timeout_s=30, test_hooks=True) as server:
        yield server


def test_a_rejection_of_the_wrong_shape_is_still_described():
    from worker.comfyui import describe_prompt_error

    body = {
        "error": {"message": "Prompt outputs failed validation"},
        "node_errors": {
            "3": {"class_type": "SaveImage", "errors": ["not an object", {"message": "bad", "extra_info": "x"}]}
        },
    }
    assert describe_prompt_error(body) == (
        "ComfyUI rejected the workflow: Prompt outputs failed validation; node 3 (SaveImage): bad"
    )


async def test_an_unexpected_error_hands_the_job_back_and_the_worker_goes_on(qm, comfy, make_worker, workflows):
    first = qm.store.submit("alice", workflows["quick"])
    worker = make_worker()
    deliver = worker.delivery.deliver
    calls = []

    async def fails_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("a bug no test foresaw")
        return await deliver(*args, **kwargs)

    worker.delivery.deliver = fails_once
    assert await worker.run() == 0
    error = qm.reports.landed(first.id)[0].body["error"]
    assert error.startswith("Handed back: worker test-worker hit an unexpected error: RuntimeError: a bug no test")
    [copy] = [j for j in qm.store.list() if j.id != first.id]
    assert qm.store.get(copy.id).status == "completed", "the copy ran on the same worker, which went on"


async def test_executed_events_past_the_message_bound_fail_the_job_instead_of_piling_up_in_memory(
    qm, comfy, make_worker, workflows
):
    """A custom node may send any number of `executed` events for the running prompt, each naming another node;
    the worker kept every one's output until the prompt ended (a fallback for a missing history entry)."""
    from worker.comfyui import MAX_COMFYUI_MESSAGE_BYTES

    blur = comfy.catalogue["ImageBlur"]
    sent: list[bool] = []

    def chatty(inputs, env):
        if not sent:  # in the first of the workflow's two ImageBlur nodes
            for index in range(9):  # 9 x 4 MiB: more than the 32 MiB the worker may hold, each under the socket's bound
                output = {"text": ["x" * (MAX_COMFYUI_MESSAGE_BYTES // 8)]}
                event = {"node": f"spoof-{index}", "output": output, "prompt_id": comfy.running_prompt_id}
                comfy.send_sync("executed", event)
            sent.append(True)
        return blur.run(inputs, env)

    comfy.catalogue["ImageBlur"] = replace(blur, run=chatty)
    # The prompt runs on until the job's report: a history entry found over HTTP before the worker read every
    # event (a loaded machine sends 36 MiB slowly) would end the job as its prompt did, with the events unread.
    comfy.freeze(class_type="SaveImage")
    job = qm.store.submit("alice", workflows["slow"])
    run = asyncio.create_task(make_worker().run())
    try:
        await wait_for(lambda: qm.reports.landed(job.id), timeout=30)
    finally:
        comfy.release()
    assert await asyncio.wait_for(run, 20) == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job", report.body
    assert "ComfyUI's `executed` events of the prompt are larger than 32 MiB" in report.body["error"]
    assert "so the workflow made it that large" in report.body["error"]


async def complete_slow_job_while_blur_sends(qm, comfy, make_worker, workflows, send, timings=HEALTHY_TIMINGS):
    """The slow workflow with its ImageBlur nodes calling send() (what any custom node may do) before they run:
    the job's one report, which must be a completion."""
    blur = comfy.catalogue["ImageBlur"]

    def sending(inputs, env):
        send()
        return blur.run(inputs, env)

    comfy.catalogue["ImageBlur"] = replace(blur, run=sending)
    job = qm.store.submit("alice", workflows["slow"])
    assert await asyncio.wait_for(make_worker(timings=timings).run(), 20) == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", report.body
    return report


@pytest.mark.parametrize("event", ["execution_success", "execution_error", "execution_interrupted"])
async def test_a_premature_end_event_does_not_end_a_job_whose_prompt_still_runs(
    qm, comfy, make_worker, workflows, event
):
    """A custom node sends an end event for the running prompt long before it ends (any node may call send_sync):
    the job must end as the prompt really does, not as a success with no outputs or a failure it made up."""
    comfy.node_seconds["ImageBlur"] = 2.5  # the real end comes past the worker's 1-s wait for the history entry
    said: list[str] = []

    def says_it_is_over():  # in the first of the workflow's two ImageBlur nodes
        if not said:
            said.append(event)
            data = {"prompt_id": comfy.running_prompt_id, "node_id": "2", "node_type": "ImageBlur",
                    "exception_type": "RuntimeError", "exception_message": "made up", "timestamp": 0}  # fmt: skip
            comfy.send_sync(event, data)

    report = await complete_slow_job_while_blur_sends(qm, comfy, make_worker, workflows, says_it_is_over,
                                                      replace(HEALTHY_TIMINGS, history_wait_s=1.0))
    assert [o["kind"] for o in report.body["result"]["outputs"]] == ["images"], "the SaveImage result is delivered"


async def test_junk_on_the_websocket_from_a_custom_node_neither_ends_nor_changes_the_job(
    qm, comfy, make_worker, workflows
):
    """Binary frames of unknown types, events of other prompts (their ends, their outputs, their finished
    markers), events whose data is no object: the job still ends once, with its own outputs only."""

    def noisy():
        other = "another-prompt"
        comfy.send_sync(1, b"\x00\x00\x00\x02" + b"\x89PNG junk")  # a preview that is no image
        comfy.send_sync(99, b"\xff" * 1000)  # a binary event type ComfyUI does not have
        comfy.send_sync("execution_success", {"prompt_id": other})
        comfy.send_sync("execution_error", {"prompt_id": other, "node_id": "1", "exception_message": "not yours"})
        listed = {"images": [{"filename": "not-yours.png", "subfolder": "", "type": "output"}]}
        comfy.send_sync("executed", {"node": "9", "output": listed, "prompt_id": other})
        comfy.send_sync("executing", {"node": None, "prompt_id": other})
        comfy.send_sync("status", "a string, not an object")
        comfy.send_sync("executed", {"node": "9", "output": "not an object", "prompt_id": comfy.running_prompt_id})

    report = await complete_slow_job_while_blur_sends(qm, comfy, make_worker, workflows, noisy)
    [output] = report.body["result"]["outputs"]
    assert output["node_id"] == "4" and "not-yours" not in output["path"]


@pytest.mark.parametrize("hangs", ["at start", "while idle"])
async def test_a_stop_while_a_hung_comfyui_is_probed_exits_at_once_not_an_http_timeout_later(
    qm, comfyui_process, make_worker, hangs
):
    """Before: the probe in flight ran to its HTTP timeout (30 s in production: measured 28.7 s and 29.7 s after
    SIGTERM under the supervisor), past the platform's kill 30 s after the signal."""
    process, url = comfyui_process
    worker = make_worker(
        comfyui_url=url, serverless_mode=False, http_timeout_s=60, comfyui_unresponsive_timeout_s=300,
        comfyui_startup_timeout_s=300,
    )  # fmt: skip
    if hangs == "at start":
        process.send_signal(signal.SIGSTOP)
    run = asyncio.create_task(worker.run())
    if hangs == "while idle":
        await wait_for(lambda: worker.state.consecutive_idle_polls >= 1)
        process.send_signal(signal.SIGSTOP)
    await asyncio.sleep(0.3)  # the worker polls every 0.02 s: by now a probe of ComfyUI is waiting for an answer
    worker.request_shutdown()
    assert await asyncio.wait_for(run, 10) == 0
    assert worker.state.fatal_reason is None


async def test_a_queue_url_that_is_not_the_base_url_is_a_poll_error_naming_the_url_polled(qm, make_worker):
    """QUEUE_MANAGER_URL with /api at its end (or another server's port): before, `queue manager answered HTTP 404:
    {"detail":"Not Found"}`, which named neither the URL polled nor the setting."""
    worker = make_worker(queue_manager_url=f"{qm.url}/api")
    with capture_logs() as logs:
        running = asyncio.create_task(worker.run())
        async with asyncio.timeout(10):
            while not [e for e in logs if e["event"] == "Poll failed; backing off"]:
                await asyncio.sleep(0.01)
        worker.request_shutdown()
        assert await running == 0
    failure = next(e for e in logs if e["event"] == "Poll failed; backing off")
    assert f"HTTP 404 to GET {qm.url}/api/api/workers/next-job:" in failure["error"]
    assert "QUEUE_MANAGER_URL must be the queue manager's base URL" in failure["error"]
    assert "worker_id" not in failure["error"]



@pytest.mark.parametrize("extensions", [True, False], ids=["release-job", "comfy-multi-resubmit"])
async def test_a_huge_exception_message_of_a_broken_replica_is_logged_clipped(
    comfy, make_worker, workflows, extensions
):
    """A node's exception message may run to ComfyUI's 32 MiB websocket limit; when it is a replica fault it
    becomes the hand-back reason, which the logs carried whole (only release-job's body clipped it). Before:
    "Job X handed back" logged a reason of 1,000,159 chars; after, at most MAX_REASON_CHARS. A resubmitted copy
    carries MAX_REASON_CHARS_IN_METADATA of it among its `requeue_reasons`."""
    from queue_manager.server import QueueManagerServer
    from worker.queue_client import MAX_ERROR_CHARS, MAX_REASON_CHARS
    from worker.reports import MAX_REASON_CHARS_IN_METADATA

    comfy.inject_error("CUDA error: an illegal memory access was encountered " + "x" * 1_000_000,
                       exception_type="torch.AcceleratorError", node_id="2", prompts=None)
    async with QueueManagerServer(test_hooks=True, extensions=extensions) as qm:
        job = qm.store.submit("alice", workflows["quick"])
        worker = make_worker(queue_manager_url=qm.url, serverless_max_idle_polls=100)
        with capture_logs() as logs:
            assert await asyncio.wait_for(worker.run(), 10) == 1
        copies = [j for j in qm.store.list() if j.id != job.id]
    if not extensions:
        [copy] = copies
        [reason] = copy.metadata["requeue_reasons"]
        assert len(reason) == MAX_REASON_CHARS_IN_METADATA and "CUDA error: an illegal memory access" in reason
    handed_back = [e for e in logs if e["event"] == f"Job {job.id} handed back"]
    assert handed_back and len(handed_back[0]["reason"]) <= MAX_REASON_CHARS
    longest = max((len(v), e["event"]) for e in logs for v in e.values() if isinstance(v, str))
    assert longest[0] <= MAX_ERROR_CHARS, longest
