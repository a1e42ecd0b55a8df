"""A proxy in front of ComfyUI refusing POST /interrupt at a job's deadline: the refusal was thrown away, the worker
waited the whole interrupt wait for a prompt no one had asked to stop, and then blamed the workflow's node ("ComfyUI
did not stop it within N s (a node that cannot be interrupted)") in the job's error and in the replica's fatal reason.
Both now say the interrupt failed, and why."""

from __future__ import annotations

import asyncio

from .conftest import HEALTHY_WITHIN_S
from .test_interrupt_refused import interrupt_refusing_proxy


async def test_a_refused_interrupt_at_the_deadline_is_told_not_blamed_on_the_node(qm, comfy, make_worker, workflows):
    comfy.freeze(class_type="ImageBlur")  # runs on past the deadline until released
    job = qm.store.submit("alice", workflows["slow"])
    try:
        async with interrupt_refusing_proxy(comfy.url) as proxy:
            worker = make_worker(comfyui_url=proxy, job_timeout_s=HEALTHY_WITHIN_S)
            assert await asyncio.wait_for(worker.run(), 15) == 1
    finally:
        comfy.release()
    error = qm.reports.landed(job.id)[0].body["error"]
    assert "could not interrupt it (ComfyUI POST /interrupt answered HTTP 403)" in error, error
    assert "cannot be interrupted" not in error, error
    reason = worker.state.fatal_reason or ""
    assert "could not interrupt it at the job deadline (ComfyUI POST /interrupt answered HTTP 403)" in reason, reason
    assert comfy.interrupts_received == [], "the proxy let no interrupt through"
