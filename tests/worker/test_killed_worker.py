"""A worker SIGKILLed at each step of a job, as real processes: `python -m worker` against the ComfyUI stand-in and
the embedded queue manager with a short lease. Whatever the step, the job ends exactly once (the next worker
completes it as attempt 2), and OUTPUTS_PATH holds only the files of the result that counts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from queue_manager.server import QueueManagerServer
from standins.comfyui import ComfyUISimulator
from standins.comfyui_nodes import NodeEnv, NodeResult

from ..conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
BIG_BYTES = 1 << 30  # sparse: free to make; copying it takes long enough for a kill to land mid-way
HOUR_S = 3600


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def age(folder: Path, seconds: float) -> None:
    """Make everything under folder look untouched for `seconds`: what an hour after a SIGKILL looks like."""
    then = time.time() - seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (then, then), follow_symlinks=False)


@pytest.fixture
async def leased_qm() -> AsyncIterator[QueueManagerServer]:
    # 2 s: a killed worker's job comes back soon, and a live worker beating every 0.2 s keeps it through a 1.8-s
    # stall of its process on a loaded machine.
    async with QueueManagerServer(lease_timeout_s=2.0, reaper_interval_s=0.2, test_hooks=True) as server:
        yield server


@pytest.fixture
async def comfy(tmp_path: Path) -> AsyncIterator[ComfyUISimulator]:
    # No output cache: the retry runs SaveImage again instead of naming the killed attempt's files.
    sim = ComfyUISimulator(tmp_path / "comfy-output", tmp_path / "comfy-temp", cache_outputs=False)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def start_worker(tmp_path: Path, leased_qm: QueueManagerServer, comfy: ComfyUISimulator):
    started: list[asyncio.subprocess.Process] = []

    async def start(name: str, **more_env: str) -> asyncio.subprocess.Process:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
            "QUEUE_MANAGER_URL": str(leased_qm.url), "COMFYUI_URL": comfy.url,
            "COMFYUI_OUTPUT_DIR": str(comfy.output_dir), "OUTPUTS_PATH": str(tmp_path / "outputs"),
            "WORKER_ID": name, "HEALTH_PORT": "0", "HEALTH_HOST": "127.0.0.1", "WORKER_POLL_INTERVAL": "0.05",
            "LEASE_HEARTBEAT_S": "0.2", "LOG_FORMAT": "json", **more_env,
        }  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


def save_big_then_small(comfy: ComfyUISimulator) -> None:
    """SaveImage names one output: a 1 GiB file the first time, a small one after."""
    node = comfy.catalogue["SaveImage"]
    runs = []

    def run(_inputs: dict[str, Any], env: NodeEnv) -> NodeResult:
        runs.append(1)
        name = "big.bin" if len(runs) == 1 else "small.bin"
        with open(env.output_dir / name, "wb") as out:
            out.truncate(BIG_BYTES if len(runs) == 1 else 1000)
        return NodeResult((), {"images": [{"filename": name, "subfolder": "", "type": "output"}]})

    comfy.catalogue["SaveImage"] = replace(node, run=run)


async def test_a_worker_killed_mid_delivery_leaves_nothing_once_its_staging_is_an_hour_old(
    leased_qm, comfy, start_worker, workflows, tmp_path: Path
):
    outputs = tmp_path / "outputs"
    save_big_then_small(comfy)
    job = leased_qm.store.submit("alice", workflows["quick"])
    first = await start_worker("first")
    await wait_for(lambda: files_under(outputs), step=0.001)  # the copy has started
    first.kill()
    await first.wait()
    assert leased_qm.reports.for_job(job.id) == []
    age(outputs, 2 * HOUR_S)
    live = outputs / ".partial" / "bob.job-9.another-replica"  # a live replica's delivery on a shared volume
    live.mkdir(parents=True)
    (live / "ComfyUI_00001_.png").write_bytes(b"being written")

    second = await start_worker("second")
    try:
        await wait_for(lambda: leased_qm.reports.landed(job.id))
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    [report] = leased_qm.reports.landed(job.id)
    assert report.endpoint == "complete-job"
    [result] = report.body["result"]["outputs"]
    assert result["path"] == f"alice/{job.id}/@attempt-2/small.bin"
    assert files_under(outputs) == [
        ".partial/bob.job-9.another-replica/ComfyUI_00001_.png", f"alice/{job.id}/@attempt-2/small.bin",
    ], "the killed attempt left nothing; the live replica's delivery was not touched"  # fmt: skip


async def kill_after_the_poll(qm, comfy, outputs: Path, job_id: str) -> None:
    """The poll took the job; the answer is held, so the worker dies before it queues anything."""
    await wait_for(lambda: qm.store.get(job_id).status == "running")
    assert comfy.prompts_received == []


async def kill_while_comfyui_runs_it(qm, comfy, outputs: Path, job_id: str) -> None:
    await comfy.wait_until_frozen()  # queued on ComfyUI, followed over the websocket


async def kill_between_delivery_and_report(qm, comfy, outputs: Path, job_id: str) -> None:
    await wait_for(lambda: (outputs / "alice" / job_id).is_dir())  # published; the report is held
    await asyncio.sleep(0.3)
    assert qm.reports.landed(job_id) == []


@pytest.mark.parametrize(
    ("workflow", "before", "kill_point"),
    [
        ("quick", lambda qm, comfy: qm.faults.inject("next-job", after=True, delay_s=5, drop=True),
         kill_after_the_poll),
        ("slow", lambda qm, comfy: comfy.freeze(class_type="ImageBlur"), kill_while_comfyui_runs_it),
        ("quick", lambda qm, comfy: qm.faults.inject("complete-job", delay_s=5, drop=True),
         kill_between_delivery_and_report),
    ],
    ids=["after the poll", "while ComfyUI runs it", "between delivery and report"],
)
async def test_a_job_whose_worker_is_killed_at_any_step_ends_exactly_once_completed_by_the_next(
    leased_qm, comfy, start_worker, workflows, tmp_path: Path, workflow, before, kill_point
):
    outputs = tmp_path / "outputs"
    job = leased_qm.store.submit("alice", workflows[workflow])
    before(leased_qm, comfy)
    first = await start_worker("first")
    await kill_point(leased_qm, comfy, outputs, job.id)
    first.kill()
    await first.wait()
    comfy.release()

    second = await start_worker("second")
    try:
        await wait_for(lambda: leased_qm.reports.landed(job.id), timeout=20)
        await asyncio.sleep(0.5)  # room for a second report, were one ever sent
    finally:
        second.send_signal(signal.SIGTERM)
        assert await second.wait() == 0
    [report] = leased_qm.reports.landed(job.id)
    assert report.endpoint == "complete-job"
    done = leased_qm.store.get(job.id)
    assert (done.status, done.attempt, done.worker_id) == ("completed", 2, "second")
    delivered = sorted(item["path"] for item in report.body["result"]["outputs"])
    assert delivered and all(path.startswith(f"alice/{job.id}/@attempt-2/") for path in delivered)
    assert files_under(outputs) == delivered, "nothing of the killed attempt is left, even once it had delivered"


async def killed_mid_sampling(leased_qm, comfy, start_worker, workflows, worker_id: str) -> tuple[Any, str]:
    """A job whose worker is SIGKILLed a minute before its sampler ends; the job and its prompt left running."""
    from standins.comfyui_nodes import build_catalogue

    comfy.catalogue = build_catalogue(("sd_xl_base_1.0.safetensors",))
    comfy.node_seconds["KSampler"] = 60.0  # 25 steps of 2.4 s; an interrupt lands between steps
    job = leased_qm.store.submit("alice", workflows["sdxl_txt2img"])
    worker = await start_worker(worker_id)
    await wait_for(lambda: comfy.running_prompt_id is not None)
    orphan = comfy.running_prompt_id
    worker.kill()
    await worker.wait()
    return job, orphan


async def test_the_retry_stops_the_prompt_its_killed_attempt_left_running_in_comfyui(
    leased_qm, comfy, start_worker, workflows
):
    """Before: the killed attempt's prompt ran on in ComfyUI for no one, the retry queued behind it with its
    JOB_TIMEOUT_S running, and the job failed "timed out": an infrastructure fault failing a job. (A bare
    comfy-worker beside its own ComfyUI; in the image the supervisor takes ComfyUI down with the worker.)"""
    job, orphan = await killed_mid_sampling(leased_qm, comfy, start_worker, workflows, "first")
    comfy.node_seconds["KSampler"] = 0.5  # the retry's own run is quick

    second = await start_worker("second", JOB_TIMEOUT_S="20")
    try:
        await wait_for(lambda: leased_qm.reports.landed(job.id), timeout=40)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await second.wait() == 0
    [report] = leased_qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", report.body
    assert [(i.body, i.honoured) for i in comfy.interrupts_received] == [({"prompt_id": orphan}, True)]


async def test_the_retry_leaves_other_jobs_prompts_alone_and_drops_its_own_pending_one(
    leased_qm, comfy, start_worker, workflows
):
    """Two workers share one ComfyUI: the retry removes only the prompt of its own job's killed attempt."""
    from worker.comfyui import JOB_ID_KEY

    comfy.freeze(class_type="ImageBlur")
    other = await comfy_post_prompt(comfy, workflows["slow"], {JOB_ID_KEY: "another-workers-job"})
    await comfy.wait_until_frozen()
    job = leased_qm.store.submit("alice", workflows["quick"])
    first = await start_worker("first")
    await wait_for(lambda: len(comfy.prompts_received) == 2)  # its prompt is queued behind the frozen one
    orphan = comfy.prompts_received[-1].prompt_id
    first.kill()
    await first.wait()

    second = await start_worker("second")
    try:
        await wait_for(lambda: len(comfy.prompts_received) == 3)
        assert orphan not in await comfy_queue_ids(comfy), "the killed attempt's pending prompt is gone"
        comfy.release()
        await wait_for(lambda: leased_qm.reports.landed(job.id), timeout=20)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await second.wait() == 0
    assert leased_qm.reports.landed(job.id)[0].endpoint == "complete-job"
    assert comfy.interrupts_received == [], "the other job's running prompt was not interrupted"
    assert await comfy_ran(comfy, other) and not await comfy_ran(comfy, orphan)


async def test_a_restarted_worker_stops_the_prompt_its_killed_run_left_whatever_job_it_takes_first(
    leased_qm, comfy, start_worker, workflows
):
    """The killed run's job was cancelled meanwhile, so no retry would ever stop its prompt: the restarted worker's
    first job queued behind a minute of sampling for no one and failed "timed out" (JOB_TIMEOUT_S 20)."""
    cancelled, orphan = await killed_mid_sampling(leased_qm, comfy, start_worker, workflows, "w1")
    leased_qm.store.cancel(cancelled.id)
    job = leased_qm.store.submit("alice", workflows["quick"])

    again = await start_worker("w1", JOB_TIMEOUT_S="20")
    try:
        await wait_for(lambda: leased_qm.reports.landed(job.id), timeout=40)
    finally:
        again.send_signal(signal.SIGTERM)
        assert await again.wait() == 0
    assert leased_qm.reports.landed(job.id)[0].endpoint == "complete-job"
    assert [(i.body, i.honoured) for i in comfy.interrupts_received] == [({"prompt_id": orphan}, True)]


async def comfy_post_prompt(comfy: ComfyUISimulator, workflow: dict[str, Any], extra_data: dict[str, Any]) -> str:
    import httpx

    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{comfy.url}/prompt", json={"prompt": workflow, "extra_data": extra_data})
    answer.raise_for_status()
    return answer.json()["prompt_id"]


async def comfy_ran(comfy: ComfyUISimulator, prompt_id: str) -> bool:
    import httpx

    async with httpx.AsyncClient() as client:
        return bool((await client.get(f"{comfy.url}/history/{prompt_id}")).json())


async def comfy_queue_ids(comfy: ComfyUISimulator) -> set[str]:
    import httpx

    async with httpx.AsyncClient() as client:
        queue = (await client.get(f"{comfy.url}/queue")).json()
    return {item[1] for item in queue["queue_running"] + queue["queue_pending"]}


def test_an_outputs_path_the_worker_cannot_enter_is_a_warning_at_start_not_a_crash(tmp_path: Path):
    """Before: the start-up sweep's first look at OUTPUTS_PATH/.partial raised PermissionError out of the
    worker's start."""
    import json
    import tempfile

    from tests.conftest import run_as_nobody
    from worker.outputs import remove_abandoned_deliveries

    if os.getuid() != 0:
        pytest.skip("needs root, to run the sweep as another user")
    with tempfile.TemporaryDirectory(prefix="outputs-") as name:
        outputs = Path(name) / "outputs"
        (outputs / ".partial").mkdir(parents=True)
        outputs.chmod(0o700)  # root's: nobody cannot enter it
        os.chmod(name, 0o755)

        def sweep() -> str:
            try:
                return json.dumps(remove_abandoned_deliveries(outputs).errors)
            except OSError as exc:
                return f"raised {type(exc).__name__}"

        assert run_as_nobody(sweep) == json.dumps([f"{outputs / '.partial'}: Permission denied"])


async def test_a_long_lived_worker_removes_a_delivery_abandoned_after_its_own_start(
    monkeypatch, tmp_path: Path, workflows
):
    """A replica killed mid-delivery just after this worker started left a staging folder too young to go at
    this worker's start; a worker that then lives for days removed it only at its next start."""
    import worker.outputs
    from tests.worker.conftest import HEALTHY_TIMINGS
    from worker.config import load_settings
    from worker.main import Worker

    monkeypatch.setattr(worker.outputs, "STALE_STAGING_S", 0.5)  # an hour, made short
    async with QueueManagerServer(test_hooks=True) as qm:
        sim = ComfyUISimulator(tmp_path / "comfy-output", tmp_path / "comfy-temp")
        await sim.start()
        try:
            settings = load_settings(
                queue_manager_url=str(qm.url), comfyui_url=sim.url, outputs_path=tmp_path / "outputs",
                poll_interval_s=0.05, health_port=0, worker_id="long-lived",
            )  # fmt: skip
            running = Worker(settings, timings=HEALTHY_TIMINGS)
            run = asyncio.create_task(running.run())
            await wait_for(lambda: running.state.consecutive_idle_polls > 0)  # started, swept, polling
            orphan = tmp_path / "outputs" / ".partial" / "alice.job-1.killed"
            orphan.mkdir(parents=True)
            (orphan / "ComfyUI_00001_.png").write_bytes(b"half")
            await wait_for(lambda: not orphan.exists(), timeout=5)
            running.request_shutdown()
            assert await run == 0
        finally:
            await sim.stop()


def result_then_slow_result() -> dict[str, Any]:
    """A result and a preview at once, then an ImageBlur (to freeze) and a second result."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "first"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "second"}},
    }


async def comfy_history(comfy: ComfyUISimulator) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient() as client:
        return (await client.get(f"{comfy.url}/history")).json()


def named_files(entry: dict[str, Any]) -> list[str]:
    return sorted(f"{item['type']}/{item['filename']}" for node in entry["outputs"].values() for item in node["images"])


def comfy_files(comfy: ComfyUISimulator) -> list[str]:
    return sorted(
        f"{kind}/{name}" for kind, folder in (("output", comfy.output_dir), ("temp", comfy.temp_dir))
        for name in files_under(folder)
    )  # fmt: skip


async def killed_with_a_result_on_disk(leased_qm, comfy, start_worker) -> tuple[Any, str]:
    """A job whose worker "w1" is SIGKILLed with its prompt frozen after its first result and preview are on disk."""
    comfy.freeze(class_type="ImageBlur")
    job = leased_qm.store.submit("alice", result_then_slow_result())
    worker = await start_worker("w1", COMFYUI_TEMP_DIR=str(comfy.temp_dir))
    await comfy.wait_until_frozen()
    orphan = comfy.running_prompt_id
    worker.kill()
    await worker.wait()
    return job, orphan


async def assert_only_the_jobs_prompt_and_results_stay(leased_qm, comfy, job_id: str) -> None:
    """The job completed; of ComfyUI's history only its prompt's entry stays, and of the files only its results,
    which that entry names for ComfyUI's cache to replay."""
    [report] = leased_qm.reports.landed(job_id)
    assert report.endpoint == "complete-job", report.body
    assert set(await comfy_history(comfy)) == {report.body["result"]["prompt_id"]}
    kept = sorted(f"output/{Path(item['path']).name}" for item in report.body["result"]["outputs"])
    assert comfy_files(comfy) == kept


async def interrupt_then_tidy(worker, leased_qm, comfy, job_id: str, orphan: str) -> None:
    """The worker interrupts the prompt left running (frozen at its slow node), runs the job and tidies the left
    prompt once it is over; then it is stopped and must exit 0."""
    try:
        await wait_for(lambda: comfy.interrupts_received)
        comfy.release()  # the interrupt lands at the next node
        await wait_for(lambda: leased_qm.reports.landed(job_id), timeout=20)
        await wait_for(lambda: orphan in comfy.history_deletes)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0


async def test_a_restarted_worker_tidies_the_history_and_files_of_the_prompt_its_killed_run_left_running(
    leased_qm, comfy, start_worker, workflows
):
    """Before: the killed run's prompt, interrupted at the restart, stayed in ComfyUI's history (with its whole
    workflow) and its result and preview stayed on ComfyUI's disk for good (bench/soak.py: 22-28 files per ComfyUI
    in 3 minutes)."""
    killed_job, orphan = await killed_with_a_result_on_disk(leased_qm, comfy, start_worker)
    [result, preview] = comfy_files(comfy)
    assert result == "output/first_00001_.png" and preview.startswith("temp/ComfyUI_temp_")
    leased_qm.store.cancel(killed_job.id)
    job = leased_qm.store.submit("alice", workflows["quick"])

    again = await start_worker("w1", COMFYUI_TEMP_DIR=str(comfy.temp_dir))
    await interrupt_then_tidy(again, leased_qm, comfy, job.id, orphan)
    await assert_only_the_jobs_prompt_and_results_stay(leased_qm, comfy, job.id)


async def test_a_restarted_worker_tidies_the_history_and_files_of_a_prompt_its_killed_run_saw_finish(
    leased_qm, comfy, start_worker, workflows, tmp_path: Path
):
    """Killed after its prompt finished, before the report (and so before the tidy): the entry and files stayed."""
    job = leased_qm.store.submit("alice", workflows["quick"])
    leased_qm.faults.inject("complete-job", delay_s=5, drop=True)
    first = await start_worker("w1", COMFYUI_TEMP_DIR=str(comfy.temp_dir))
    await kill_between_delivery_and_report(leased_qm, comfy, tmp_path / "outputs", job.id)
    [orphan] = (await comfy_history(comfy)).keys()
    first.kill()
    await first.wait()
    left = named_files((await comfy_history(comfy))[orphan])
    assert comfy_files(comfy) == left and len(left) == 4  # two results and two previews

    again = await start_worker("w1", COMFYUI_TEMP_DIR=str(comfy.temp_dir))  # the retry, attempt 2, comes here
    try:
        await wait_for(lambda: leased_qm.reports.landed(job.id), timeout=20)
        await wait_for(lambda: orphan in comfy.history_deletes)  # once the retry succeeded
    finally:
        again.send_signal(signal.SIGTERM)
        assert await again.wait() == 0
    [report] = leased_qm.reports.landed(job.id)
    assert comfy.history_deletes == [orphan]
    assert set(await comfy_history(comfy)) == {report.body["result"]["prompt_id"]}
    kept = sorted(f"output/{Path(item['path']).name}" for item in report.body["result"]["outputs"])
    assert comfy_files(comfy) == kept and not set(kept) & set(left)


async def test_a_retry_on_another_worker_tidies_the_prompt_its_killed_attempt_left_running(
    leased_qm, comfy, start_worker
):
    """Two workers share one ComfyUI. Before: the retry interrupted the killed attempt's prompt, but its history
    entry (with its whole workflow) and its result and preview stayed in ComfyUI for good: only a restart with the
    killed worker's WORKER_ID looks for them, and it may never come (another replica, a new id at every start)."""
    job, orphan = await killed_with_a_result_on_disk(leased_qm, comfy, start_worker)
    assert len(comfy_files(comfy)) == 2

    second = await start_worker("w2", COMFYUI_TEMP_DIR=str(comfy.temp_dir))  # the retry, attempt 2, comes here
    await interrupt_then_tidy(second, leased_qm, comfy, job.id, orphan)
    await assert_only_the_jobs_prompt_and_results_stay(leased_qm, comfy, job.id)
    assert leased_qm.store.get(job.id).attempt == 2
