"""A restarted worker stops the prompts its killed run left in ComfyUI, and tidies the history entries and files of
those it interrupted once they end. When a proxy refused stopping one of them, the worker dropped all it had stopped:
the interrupted prompt's history entry and files stayed in ComfyUI for good. Now the prompts found running are kept,
and tidied after the worker's first job as when all were stopped."""

from __future__ import annotations

import asyncio

from worker.comfyui import ComfyUIClient, EventSocket
from worker.execution import PromptRun

from ..conftest import wait_for
from .test_stop_prompts_refused import delete_refusing_proxy


async def test_a_refused_stop_at_start_still_tidies_the_interrupted_prompt(qm, comfy, make_worker, workflows):
    comfy.freeze(class_type="ImageBlur")
    killed_run = ComfyUIClient(comfy.url, worker_id="killed-run")
    try:
        for prompt_id in ("running-1", "pending-refused"):
            await killed_run.queue_prompt(workflows["slow"], "client-1", prompt_id)
        await asyncio.wait_for(comfy.wait_until_frozen(), 10)
        job = qm.store.submit("alice", workflows["quick"])
        async with delete_refusing_proxy(comfy.url, "pending-refused") as proxy:
            worker = make_worker(comfyui_url=proxy, worker_id="killed-run")
            run = asyncio.create_task(worker.run())
            await wait_for(lambda: comfy.interrupts_received, 10)
            comfy.release()  # the frozen node returns; the interrupt stops the prompt after it
            assert await asyncio.wait_for(run, 20) == 0
        assert qm.store.get(job.id).status == "completed"
        assert await killed_run.history("running-1") is None, "the interrupted prompt's history entry is tidied"
    finally:
        comfy.release()
        await killed_run.aclose()


async def test_a_refused_stop_for_a_retry_still_keeps_the_interrupted_prompt(comfy, workflows):
    comfy.freeze(class_type="ImageBlur")
    earlier = ComfyUIClient(comfy.url)
    try:
        for prompt_id in ("running-1", "pending-refused"):
            await earlier.queue_prompt(workflows["slow"], "client-1", prompt_id, job_id="job-1")
        await asyncio.wait_for(comfy.wait_until_frozen(), 10)
        async with delete_refusing_proxy(comfy.url, "pending-refused") as proxy:
            retry = ComfyUIClient(proxy)
            try:
                run = PromptRun(retry, EventSocket(retry), timeout_s=10, job_id="job-1")
                left_running = await asyncio.wait_for(run.stop_earlier_attempts(), 10)
            finally:
                await retry.aclose()
        assert left_running == {"running-1"}, "tidied once over, as when every stop was answered"
    finally:
        comfy.release()
        await earlier.aclose()
