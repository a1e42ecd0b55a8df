"""After each prompt the worker tidies ComfyUI: its history entry is deleted, and its files leave ComfyUI's output
and temp folders (a result file once ComfyUI's cache can no longer name it again; the latest success's entry with
it, so a restart finds their names). Against the stand-in ComfyUI and the embedded queue manager on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from queue_manager.server import QueueManagerServer
from standins.comfyui import ComfyUISimulator
from standins.comfyui_nodes import NodeResult, png_bytes
from worker.housekeeping import caches_earlier_prompts, execution_start
from worker.main import HOUSEKEEPING_WAIT_S

from .conftest import HEALTHY_WITHIN_S


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def quick(workflows, color: int) -> dict[str, Any]:
    """The quick workflow (a result and a preview) making an image of its own: no output replayed from cache."""
    workflow = copy.deepcopy(workflows["quick"])
    workflow["1"]["inputs"]["color"] = color
    return workflow


def saves_then_fails() -> dict[str, Any]:
    """A result is saved, then another branch fails: ComfyUI lists the saved file in the failed prompt's history."""
    return {
        "10": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}},
        "20": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "before-error/x"}},
        "30": {"class_type": "ImageInvert", "inputs": {"image": ["10", 0]}},
        "40": {"class_type": "PreviewImage", "inputs": {"images": ["30", 0]}},
    }


async def history(comfy: ComfyUISimulator) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=comfy.url) as client:
        return (await client.get("/history")).json()


async def interrupt_when_running(comfy: ComfyUISimulator) -> None:
    """Someone else (ComfyUI's UI) interrupts the prompt once it runs its slow node."""
    await comfy.wait_until_frozen()
    async with httpx.AsyncClient(base_url=comfy.url) as client:
        await client.post("/interrupt", json={})
    comfy.release()


def prompt_of(qm, job_id: str) -> str:
    [report] = qm.reports.landed(job_id)
    return report.body["result"]["prompt_id"]


def delivered(qm, job_id: str, outputs: Path) -> list[tuple[Path, str]]:
    [report] = qm.reports.landed(job_id)
    assert report.endpoint == "complete-job", report.body
    return [(outputs / f["path"], f["sha256"]) for f in report.body["result"]["outputs"]]


async def test_comfyui_keeps_no_history_and_no_files_of_finished_jobs(qm, comfy, make_worker, workflows, tmp_path):
    comfy.inject_error("out of coffee", node_id="30")
    comfy.freeze(class_type="ImageBlur")
    jobs = [
        qm.store.submit("alice", quick(workflows, 1)),
        qm.store.submit("bob", saves_then_fails()),  # error, after saving a result and before its preview
        qm.store.submit("alice", workflows["slow"]),  # interrupted by someone else
        qm.store.submit("carol", quick(workflows, 2)),
    ]
    worker = make_worker(comfyui_output_dir=comfy.output_dir, comfyui_temp_dir=comfy.temp_dir)
    interrupter = asyncio.create_task(interrupt_when_running(comfy))
    assert await asyncio.wait_for(worker.run(), 20) == 0
    await interrupter
    statuses = [qm.store.get(job.id).status for job in jobs]
    assert statuses == ["completed", "failed", "failed", "completed"]
    assert "interrupted by someone else" in qm.reports.landed(jobs[2].id)[0].body["error"]

    assert set(await history(comfy)) == {prompt_of(qm, jobs[3].id)}, (
        "every finished prompt's history entry is deleted but the last success's, which names the files kept"
    )
    outputs = tmp_path / "outputs"
    for job in (jobs[0], jobs[3]):
        for path, sha256 in delivered(qm, job.id, outputs):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    # Only the last success's results stay, for ComfyUI's cache may name them again in the next prompt.
    last = {path.name for path, _ in delivered(qm, jobs[3].id, outputs)}
    assert files_under(comfy.output_dir) == last
    assert not (comfy.output_dir / "before-error").exists(), "the subfolder it left empty is removed too"
    assert files_under(comfy.temp_dir) == set()


async def test_a_prompt_replaying_the_previous_ones_results_is_still_delivered(qm, comfy, make_worker, workflows):
    """ComfyUI caches output nodes: the same SaveImage inputs again name the files of the prompt before, so those
    may not be deleted yet; a different prompt's success frees them."""
    same = [qm.store.submit("alice", quick(workflows, 5)) for _ in range(2)]
    other = qm.store.submit("alice", quick(workflows, 6))
    worker = make_worker(comfyui_output_dir=comfy.output_dir, comfyui_temp_dir=comfy.temp_dir)
    assert await asyncio.wait_for(worker.run(), 20) == 0
    [first, second] = [[f["path"].rsplit("/", 1)[1] for f in qm.reports.landed(j.id)[0].body["result"]["outputs"]]
                       for j in same]  # fmt: skip
    assert first == second, "the second run replayed the first's files from ComfyUI's cache"
    assert qm.store.get(other.id).status == "completed"
    assert files_under(comfy.output_dir).isdisjoint(first)
    assert set(await history(comfy)) == {prompt_of(qm, other.id)}


async def test_the_warm_up_prompt_leaves_nothing_in_comfyui(qm, comfy, make_worker, workflows, tmp_path):
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps(workflows["quick"]))
    worker = make_worker(warmup_workflow=warmup, comfyui_temp_dir=comfy.temp_dir)
    assert await asyncio.wait_for(worker.run(), 20) == 0
    assert len(comfy.history_deletes) == 1 and await history(comfy) == {}
    assert files_under(comfy.temp_dir) == set()


@pytest.mark.parametrize("how", ["500", "hang"])
async def test_comfyui_failing_the_history_delete_changes_no_report_and_holds_the_worker_briefly(
    qm, comfy, make_worker, workflows, how
):
    comfy.break_history_posts(status=500) if how == "500" else comfy.break_history_posts(hang=True)
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(serverless_job_limit=1, http_timeout_s=30)
    with capture_logs() as logs:
        run = asyncio.create_task(worker.run())
        async with asyncio.timeout(10):
            while not comfy.history_deletes:
                await asyncio.sleep(0.005)
        asked_at = time.monotonic()
        assert qm.store.get(job.id).status == "completed", "the report goes first: the user waits for it"
        assert await asyncio.wait_for(run, 10) == 0
    assert time.monotonic() - asked_at < HOUSEKEEPING_WAIT_S + 5, "held HOUSEKEEPING_WAIT_S, not HTTP_TIMEOUT_S"
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"
    assert list(await history(comfy)) == comfy.history_deletes, "nothing was deleted: the entry stays"
    [warning] = [e for e in logs if e["event"].startswith("Could not delete the prompt from ComfyUI's history")]
    assert warning["log_level"] == "warning" and warning["prompt_id"] == comfy.history_deletes[0]


def hostile_when_prefixed(comfy, ui) -> None:
    """SaveImage with filename_prefix "evil" becomes a custom node naming what it likes in the history."""
    node = comfy.catalogue["SaveImage"]

    def run(inputs, env):
        return NodeResult((), ui(env)) if inputs["filename_prefix"] == "evil" else node.run(inputs, env)

    comfy.catalogue["SaveImage"] = replace(node, run=run)


def evil(workflows, color: int) -> dict[str, Any]:
    workflow = quick(workflows, color)
    workflow["3"]["inputs"]["filename_prefix"] = "evil"
    return workflow


def name_files_out_of_comfyuis_folders(comfy, tmp_path: Path) -> Path:
    """Every prompt ComfyUI runs names files that climb (``..``) or link (symlinks) out of its folders, into the
    folder returned, and beside its output folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("x", "victim.png", "leak.png"):
        (outside / name).write_text("not ComfyUI's")
    for folder in (comfy.output_dir, comfy.temp_dir):
        (folder / "escape").symlink_to(outside, target_is_directory=True)
        (folder / "leak.png").symlink_to(outside / "leak.png")
    (comfy.output_dir.parent / "x").write_text("beside ComfyUI's output folder")
    named = [("..", "x"), ("escape", "victim.png"), ("", "leak.png")]
    hostile_when_prefixed(comfy, lambda _env: {"images": [
        {"filename": name, "subfolder": sub, "type": kind} for sub, name in named for kind in ("output", "temp")
    ]})  # fmt: skip
    return outside


def assert_nothing_outside_touched(comfy, outside: Path) -> None:
    assert files_under(outside) == {"x", "victim.png", "leak.png"}
    assert all((outside / name).read_text() == "not ComfyUI's" for name in ("x", "victim.png", "leak.png"))
    assert (comfy.output_dir.parent / "x").read_text() == "beside ComfyUI's output folder"
    for folder in (comfy.output_dir, comfy.temp_dir):
        assert (folder / "escape").is_symlink() and (folder / "leak.png").is_symlink()


async def test_names_that_climb_or_link_out_of_comfyuis_folders_delete_nothing_outside(
    qm, comfy, make_worker, workflows, tmp_path
):
    outside = name_files_out_of_comfyuis_folders(comfy, tmp_path)
    bad = qm.store.submit("mallory", evil(workflows, 1))
    good = qm.store.submit("alice", quick(workflows, 2))  # its success frees the names the first prompt listed
    worker = make_worker(comfyui_output_dir=comfy.output_dir, comfyui_temp_dir=comfy.temp_dir)
    assert await asyncio.wait_for(worker.run(), 20) == 0
    assert [qm.store.get(job.id).status for job in (bad, good)] == ["failed", "completed"]
    assert len(comfy.history_deletes) == 1 and set(await history(comfy)) == {prompt_of(qm, good.id)}
    assert_nothing_outside_touched(comfy, outside)


async def test_comfyuis_output_folder_above_outputs_path_never_loses_a_delivered_result(
    qm, make_worker, workflows, tmp_path
):
    data = tmp_path / "data"
    outputs = data / "outputs"
    async with ComfyUISimulator(data, tmp_path / "temp") as sim:
        first = qm.store.submit("alice", quick(workflows, 1))

        def name_the_first_result(_env):  # a custom node naming a delivered result: in ComfyUI's folder too
            path = next(p for p, _ in delivered(qm, first.id, outputs) if p.name.startswith("quick"))
            return {"images": [{"filename": path.name, "subfolder": path.parent.relative_to(data).as_posix(),
                                "type": "output"}]}  # fmt: skip

        hostile_when_prefixed(sim, name_the_first_result)
        second = qm.store.submit("mallory", evil(workflows, 2))
        third = qm.store.submit("alice", quick(workflows, 3))  # its success frees the names the second listed
        worker = make_worker(comfyui_url=sim.url, comfyui_output_dir=data, outputs_path=outputs)
        assert await asyncio.wait_for(worker.run(), 20) == 0
    assert [qm.store.get(job.id).status for job in (first, second, third)] == ["completed"] * 3
    for job in (first, second, third):
        for path, sha256 in delivered(qm, job.id, outputs):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, "a delivered result is never deleted"
    third_names = {p.name for p, _ in delivered(qm, third.id, outputs)}
    assert {p.name for p in data.glob("quick_*.png")} == third_names, "ComfyUI's own copies of the first go"


@pytest.mark.parametrize("where", ["same", "inside"])
async def test_comfyuis_output_folder_at_or_inside_outputs_path_is_never_tidied(
    qm, make_worker, workflows, tmp_path, where
):
    outputs = tmp_path / "outputs"
    comfy_out = outputs if where == "same" else outputs / "comfyui"
    async with ComfyUISimulator(comfy_out, tmp_path / "temp") as sim:
        jobs = [qm.store.submit("alice", quick(workflows, color)) for color in (1, 2)]
        with capture_logs() as logs:
            worker = make_worker(comfyui_url=sim.url, comfyui_output_dir=comfy_out, outputs_path=outputs)
            assert await asyncio.wait_for(worker.run(), 20) == 0
    [warning] = [e for e in logs if e["event"].startswith("COMFYUI_OUTPUT_DIR is OUTPUTS_PATH or inside it")]
    assert warning["COMFYUI_OUTPUT_DIR"] == str(comfy_out) and warning["OUTPUTS_PATH"] == str(outputs)
    for job in jobs:
        for path, sha256 in delivered(qm, job.id, outputs):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    assert len([p for p in comfy_out.glob("quick_*.png")]) == 4, "ComfyUI's own files are left where they are"


async def test_a_comfyui_caching_earlier_prompts_keeps_its_result_files(qm, make_worker, workflows, tmp_path):
    async with ComfyUISimulator(tmp_path / "out", tmp_path / "temp", argv=["main.py", "--cache-lru", "50"]) as sim:
        jobs = [qm.store.submit("alice", quick(workflows, color)) for color in (1, 2, 3)]
        worker = make_worker(comfyui_url=sim.url, comfyui_output_dir=sim.output_dir, comfyui_temp_dir=sim.temp_dir)
        assert await asyncio.wait_for(worker.run(), 20) == 0
        assert await history(sim) == {}
    assert all(qm.store.get(job.id).status == "completed" for job in jobs)
    assert len(files_under(sim.output_dir)) == 6, "any of them may be replayed: none deleted"
    assert files_under(sim.temp_dir) == set()


@pytest.mark.parametrize(
    ("argv", "caches"),
    [
        (["main.py"], False),
        (["main.py", "--cache-lru", "10"], True),
        (["main.py", "--cache-lru=0"], False),
        (["main.py", "--cache-ram"], True),
        (["main.py", "--cache-ram", "--listen"], True),
        (["main.py", "--cache-ram", "0"], False),
        (["main.py", "--cache-l", "5"], True),
        (["main.py", "--cache-none", "--cache-classic"], False),
        ("main.py --cache-lru 3", None),
        (None, None),
    ],
)
def test_which_comfyui_arguments_cache_earlier_prompts(argv, caches):
    assert caches_earlier_prompts(argv) is caches


def save_eight_files_a_run(comfy) -> None:
    """Every SaveImage of the stand-in writes eight results, named by its run: run<N>_0.png … run<N>_7.png."""
    save = comfy.catalogue["SaveImage"]
    runs: list[int] = []

    def eight_files(_inputs, env) -> NodeResult:
        runs.append(1)
        names = [f"run{len(runs)}_{index}.png" for index in range(8)]
        for name in names:
            (env.output_dir / name).write_bytes(b"png")
        return NodeResult((), {"images": [{"filename": n, "subfolder": "", "type": "output"} for n in names]})

    comfy.catalogue["SaveImage"] = replace(save, run=eight_files)


async def test_failed_prompts_in_a_row_keep_at_most_max_job_output_files_for_a_replay(
    qm, comfy, make_worker, workflows
):
    """Each failed prompt's results were kept (their names in memory, the files on disk) until the next success,
    however many: a run of failing jobs naming thousands of files each grew the worker without bound."""
    save_eight_files_a_run(comfy)
    comfy.inject_error("out of coffee", node_id="30", prompts=3)
    jobs = []
    for color in range(3):  # each its own image: nothing replayed from ComfyUI's cache
        workflow = saves_then_fails()
        workflow["10"]["inputs"]["color"] = color
        jobs.append(qm.store.submit("bob", workflow))
    worker = make_worker(comfyui_output_dir=comfy.output_dir, max_job_output_files=10)
    assert await asyncio.wait_for(worker.run(), 20) == 0
    assert [qm.store.get(job.id).status for job in jobs] == ["failed"] * 3
    assert files_under(comfy.output_dir) == {f"run3_{index}.png" for index in range(8)}, (
        "16 names are more than a job may deliver: the earlier prompt's files went"
    )


async def test_the_kept_success_entry_goes_with_its_files_when_failed_prompts_push_them_out(
    qm, comfy, make_worker, workflows
):
    """A prompt's history entry stays only as long as its result files are kept for a replay: failed prompts
    naming more than MAX_JOB_OUTPUT_FILES since push the success's files out, and the entry naming them goes."""
    save_eight_files_a_run(comfy)
    success = qm.store.submit("alice", quick(workflows, 1))
    comfy.inject_error("out of coffee", node_id="30")
    failed = qm.store.submit("bob", saves_then_fails())
    worker = make_worker(comfyui_output_dir=comfy.output_dir, max_job_output_files=10)
    assert await asyncio.wait_for(worker.run(), 20) == 0
    assert [qm.store.get(job.id).status for job in (success, failed)] == ["completed", "failed"]
    assert files_under(comfy.output_dir) == {f"run2_{index}.png" for index in range(8)}
    [left] = (await history(comfy)).values()
    assert left["status"]["status_str"] == "error", "the failed prompt's entry names its files; none names files gone"


async def test_failed_prompts_in_a_row_keep_at_most_kept_history_entries(qm, comfy, make_worker):
    """Each failed prompt whose result files are kept keeps its history entry (its whole workflow) until the next
    success: bounded, or a run of failures would fill ComfyUI's memory as the history did before housekeeping."""
    from worker.housekeeping import KEPT_HISTORY_ENTRIES

    failures = KEPT_HISTORY_ENTRIES + 2
    comfy.inject_error("out of coffee", node_id="30", prompts=failures)
    for color in range(failures):  # each its own image: nothing replayed from ComfyUI's cache
        workflow = saves_then_fails()
        workflow["10"]["inputs"]["color"] = color
        qm.store.submit("bob", workflow)
    assert await asyncio.wait_for(make_worker(comfyui_output_dir=comfy.output_dir).run(), 30) == 0
    assert len(await history(comfy)) == KEPT_HISTORY_ENTRIES
    assert len(files_under(comfy.output_dir)) == failures, "the files stay: the worker still knows their names"


async def test_a_prompt_naming_more_files_than_a_job_may_deliver_has_them_deleted_at_once(
    qm, comfy, make_worker, workflows
):
    save = comfy.catalogue["SaveImage"]

    def thirty_files(_inputs, env) -> NodeResult:
        names = [f"frame_{index}.png" for index in range(30)]
        for name in names:
            (env.output_dir / name).write_bytes(b"png")
        return NodeResult((), {"images": [{"filename": n, "subfolder": "", "type": "output"} for n in names]})

    comfy.catalogue["SaveImage"] = replace(save, run=thirty_files)
    job = qm.store.submit("bob", quick(workflows, 3))
    assert await make_worker(comfyui_output_dir=comfy.output_dir, max_job_output_files=10).run() == 0
    assert "MAX_JOB_OUTPUT_FILES" in qm.reports.landed(job.id)[0].body["error"]
    assert files_under(comfy.output_dir) == set(), "no job could ever deliver them: nothing is kept for a replay"


async def test_a_failed_prompt_naming_the_folder_itself_as_an_output_leaves_the_worker_running(
    qm, comfy, make_worker, workflows
):
    """filename "." (the folder itself) made the name check call max() on no parts: a ValueError out of the
    tidying after a failed prompt, which ended the worker."""
    folder_itself = {"images": [{"filename": ".", "subfolder": "", "type": "output"}]}
    save = comfy.catalogue["SaveImage"]
    comfy.catalogue["SaveImage"] = replace(save, run=lambda _inputs, _env: NodeResult((), folder_itself))
    comfy.inject_error("out of coffee", node_id="30")
    failing, next_one = qm.store.submit("bob", saves_then_fails()), qm.store.submit("bob", quick(workflows, 5))
    assert await asyncio.wait_for(make_worker(comfyui_output_dir=comfy.output_dir).run(), 20) == 0
    assert qm.store.get(failing.id).status == "failed"
    assert qm.store.get(next_one.id).status == "failed", "the next job ran (its SaveImage names '.' too)"


def saves_around_a_slow_node(color: int) -> dict[str, Any]:
    """A result and a preview, and a slow node (ImageBlur) before the second result: a prompt cancelled there has
    left files and will leave a history entry."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "early"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "late"}},
    }


@contextlib.asynccontextmanager
async def leased_queue_and_worker(comfy, make_worker):
    """A queue manager that leases its jobs (the worker hears of a cancel through its heartbeat) and a worker on it
    that tidies the stand-in's folders and takes any number of jobs."""
    async with QueueManagerServer(lease_timeout_s=30, test_hooks=True) as qm:
        yield qm, make_worker(
            queue_manager_url=qm.url, lease_heartbeat_s=0.2, serverless_max_idle_polls=1_000_000,
            comfyui_output_dir=comfy.output_dir, comfyui_temp_dir=comfy.temp_dir,
        )  # fmt: skip


async def test_jobs_cancelled_while_they_run_leave_nothing_in_comfyui(comfy, make_worker, workflows):
    """A running job cancelled in the queue (or taken back by its lease) is abandoned: its prompt is interrupted.
    ComfyUI still writes the interrupted prompt's history entry (its whole workflow) and keeps the files the nodes
    before the interrupt made. Before, an abandoned job was never tidied: each cancel left one entry in ComfyUI's
    memory and its files on the replica's disk, for the replica's whole life."""
    async with leased_queue_and_worker(comfy, make_worker) as (qm, worker):
        run = asyncio.create_task(worker.run())
        cancels = 4
        for done in range(1, cancels + 1):
            comfy.freeze(class_type="ImageBlur")
            job = qm.store.submit("alice", saves_around_a_slow_node(color=done))
            await asyncio.wait_for(comfy.wait_until_frozen(), 10)
            assert qm.store.cancel(job.id) == "running"
            comfy.release()
            async with asyncio.timeout(10):
                while worker.state.jobs_abandoned < done or worker.state.current_job_id is not None:
                    await asyncio.sleep(0.01)
        last = qm.store.submit("alice", quick(workflows, 3))  # a success frees the results of earlier prompts
        async with asyncio.timeout(10):
            while qm.store.get(last.id).status != "completed" or worker.state.current_job_id is not None:
                await asyncio.sleep(0.01)
        worker.request_shutdown()
        assert await asyncio.wait_for(run, 20) == 0
        kept = {path.name for path, _ in delivered(qm, last.id, Path("."))}
    assert len(comfy.prompts_received) == cancels + 1
    assert set(await history(comfy)) == {prompt_of(qm, last.id)}, "each cancelled prompt's history entry is deleted"
    assert files_under(comfy.output_dir) == kept, "only the last success's results stay"
    assert files_under(comfy.temp_dir) == set()


async def test_a_restart_tidies_its_killed_runs_prompts_only_and_nothing_outside_comfyuis_folders(
    qm, comfy, make_worker, workflows, tmp_path
):
    """What a killed run of this WORKER_ID left in ComfyUI's history goes at the restart, through the same checks as
    any prompt's files: names that climb or link out of ComfyUI's folders delete nothing; another worker's prompt
    sharing the ComfyUI is left alone."""
    from worker.comfyui import WORKER_ID_KEY

    outside = name_files_out_of_comfyuis_folders(comfy, tmp_path)
    async with httpx.AsyncClient(base_url=comfy.url) as client:
        mine, theirs = [
            (await client.post("/prompt", json={"prompt": workflow, "extra_data": {WORKER_ID_KEY: worker_id}})).json()[
                "prompt_id"
            ]
            for workflow, worker_id in ((evil(workflows, 1), "w1"), (quick(workflows, 2), "w2"))
        ]
    async with asyncio.timeout(5):
        while set(await history(comfy)) != {mine, theirs}:
            await asyncio.sleep(0.01)
    their_entry = (await history(comfy))[theirs]
    their_files = {(i["type"], i["filename"]) for node in their_entry["outputs"].values() for i in node["images"]}
    assert len(their_files) == 4  # two results, two previews
    job = qm.store.submit("alice", quick(workflows, 3))  # its success frees the result names the killed run left

    worker = make_worker(worker_id="w1", comfyui_output_dir=comfy.output_dir, comfyui_temp_dir=comfy.temp_dir)
    assert await asyncio.wait_for(worker.run(), 20) == 0
    assert qm.store.get(job.id).status == "completed"
    assert comfy.history_deletes[0] == mine and theirs not in comfy.history_deletes
    assert set(await history(comfy)) == {theirs, prompt_of(qm, job.id)}
    assert_nothing_outside_touched(comfy, outside)
    folders = {"output": comfy.output_dir, "temp": comfy.temp_dir}
    left = {(kind, name) for kind, folder in folders.items() for name in files_under(folder)}
    assert their_files <= left, "the other worker's files are not touched"


async def test_a_restart_frees_the_result_files_its_earlier_run_kept_for_a_replay(qm, comfy, make_worker, workflows):
    """A run keeps its last success's result files for a replay by ComfyUI's cache. Before: their names were in
    its memory alone (the history entry naming them was deleted), so once it was killed they stayed on ComfyUI's
    disk for good (bench/soak.py --fixed-worker-ids: 21 and 17 files per ComfyUI after 3 minutes, one or two a
    restart). Now that entry stays until a later success; the restart finds it, and keeps the files as long as
    the cache may name them: here the restart's first prompt is the same one, answered from the cache."""
    earlier = qm.store.submit("alice", quick(workflows, 1))
    folders = {"comfyui_output_dir": comfy.output_dir, "comfyui_temp_dir": comfy.temp_dir}
    assert await asyncio.wait_for(make_worker(worker_id="w1", **folders).run(), 20) == 0  # it stops as if killed
    kept = files_under(comfy.output_dir)
    assert len(kept) == 2 and set(await history(comfy)) == {prompt_of(qm, earlier.id)}

    replay = qm.store.submit("alice", quick(workflows, 1))
    later = qm.store.submit("alice", quick(workflows, 2))
    assert await asyncio.wait_for(make_worker(worker_id="w1", **folders).run(), 20) == 0
    outputs = Path(".")
    replayed = delivered(qm, replay.id, outputs)
    assert {path.name for path, _ in replayed} == kept, "ComfyUI's cache named the earlier run's files: still there"
    assert qm.store.get(later.id).status == "completed"
    assert files_under(comfy.output_dir) == {path.name for path, _ in delivered(qm, later.id, outputs)}
    assert set(await history(comfy)) == {prompt_of(qm, later.id)}


async def test_a_restart_frees_the_result_files_of_its_earlier_runs_failed_prompt(qm, comfy, make_worker, workflows):
    """A failed (or interrupted, or abandoned) prompt's result files are kept for a replay until a success too.
    Before, its entry was deleted at once: a run killed before its next success left them for good."""
    comfy.inject_error("out of coffee", node_id="30")
    failed = qm.store.submit("bob", saves_then_fails())
    folders = {"comfyui_output_dir": comfy.output_dir, "comfyui_temp_dir": comfy.temp_dir}
    assert await asyncio.wait_for(make_worker(worker_id="w1", **folders).run(), 20) == 0  # it stops as if killed
    assert qm.store.get(failed.id).status == "failed"
    assert len(files_under(comfy.output_dir)) == 1 and len(await history(comfy)) == 1

    later = qm.store.submit("alice", quick(workflows, 2))
    assert await asyncio.wait_for(make_worker(worker_id="w1", **folders).run(), 20) == 0
    assert files_under(comfy.output_dir) == {path.name for path, _ in delivered(qm, later.id, Path("."))}
    assert set(await history(comfy)) == {prompt_of(qm, later.id)}


async def crash_and_restart(comfy: ComfyUISimulator) -> None:
    """ComfyUI dies and its supervisor starts it again on the same port: its queue, history and cache are gone."""
    await comfy.crash()
    await comfy.start(port=comfy.port)


async def until(predicate, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_the_files_of_a_prompt_lost_with_a_crashed_comfyui_go_once_it_is_seen_restarted(
    qm, comfy, make_worker, workflows
):
    """ComfyUI dies mid-prompt and is restarted: the prompt, its history entry and ComfyUI's cache are gone, but
    the result and preview it wrote before are on ComfyUI's disk. Before, nothing named them any more and they
    stayed for the replica's life (bench/soak.py: 6 + 5 files on two ComfyUIs after 4 crashes). The worker saw
    their names in the prompt's `executed` events; the next prompt's number (ComfyUI counts from 0 at its start)
    shows the restart, and they go after that job's report."""
    worker = make_worker(
        serverless_max_idle_polls=1_000_000, comfyui_output_dir=comfy.output_dir, comfyui_temp_dir=comfy.temp_dir
    )
    with capture_logs() as logs:
        run = asyncio.create_task(worker.run())
        comfy.freeze(class_type="ImageBlur")
        qm.store.submit("alice", saves_around_a_slow_node(color=1))
        await asyncio.wait_for(comfy.wait_until_frozen(), 10)
        assert len(files_under(comfy.output_dir)) == len(files_under(comfy.temp_dir)) == 1  # result and preview
        await crash_and_restart(comfy)
        comfy.release()
        await until(lambda: worker.state.jobs_handed_back == 1)
        later = qm.store.submit("bob", quick(workflows, 2))
        await until(lambda: qm.reports.landed(later.id) and worker.state.current_job_id is None)
        worker.request_shutdown()
        assert await asyncio.wait_for(run, 20) == 0
    assert qm.store.get(later.id).status == "completed"
    assert files_under(comfy.output_dir) == {path.name for path, _ in delivered(qm, later.id, Path("."))}
    assert files_under(comfy.temp_dir) == set()
    [restarted] = [e for e in logs if e["event"].startswith("ComfyUI restarted since this worker's previous prompt")]
    assert restarted["files"] == 2


async def test_the_files_of_a_job_cancelled_while_comfyui_was_down_go_once_it_is_seen_restarted(
    comfy, make_worker, workflows
):
    """The case bench/soak.py hit most: ComfyUI died in a slow prompt whose job was then cancelled. The interrupt
    found no ComfyUI, so the job was abandoned untidied, and the prompt's result and preview stayed for good."""
    async with leased_queue_and_worker(comfy, make_worker) as (qm, worker):
        run = asyncio.create_task(worker.run())
        comfy.freeze(class_type="ImageBlur")
        cancelled = qm.store.submit("alice", saves_around_a_slow_node(color=1))
        await asyncio.wait_for(comfy.wait_until_frozen(), 10)
        await comfy.crash()
        assert qm.store.cancel(cancelled.id) == "running"
        await until(lambda: worker.state.jobs_abandoned == 1)
        await comfy.start(port=comfy.port)
        comfy.release()
        later = qm.store.submit("bob", quick(workflows, 2))
        await until(lambda: qm.store.get(later.id).status == "completed" and worker.state.current_job_id is None)
        worker.request_shutdown()
        assert await asyncio.wait_for(run, 20) == 0
        kept = {path.name for path, _ in delivered(qm, later.id, Path("."))}
    assert files_under(comfy.output_dir) == kept
    assert files_under(comfy.temp_dir) == set()


async def test_the_result_files_kept_for_a_replay_go_once_comfyui_is_seen_restarted(qm, comfy, make_worker, workflows):
    """A restarted ComfyUI's cache is empty: it can name no file of a prompt before the restart again. Before, the
    result files kept for a replay stayed until this worker's next success, and, with ComfyUI's history (which named
    them for a restarted worker) gone, for good if the worker was killed first: here its next prompt fails."""
    folders = {"comfyui_output_dir": comfy.output_dir, "comfyui_temp_dir": comfy.temp_dir}
    worker = make_worker(worker_id="w1", serverless_max_idle_polls=1_000_000, **folders)
    run = asyncio.create_task(worker.run())
    before = qm.store.submit("alice", quick(workflows, 1))
    await until(lambda: qm.reports.landed(before.id) and worker.state.current_job_id is None)
    assert len(files_under(comfy.output_dir)) == 2  # its two results, kept for a replay
    await crash_and_restart(comfy)
    comfy.inject_error("out of coffee", node_id="30")
    failed = qm.store.submit("bob", saves_then_fails())
    await until(lambda: qm.reports.landed(failed.id) and worker.state.current_job_id is None)
    worker.request_shutdown()  # or killed: the next run of w1 finds the failed prompt alone in ComfyUI's history
    assert await asyncio.wait_for(run, 20) == 0
    assert qm.store.get(failed.id).status == "failed"
    assert [name.split("/")[0] for name in files_under(comfy.output_dir)] == ["before-error"], (
        "the failed prompt's result stays (the restarted ComfyUI may replay it); the success's before the restart go"
    )

    after = qm.store.submit("alice", quick(workflows, 2))
    assert await asyncio.wait_for(make_worker(worker_id="w1", **folders).run(), 20) == 0
    assert files_under(comfy.output_dir) == {path.name for path, _ in delivered(qm, after.id, Path("."))}


async def test_a_prompt_left_running_that_ignores_its_interrupt_is_tidied_once_it_ends(
    qm, comfy, make_worker, workflows
):
    """A killed run's prompt is interrupted at the restart and tidied after the run's first prompt, which ComfyUI
    runs after it. A node that ignores the interrupt holds ComfyUI's queue: the first prompt timed out queued behind
    it and never ran. Before, the killed run's prompt was looked for then, not found (not over yet) and forgotten:
    its history entry, result and preview stayed for the replica's life."""
    from worker.comfyui import WORKER_ID_KEY

    comfy.freeze(class_type="ImageBlur")  # ignores interrupts until released
    async with httpx.AsyncClient(base_url=comfy.url) as client:
        answer = await client.post(
            "/prompt", json={"prompt": saves_around_a_slow_node(color=1), "extra_data": {WORKER_ID_KEY: "w1"}}
        )
    left = answer.json()["prompt_id"]
    await asyncio.wait_for(comfy.wait_until_frozen(), 10)
    folders = {"comfyui_output_dir": comfy.output_dir, "comfyui_temp_dir": comfy.temp_dir}
    # The deadline times out the first job and must let the last, healthy one finish: 1 s did not, through a stall.
    worker = make_worker(
        worker_id="w1", job_timeout_s=HEALTHY_WITHIN_S, serverless_max_idle_polls=1_000_000, **folders
    )
    run = asyncio.create_task(worker.run())
    behind = qm.store.submit("alice", quick(workflows, 2))
    await until(lambda: qm.reports.landed(behind.id) and worker.state.current_job_id is None)
    assert "timed out" in qm.reports.landed(behind.id)[0].body["error"]
    comfy.release()  # the interrupt lands at the next node
    async with asyncio.timeout(10):
        while left not in await history(comfy):
            await asyncio.sleep(0.01)
    later = qm.store.submit("alice", quick(workflows, 3))
    await until(lambda: qm.reports.landed(later.id) and worker.state.current_job_id is None)
    worker.request_shutdown()
    assert await asyncio.wait_for(run, 20) == 0
    assert set(await history(comfy)) == {prompt_of(qm, later.id)}
    assert files_under(comfy.output_dir) == {path.name for path, _ in delivered(qm, later.id, Path("."))}
    assert files_under(comfy.temp_dir) == set()


async def test_a_temp_dir_set_to_comfyuis_temp_directory_flag_is_named_once_not_left_silent(
    qm, make_worker, workflows, tmp_path
):
    """ComfyUI writes previews to <--temp-directory>/temp. A bare worker given --temp-directory itself deleted
    nothing there, silently: 876 previews were left in the drill's folder after 600 jobs. Now it says so, once."""
    temp_directory = tmp_path / "comfy-temp-directory"  # ComfyUI's --temp-directory
    comfy = ComfyUISimulator(tmp_path / "comfy-output", temp_directory / "temp")
    await comfy.start()
    try:
        jobs = [qm.store.submit("alice", quick(workflows, color)) for color in (11, 12)]
        worker = make_worker(comfyui_url=comfy.url, comfyui_temp_dir=temp_directory)
        with capture_logs() as logs:
            assert await asyncio.wait_for(worker.run(), 20) == 0
    finally:
        await comfy.stop()
    assert [qm.store.get(job.id).status for job in jobs] == ["completed", "completed"]
    [warning] = [line for line in logs if line["event"].startswith("COMFYUI_TEMP_DIR holds none of")]
    assert warning["log_level"] == "warning"
    assert warning["COMFYUI_TEMP_DIR"] == str(temp_directory)
    assert warning["found_in"] == str(temp_directory / "temp"), "where the previews are: the value to set"
    assert len(files_under(temp_directory / "temp")) == 4, "both jobs' two previews each were left there"


@pytest.mark.parametrize("wrong", ["base directory", "typo"])
async def test_an_output_dir_that_is_not_comfyuis_output_folder_is_named_once_not_left_silent(
    qm, make_worker, workflows, tmp_path, wrong
):
    """ComfyUI writes results to its --output-directory (<base>/output by default). A worker given ComfyUI's base
    directory, or a typo, fetched each result over /view and deleted none of them, saying nothing but an info line
    per file: they piled up on ComfyUI's disk until it was full. Now it says so, once, and where they are."""
    base = tmp_path / "comfyui"  # ComfyUI's base directory
    comfy = ComfyUISimulator(base / "output", base / "temp")
    await comfy.start()
    setting = base if wrong == "base directory" else tmp_path / "comfyui-outptu"
    try:
        jobs = [qm.store.submit("alice", quick(workflows, color)) for color in (21, 22)]
        worker = make_worker(comfyui_url=comfy.url, comfyui_output_dir=setting, comfyui_temp_dir=comfy.temp_dir)
        with capture_logs() as logs:
            assert await asyncio.wait_for(worker.run(), 20) == 0
    finally:
        await comfy.stop()
    results = [path.name for job in jobs for path, _ in delivered(qm, job.id, Path("."))]
    assert len(results) == 4, "two images a job, delivered all the same, over /view"
    [warning] = [line for line in logs if line["event"].startswith("COMFYUI_OUTPUT_DIR holds none of")]
    assert warning["log_level"] == "warning"
    assert warning["COMFYUI_OUTPUT_DIR"] == str(setting)
    assert warning["file"] == results[0], "the first job's result, which the folder lacked"
    assert warning["found_in"] == (str(base / "output") if wrong == "base directory" else None)
    assert files_under(base / "output") == set(results), "both jobs' results were left in ComfyUI's output folder"
    [fetched] = [line for line in logs if line["event"].startswith("Output not in the local ComfyUI output folder")]
    assert fetched["file"] == results[0], "said once, for the first result, not for each of the 4"
    assert not [line for line in logs if line["event"].startswith("COMFYUI_TEMP_DIR holds none of")]


async def test_an_output_dir_holding_older_files_of_the_same_names_delivers_what_comfyui_wrote(
    qm, make_worker, workflows, tmp_path
):
    """ComfyUI names results with counters (quick_00001_.png), so last week's files on a persistent volume, an old
    copy of the output folder or another ComfyUI's folder hold the very names of the next results. A worker whose
    COMFYUI_OUTPUT_DIR was such a folder copied those and delivered last week's images in place of the job's,
    silently (the folder held every name, so no warning), and its tidy-up deleted them. Now a file older than
    the prompt is fetched over /view, the folder is named once, and nothing of it is deleted."""
    base = tmp_path / "comfyui"
    comfy = ComfyUISimulator(base / "output", base / "temp")
    stale = tmp_path / "last-week"
    stale.mkdir()
    week_ago = time.time() - 7 * 86400
    for name in ("quick_00001_.png", "quick_00002_.png"):  # the stand-in's first two results, by their counters
        (stale / name).write_bytes(b"last week's image " + name.encode())
        os.utime(stale / name, (week_ago, week_ago))
    before = {name: (stale / name).read_bytes() for name in files_under(stale)}
    await comfy.start()
    try:
        jobs = [qm.store.submit("alice", quick(workflows, color)) for color in (51, 52)]
        worker = make_worker(comfyui_url=comfy.url, comfyui_output_dir=stale, comfyui_temp_dir=comfy.temp_dir)
        with capture_logs() as logs:
            assert await asyncio.wait_for(worker.run(), 20) == 0
        first = delivered(qm, jobs[0].id, tmp_path / "outputs")
        async with httpx.AsyncClient(base_url=comfy.url) as client:
            served = {path.name: (await client.get("/view", params={"filename": path.name, "type": "output"})).content
                      for path, _ in first}  # fmt: skip
    finally:
        await comfy.stop()
    assert sorted(served) == ["quick_00001_.png", "quick_00002_.png"], "the names the folder held"
    got = {path.name: path.read_bytes() for path, _ in first}
    assert got == served, "the job's images as ComfyUI serves them, not last week's files of the same names"
    assert [hashlib.sha256(data).hexdigest() for data in got.values()] == [sha for _, sha in first]
    assert {name: (stale / name).read_bytes() for name in files_under(stale)} == before, "none of it deleted"
    [warning] = [line for line in logs if line["event"].startswith("COMFYUI_OUTPUT_DIR holds files of the same")]
    assert warning["log_level"] == "warning"
    assert warning["COMFYUI_OUTPUT_DIR"] == str(stale)
    assert warning["file"] == "quick_00001_.png"
    assert qm.store.get(jobs[1].id).status == "completed"


async def test_results_replayed_from_comfyuis_cache_older_than_their_prompt_are_delivered_without_a_warning(
    qm, comfy, make_worker, workflows
):
    """A prompt replaying an earlier one's results names files written before it was sent: fetched over /view
    (the bytes ComfyUI serves, the same), with no warning, and deleted once a later success frees them."""
    first = qm.store.submit("alice", quick(workflows, 7))
    settings = {"comfyui_output_dir": comfy.output_dir, "comfyui_temp_dir": comfy.temp_dir}
    assert await asyncio.wait_for(make_worker(**settings).run(), 20) == 0
    week_ago = time.time() - 7 * 86400
    for name in files_under(comfy.output_dir):
        os.utime(comfy.output_dir / name, (week_ago, week_ago))
    again = qm.store.submit("alice", quick(workflows, 7))
    other = qm.store.submit("alice", quick(workflows, 8))
    with capture_logs() as logs:
        assert await asyncio.wait_for(make_worker(**settings).run(), 20) == 0
    [before, replayed] = [[(p.name, sha) for p, sha in delivered(qm, job.id, Path("."))] for job in (first, again)]
    assert replayed == before, "the same files, replayed from ComfyUI's cache, with the same bytes"
    assert not [line for line in logs if line["event"].startswith("COMFYUI_OUTPUT_DIR holds")]
    assert qm.store.get(other.id).status == "completed"
    assert files_under(comfy.output_dir).isdisjoint(name for name, _ in replayed), "freed by the later success"


async def test_a_preview_comfyuis_cache_replays_after_it_was_tidied_away_gives_no_temp_dir_warning(
    qm, comfy, make_worker, workflows
):
    """A run deleted its prompt's preview; the next run's first prompt is the same one, and ComfyUI's cache names
    that preview again without writing it. Before: "COMFYUI_TEMP_DIR holds none of the previews ComfyUI wrote"
    though the setting was right, a warning of normal operation that trains operators to ignore it."""
    settings = {"comfyui_output_dir": comfy.output_dir, "comfyui_temp_dir": comfy.temp_dir}
    first = qm.store.submit("alice", quick(workflows, 9))
    assert await asyncio.wait_for(make_worker(**settings).run(), 20) == 0
    assert files_under(comfy.temp_dir) == set(), "its preview tidied away"
    again = qm.store.submit("alice", quick(workflows, 9))
    with capture_logs() as logs:
        assert await asyncio.wait_for(make_worker(**settings).run(), 20) == 0
    assert [qm.store.get(job.id).status for job in (first, again)] == ["completed", "completed"]
    named = [image for entry in (await history(comfy)).values() for node in entry["outputs"].values()
             for image in node["images"]]  # fmt: skip
    assert any(image["type"] == "temp" for image in named), "the tidied preview, named again"
    assert not [line for line in logs if "holds none of" in line["event"]]


async def test_right_output_and_temp_dirs_give_no_such_warning(qm, comfy, make_worker, workflows):
    qm.store.submit("alice", quick(workflows, 13))
    worker = make_worker(comfyui_output_dir=comfy.output_dir, comfyui_temp_dir=comfy.temp_dir)
    with capture_logs() as logs:
        assert await asyncio.wait_for(worker.run(), 20) == 0
    assert not [line for line in logs if "holds none of" in line["event"]]
    assert files_under(comfy.temp_dir) == set()
    assert len(files_under(comfy.output_dir)) == 2, "the latest success's two images, kept for a replay"


def previews_named_in_order(comfy) -> None:
    """The stand-in names previews ComfyUI_temp_<5 random letters>_NNNNN_.png, as ComfyUI does; here preview_<n>.png,
    counted over the whole test (restarts included), so a folder can hold their names before they are made."""
    preview, made = comfy.catalogue["PreviewImage"], []

    def in_order(inputs, env) -> NodeResult:
        names = []
        for image in inputs["images"]:
            made.append(image)
            names.append(f"preview_{len(made)}.png")
            (env.temp_dir / names[-1]).write_bytes(png_bytes(image))
        return NodeResult((), {"images": [{"filename": n, "subfolder": "", "type": "temp"} for n in names]})

    comfy.catalogue["PreviewImage"] = replace(preview, run=in_order)


def write_last_weeks(folder: Path, names: list[str]) -> dict[str, tuple[bytes, float]]:
    """A user's files of these names in the folder, written a week ago: what must stay as it is."""
    week_ago = time.time() - 7 * 86400
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"last week's " + name.encode())
        os.utime(folder / name, (week_ago, week_ago))
    return as_found(folder)


def as_found(folder: Path) -> dict[str, tuple[bytes, float]]:
    return {name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime) for name in files_under(folder)}


def saves_only(color: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "only"}},
    }


async def fail_a_prompt_then_succeed(qm, comfy, folders, make_worker, workflows) -> None:
    """A failed prompt's result (before-error/x_00001_.png) is kept until a success (whose previews are
    preview_1.png and preview_2.png) frees it."""
    comfy.inject_error("out of coffee", node_id="30")
    jobs = [qm.store.submit("bob", saves_then_fails()), qm.store.submit("alice", quick(workflows, 1))]
    assert await asyncio.wait_for(make_worker(**folders).run(), 20) == 0
    assert [qm.store.get(job.id).status for job in jobs] == ["failed", "completed"]


async def tidy_a_killed_runs_prompt(qm, comfy, folders, make_worker, workflows) -> None:
    """A killed run of w1 left a finished prompt (quick_00001_.png, quick_00002_.png; preview_1.png, preview_2.png):
    its previews go at the restart, its results at the restart's first success."""
    from worker.comfyui import WORKER_ID_KEY

    async with httpx.AsyncClient(base_url=comfy.url) as client:
        body = {"prompt": quick(workflows, 1), "extra_data": {WORKER_ID_KEY: "w1"}}
        left = (await client.post("/prompt", json=body)).json()["prompt_id"]
    async with asyncio.timeout(5):
        while left not in await history(comfy):
            await asyncio.sleep(0.01)
    job = qm.store.submit("alice", saves_only(2))
    assert await asyncio.wait_for(make_worker(worker_id="w1", **folders).run(), 20) == 0
    assert qm.store.get(job.id).status == "completed"
    assert left in comfy.history_deletes


async def lose_a_prompt_to_a_comfyui_restart(qm, comfy, folders, make_worker, workflows) -> None:
    """ComfyUI dies in a prompt that wrote early_00001_.png and preview_1.png; the next prompt's number shows the
    restart, and they go after its job's report."""
    worker = make_worker(serverless_max_idle_polls=1_000_000, **folders)
    run = asyncio.create_task(worker.run())
    comfy.freeze(class_type="ImageBlur")
    qm.store.submit("alice", saves_around_a_slow_node(color=1))
    await asyncio.wait_for(comfy.wait_until_frozen(), 10)
    await crash_and_restart(comfy)
    comfy.release()
    await until(lambda: worker.state.jobs_handed_back == 1)
    later = qm.store.submit("bob", saves_only(2))
    await until(lambda: qm.reports.landed(later.id) and worker.state.current_job_id is None)
    worker.request_shutdown()
    assert await asyncio.wait_for(run, 20) == 0
    assert qm.store.get(later.id).status == "completed"


@pytest.mark.parametrize(
    ("tidied", "results", "previews"),
    [
        (fail_a_prompt_then_succeed, ["before-error/x_00001_.png"], ["preview_1.png", "preview_2.png"]),
        (tidy_a_killed_runs_prompt, ["quick_00001_.png", "quick_00002_.png"], ["preview_1.png", "preview_2.png"]),
        (lose_a_prompt_to_a_comfyui_restart, ["early_00001_.png"], ["preview_1.png"]),
    ],
    ids=["failed prompt", "killed run", "comfyui restart"],
)
async def test_folders_holding_older_files_of_the_names_comfyui_gave_keep_them_all(
    qm, comfy, make_worker, workflows, tmp_path, tidied, results, previews
):
    """COMFYUI_OUTPUT_DIR and COMFYUI_TEMP_DIR set to folders that are not ComfyUI's (an old copy of its outputs, a
    persistent volume, another ComfyUI's folder) hold last week's files of the very names ComfyUI counts up. Before,
    only a delivered result older than its prompt with other bytes kept the output folder: the files a failed
    prompt, a killed run's prompt or a prompt lost with ComfyUI named were deleted unchecked, and so were the
    previews, unchecked always. Now a file older than the prompt that named it is kept, and its folder named once."""
    previews_named_in_order(comfy)
    folders = {"comfyui_output_dir": tmp_path / "user-outputs", "comfyui_temp_dir": tmp_path / "user-previews"}
    before = {setting: write_last_weeks(folder, results if "output" in setting else previews)
              for setting, folder in folders.items()}  # fmt: skip
    with capture_logs() as logs:
        await tidied(qm, comfy, folders, make_worker, workflows)
    assert {setting: as_found(folder) for setting, folder in folders.items()} == before, "none of it deleted"
    for setting, folder in folders.items():
        [warning] = [line for line in logs if line["event"].startswith(f"{setting.upper()} holds a file of a name")]
        assert warning["log_level"] == "warning"
        assert warning[setting.upper()] == str(folder)
        assert warning["file"] in before[setting]
        assert warning["older_by_s"] > 6 * 86400


def test_when_comfyui_started_a_prompt_is_read_from_its_history_status_or_unknown():
    stamped = [["execution_start", {"prompt_id": "p", "timestamp": 1795546488995}], ["execution_success", {}]]
    assert execution_start({"messages": stamped}) == 1795546488.995
    assert execution_start({"messages": [["execution_start", {"prompt_id": "p"}]]}) is None, "an older ComfyUI"
    assert execution_start({"messages": [["execution_start", {"timestamp": True}]], "x": 1}) is None
    assert execution_start({}) is None
