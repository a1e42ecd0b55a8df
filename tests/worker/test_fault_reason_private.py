"""A broken replica's reason on /health and /status carried ComfyUI's exception text as is, which echoes what the
job's user wrote (the file a SaveImage filename_prefix named, on a full disk); both say they never carry user data.
They now name the fault and what ComfyUI raised (the exception's type, Python's errno words, CUDA's error) only;
the job's hand-back reason, which goes to its owner, still quotes the whole text."""

from __future__ import annotations

import asyncio

import httpx

from health.server import HealthServer

MARKER = "alice-private-prefix-7c1e"


async def test_a_broken_replica_keeps_the_jobs_file_names_off_health_and_status(qm, comfy, make_worker, workflows):
    workflow = workflows["quick"]
    workflow["3"]["inputs"]["filename_prefix"] = MARKER
    comfy.inject_error(f"[Errno 28] No space left on device: '{comfy.output_dir / MARKER}_00001_.png'",
                       exception_type="OSError", class_type="SaveImage")
    job = qm.store.submit("alice", workflow)
    worker = make_worker(serverless_max_idle_polls=100)
    health = HealthServer(worker.state, host="127.0.0.1", port=0)
    port = await health.start()
    try:
        assert await asyncio.wait_for(worker.run(), 10) == 1
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as probe:
            answers = {path: await probe.get(path) for path in ("/health", "/ready", "/status")}
    finally:
        await health.stop()
    assert answers["/health"].status_code == 503
    reason = answers["/health"].json()["reason"]
    assert reason == ("ComfyUI's disk failed on worker test-worker: ComfyUI raised OSError: [Errno 28] No space left "
                      "on device"), reason
    for path, answer in answers.items():
        assert MARKER not in answer.text, path
    assert MARKER in qm.reports.landed(job.id)[0].body["error"], "the job's owner is told the whole error"
