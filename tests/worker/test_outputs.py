"""Output delivery against a hostile or failing ComfyUI and disk: a custom node may name any file in the history
(here a stand-in SaveImage returning what the test wants), ComfyUI may die mid-download, the outputs disk may fill
up, the replica may be stopped mid-copy. Each job still ends once, in the right state, and leaves no stray file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from standins.comfyui_nodes import NodeEnv, NodeResult

from ..conftest import wait_for

BIG_BYTES = 256 << 20  # sparse: free to make, long enough to copy that a stop or a crash lands mid-way


def hostile_save_image(comfy, ui: Callable[[NodeEnv], dict[str, Any]]) -> None:
    """SaveImage becomes a custom node that writes what it likes and names what it likes in the history."""
    node = comfy.catalogue["SaveImage"]
    comfy.catalogue["SaveImage"] = replace(node, run=lambda _inputs, env: NodeResult((), ui(env)))


def one_output(filename: str) -> dict[str, Any]:
    return {"images": [{"filename": filename, "subfolder": "", "type": "output"}]}


def big_file(env: NodeEnv) -> dict[str, Any]:
    with open(env.output_dir / "big.bin", "wb") as out:
        out.truncate(BIG_BYTES)
    return one_output("big.bin")


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@contextlib.asynccontextmanager
async def output_delivery(comfy, outputs: Path, *, local: bool):
    """An OutputDelivery into `outputs`, copying from ComfyUI's output folder (local) or fetching over /view."""
    from worker.comfyui import ComfyUIClient
    from worker.outputs import OutputDelivery

    client = ComfyUIClient(comfy.url)
    try:
        yield OutputDelivery(outputs, client, comfyui_output_dir=comfy.output_dir if local else None)
    finally:
        await client.aclose()


async def test_a_link_out_of_comfyuis_output_folder_is_refused_not_fetched_over_view(
    qm, comfy, make_worker, workflows, tmp_path: Path
):
    secret = tmp_path / "secret.txt"
    secret.write_text("QUEUE_MANAGER_TOKEN=hunter2")
    (comfy.output_dir / "leak.png").symlink_to(secret)
    hostile_save_image(comfy, lambda _env: one_output("leak.png"))
    job = qm.store.submit("mallory", workflows["quick"])
    assert await make_worker(comfyui_output_dir=comfy.output_dir).run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert "leak.png is a symbolic link leading out of ComfyUI's output folder" in report.body["error"]
    assert comfy.view_requests == [], "ComfyUI's /view follows the same link: it is no way round"
    assert files_under(tmp_path / "outputs") == []


async def test_a_file_swapped_for_a_link_after_the_check_is_refused_not_copied(
    comfy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A custom node leaves a thread behind that swaps its output for a symbolic link (to /proc/self/environ, which
    the worker may read and ComfyUI may not) between the worker's check and its open: the worker copied what the
    link led to into the job's results. Here the check is made to pass on the link, as the swap would have it."""
    import worker.outputs

    secret = tmp_path / "environ"
    secret.write_text("QUEUE_MANAGER_TOKEN=hunter2")
    (comfy.output_dir / "swapped.png").symlink_to(secret)
    monkeypatch.setattr(worker.outputs, "inside", lambda _path, _root: True)  # the check saw the file, not the link
    async with output_delivery(comfy, tmp_path / "outputs", local=True) as delivery:
        with pytest.raises(worker.outputs.OutputDeliveryError, match=r"swapped\.png.* leads out of ComfyUI's output"):
            await delivery.deliver({"9": one_output("swapped.png")}, "mallory", "job-1")
    assert not [path for path in files_under(tmp_path / "outputs") if "hunter2" in path.read_text()]


async def test_comfyui_dying_while_its_outputs_are_fetched_hands_the_job_back(qm, comfy, make_worker, workflows):
    hostile_save_image(comfy, big_file)
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(serverless_job_limit=1)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.view_requests)
    await comfy.crash()
    assert await run == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert report.body["error"].startswith("Handed back: Output delivery failed: could not deliver output big.bin")
    assert "ComfyUIUnavailable" in report.body["error"]
    [copy] = [j for j in qm.store.list() if j.id != job.id]
    assert copy.status == "pending" and copy.metadata["attempt"] == 2
    assert worker.state.jobs_handed_back == 1 and worker.state.jobs_failed == 0
    assert comfy.history_deletes == [], "a job handed back leaves ComfyUI's history alone"


async def test_a_file_comfyui_will_not_serve_fails_the_job_naming_it(
    qm, comfy, make_worker, workflows, tmp_path: Path
):
    hostile_save_image(comfy, lambda _env: one_output("never-written.png"))
    job = qm.store.submit("alice", workflows["quick"])
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert "could not deliver output never-written.png of node 3" in report.body["error"]
    assert "HTTP 404" in report.body["error"] and "Handed back" not in report.body["error"]
    outputs = tmp_path / "outputs"
    assert [p.relative_to(outputs).as_posix() for p in outputs.rglob("*")] == [".partial"], "no job folder left"


async def test_a_failed_delivery_removes_the_folders_it_made_and_nothing_else(comfy, tmp_path: Path):
    from worker.outputs import OutputDeliveryError

    outputs = tmp_path / "outputs"
    first_attempt = outputs / "alice" / "job-1"
    first_attempt.mkdir(parents=True)
    (first_attempt / "result.png").write_bytes(b"attempt 1's result")
    (outputs / "alice" / "job-2").mkdir()  # an empty folder this delivery did not make
    (comfy.output_dir / "ok.png").write_bytes(b"png")
    history_outputs = {"9": {"images": [
        {"filename": "ok.png", "subfolder": "", "type": "output"},
        {"filename": "missing.png", "subfolder": "deep/sub", "type": "output"},
    ]}}  # fmt: skip
    async with output_delivery(comfy, outputs, local=False) as delivery:
        with pytest.raises(OutputDeliveryError, match=r"missing\.png"):
            await delivery.deliver(history_outputs, "alice", "job-1", attempt=3)
        with pytest.raises(OutputDeliveryError, match=r"missing\.png"):
            await delivery.deliver({"9": history_outputs["9"]}, "alice", "job-2", attempt=2)
    assert sorted(p.relative_to(outputs).as_posix() for p in outputs.rglob("*")) == [
        ".partial", "alice", "alice/job-1", "alice/job-1/result.png", "alice/job-2",
    ]  # fmt: skip


async def test_a_delivery_cancelled_while_its_folder_is_renamed_into_place_leaves_nothing(
    comfy, tmp_path: Path, monkeypatch
):
    """The job is taken away (a heartbeat told 409: cancelled, or handed back) or the worker is forced to stop
    while the rename runs in its thread: the rename completes anyway. Before, the files stayed published under
    OUTPUTS_PATH/<user>/<job>/ with no report naming them, for good (a retry had already swept that folder)."""
    import threading

    import worker.outputs as outputs_module

    renamed, go_on = threading.Event(), threading.Event()
    real_publish = outputs_module._publish

    def slow_publish(*args: Any) -> None:  # a slow volume: the rename is done, the fsyncs after it take a while
        real_publish(*args)
        renamed.set()
        go_on.wait(10)

    monkeypatch.setattr(outputs_module, "_publish", slow_publish)
    outputs = tmp_path / "outputs"
    (comfy.output_dir / "ok.png").write_bytes(b"png")
    async with output_delivery(comfy, outputs, local=True) as delivery:
        deliver = asyncio.create_task(delivery.deliver({"9": one_output("ok.png")}, "alice", "job-1"))
        await asyncio.to_thread(renamed.wait, 10)
        assert files_under(outputs) == [outputs / "alice" / "job-1" / "ok.png"]
        deliver.cancel()  # while the thread still syncs
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await deliver
    assert files_under(outputs) == [], "a delivery that did not return leaves nothing that looks like a result"
    assert sorted(p.name for p in outputs.iterdir()) == [".partial", "alice"]


async def test_a_user_folder_the_retention_removes_just_before_the_rename_is_made_again(
    comfy, tmp_path: Path, monkeypatch
):
    """The queue manager's retention deletes a user's last old job folder, then the user's folder, now empty:
    if that lands between the delivery's mkdir and its rename, the rename finds no folder. Before, the delivery
    failed (and with it a job that had rendered); now the folder is made again and the rename goes through."""
    import os

    import worker.outputs as outputs_module

    real_rename, raced = os.rename, []

    def rename_after_the_retention(src: Any, dst: Any) -> None:
        if not raced:
            raced.append(dst)
            os.rmdir(Path(dst).parent)  # the retention's os.rmdir(<user_id>) of a folder left empty
        real_rename(src, dst)

    monkeypatch.setattr(outputs_module.os, "rename", rename_after_the_retention)
    outputs = tmp_path / "outputs"
    (comfy.output_dir / "ok.png").write_bytes(b"png")
    async with output_delivery(comfy, outputs, local=True) as delivery:
        await delivery.deliver({"9": one_output("ok.png")}, "alice", "job-1")
    assert raced == [outputs / "alice" / "job-1"]
    assert files_under(outputs) == [outputs / "alice" / "job-1" / "ok.png"]


@pytest.mark.parametrize("local", [True, False], ids=["copied from ComfyUI's folder", "fetched over /view"])
async def test_a_delivery_is_on_disk_files_and_folders_before_the_job_is_reported(
    comfy, tmp_path: Path, monkeypatch, local: bool
):
    """Before: nothing was synced, so a power loss just after the report could leave the reported files empty
    or missing (the queue manager now keeps every answered report on disk)."""
    import os

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    outputs = tmp_path / "outputs"
    (comfy.output_dir / "sub").mkdir()
    (comfy.output_dir / "sub" / "a.png").write_bytes(b"a")
    (comfy.output_dir / "b.png").write_bytes(b"b")
    history_outputs = {"9": {"images": [
        {"filename": "a.png", "subfolder": "sub", "type": "output"},
        {"filename": "b.png", "subfolder": "", "type": "output"},
    ]}}  # fmt: skip
    async with output_delivery(comfy, outputs, local=local) as delivery:
        await delivery.deliver(history_outputs, "alice", "job-1", attempt=2)
    [staging] = {Path(path).relative_to(outputs).parts[1] for path in synced if "/.partial/" in path}
    staged = outputs / ".partial" / staging
    assert sorted(synced) == sorted(str(p) for p in [
        staged / "sub" / "a.png", staged / "b.png", staged, staged / "sub",  # the files, then their folders
        outputs / "alice" / "job-1", outputs / "alice", outputs,  # the rename, and the folders made for it
    ])  # fmt: skip
    assert (outputs / "alice" / "job-1" / "@attempt-2" / "sub" / "a.png").read_bytes() == b"a"


@pytest.mark.parametrize("local", [True, False], ids=["copied from ComfyUI's folder", "fetched over /view"])
async def test_a_backslash_is_part_of_a_name_so_the_file_comfyui_wrote_is_the_one_delivered(
    comfy, tmp_path: Path, local: bool
):
    """ComfyUI on Linux saves filename_prefix "x\\y" as the file "x\\y_00001_.png" in its output folder. The worker
    read the backslash as a folder and copied x/y_00001_.png: another user's image, saved a moment before."""
    (comfy.output_dir / "x").mkdir()
    (comfy.output_dir / "x" / "y_00001_.png").write_bytes(b"ivy's")
    (comfy.output_dir / "x\\y_00001_.png").write_bytes(b"jack's")
    history_outputs = {"3": {"images": [{"filename": "x\\y_00001_.png", "subfolder": "", "type": "output"}]}}
    async with output_delivery(comfy, tmp_path / "outputs", local=local) as delivery:
        await delivery.deliver(history_outputs, "jack", "job-2", attempt=1)
    assert [(p.name, p.read_bytes()) for p in files_under(tmp_path / "outputs" / "jack")] == [
        ("x\\y_00001_.png", b"jack's")
    ]


@pytest.mark.parametrize(("error", "delivered"), [("EINVAL", True), ("EIO", False)])
async def test_a_volume_that_cannot_sync_still_gets_its_delivery_and_a_failing_sync_is_a_disk_fault(
    comfy, tmp_path: Path, monkeypatch, error: str, delivered: bool
):
    """EINVAL: a shared-folder mount that has no fsync; EIO: the write never reached the disk (handed back as
    OutputsDiskFailed, our infrastructure's fault, with nothing left in OUTPUTS_PATH)."""
    import errno
    import os

    from worker.outputs import OutputsDiskFailed

    def failing_fsync(_descriptor: int) -> None:
        raise OSError(getattr(errno, error), os.strerror(getattr(errno, error)))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    outputs = tmp_path / "outputs"
    (comfy.output_dir / "b.png").write_bytes(b"b")
    async with output_delivery(comfy, outputs, local=True) as delivery:
        if delivered:
            [file] = await delivery.deliver({"9": one_output("b.png")}, "alice", "job-1")
            assert (outputs / file.path).read_bytes() == b"b"
        else:
            with pytest.raises(OutputsDiskFailed, match="Input/output error"):
                await delivery.deliver({"9": one_output("b.png")}, "alice", "job-1")
            assert files_under(outputs) == []


async def test_a_user_folder_mounted_inside_outputs_path_fails_the_delivery_saying_so(
    comfy, tmp_path: Path, monkeypatch
):
    """OUTPUTS_PATH/<user> on another file system than OUTPUTS_PATH/.partial (a per-user mount): the rename that
    publishes the delivery fails with EXDEV. Before: 'OSError: [Errno 18] Invalid cross-device link', no fix named."""
    import errno
    import os

    from worker.outputs import OutputDeliveryError

    def cross_device(source, target):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(source), None, str(target))

    monkeypatch.setattr(os, "rename", cross_device)  # what the kernel answers across mounts
    outputs = tmp_path / "outputs"
    (comfy.output_dir / "b.png").write_bytes(b"b")
    async with output_delivery(comfy, outputs, local=True) as delivery:
        with pytest.raises(OutputDeliveryError, match="mount OUTPUTS_PATH as one volume") as refused:
            await delivery.deliver({"9": one_output("b.png")}, "alice", "job-1")
    assert f"{outputs / 'alice'} is on another file system than {outputs / '.partial'}" in str(refused.value)
    assert files_under(outputs) == []


async def test_a_stop_during_a_local_copy_hands_the_job_back_and_leaves_no_file(
    qm, comfy, make_worker, workflows, tmp_path: Path
):
    hostile_save_image(comfy, big_file)
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(comfyui_output_dir=comfy.output_dir)
    run = asyncio.create_task(worker.run())
    outputs = tmp_path / "outputs"
    await wait_for(lambda: files_under(outputs / ".partial"), step=0.001)  # the copy has started, in its thread
    worker.request_shutdown()
    worker.request_shutdown()
    assert await run == 0
    assert qm.reports.landed(job.id)[0].body["error"].startswith("Handed back: worker test-worker was stopped")
    assert files_under(outputs) == [], "a job handed back leaves nothing that looks like a result"


@pytest.fixture
def tiny_outputs_disk(tmp_path: Path):
    """OUTPUTS_PATH on a 1 MiB tmpfs (needs the right to mount: root, as in the dev container)."""
    mount_point = tmp_path / "outputs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    with contextlib.suppress(OSError):
        subprocess.run(["umount", str(mount_point)], check=False)


async def test_a_full_outputs_disk_hands_the_job_back_and_takes_no_new_job(
    qm, comfy, make_worker, workflows, tiny_outputs_disk: Path
):
    hostile_save_image(comfy, big_file)
    job = qm.store.submit("alice", workflows["quick"])
    waiting = qm.store.submit("bob", workflows["quick"])
    worker = make_worker(comfyui_output_dir=comfy.output_dir, serverless_max_idle_polls=100)
    assert await worker.run() == 1
    error = qm.reports.landed(job.id)[0].body["error"]
    disk = f"the outputs disk (OUTPUTS_PATH {worker.delivery.outputs_root}) refused a write"
    assert error.startswith(f"Handed back: Output delivery failed on worker test-worker: {disk}: could not"), error
    assert "could not deliver output big" in error
    assert "No space left on device" in error
    assert qm.store.get(waiting.id).status == "pending", "a replica that cannot deliver takes no new job"
    assert worker.state.fatal_reason and "No space left on device" in worker.state.fatal_reason
    assert files_under(tiny_outputs_disk) == []


async def test_an_output_name_that_is_not_utf8_fails_the_job_and_the_worker_goes_on(
    qm, comfy, make_worker, workflows
):
    hostile_save_image(comfy, lambda _env: one_output("\ud800.png"))  # what json.loads makes of "\ud800"
    job = qm.store.submit("mallory", workflows["quick"])
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert "output path from ComfyUI is not valid UTF-8: '\\ud800.png'" in report.body["error"]


async def test_an_output_still_being_written_fails_the_job_instead_of_being_copied_half_or_for_ever(
    qm, comfy, make_worker, workflows, tmp_path: Path
):
    import threading
    import time

    stop_writing = threading.Event()

    def grows_for_ever(env: NodeEnv) -> dict[str, Any]:
        growing = env.output_dir / "recording.bin"
        with open(growing, "wb") as out:
            out.truncate(64 << 20)

        def append() -> None:  # a custom node's background writer, still going after execution_success
            with open(growing, "ab") as out:
                while not stop_writing.is_set():
                    out.write(bytes(64 << 10))
                    out.flush()
                    time.sleep(0.001)

        threading.Thread(target=append, daemon=True).start()
        return one_output("recording.bin")

    hostile_save_image(comfy, grows_for_ever)
    job = qm.store.submit("alice", workflows["quick"])
    try:
        assert await asyncio.wait_for(make_worker(comfyui_output_dir=comfy.output_dir).run(), 10) == 0
    finally:
        stop_writing.set()
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job", report.body
    assert "could not deliver output recording.bin of node 3" in report.body["error"]
    assert "then changed while copied: a node is still writing it" in report.body["error"]
    assert files_under(tmp_path / "outputs") == []


def listing(*entries: tuple[str, str]) -> dict[str, Any]:
    return {"images": [{"filename": name, "subfolder": sub, "type": "output"} for sub, name in entries]}


async def test_a_history_listing_more_files_than_max_job_output_files_fails_the_job_before_copying_any(
    qm, comfy, make_worker, workflows, tmp_path: Path
):
    def many(env: NodeEnv) -> dict[str, Any]:
        for index in range(50):
            (env.output_dir / f"frame_{index:03}.png").write_bytes(b"png")
        return listing(*(("", f"frame_{index:03}.png") for index in range(50)))

    hostile_save_image(comfy, many)
    job = qm.store.submit("alice", workflows["quick"])
    assert await make_worker(max_job_output_files=20).run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert "lists more than 20 output files (MAX_JOB_OUTPUT_FILES)" in report.body["error"]
    assert "Handed back" not in report.body["error"], "the job's own outputs: failed, not retried"
    assert comfy.view_requests == [] and files_under(tmp_path / "outputs") == []


@pytest.mark.parametrize("over_view", [False, True], ids=["local copy", "over /view"])
async def test_outputs_larger_than_max_job_output_mb_fail_the_job_and_leave_nothing(
    qm, comfy, make_worker, workflows, tmp_path: Path, over_view: bool
):
    def two(env: NodeEnv) -> dict[str, Any]:
        (env.output_dir / "small.png").write_bytes(bytes(600 << 10))
        with open(env.output_dir / "huge.bin", "wb") as out:
            out.truncate((600 << 10) if over_view else BIG_BYTES)  # 1.2 MiB in all over /view
        return listing(("", "small.png"), ("", "huge.bin"))

    hostile_save_image(comfy, two)
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(max_job_output_mb=1, comfyui_output_dir=None if over_view else comfy.output_dir)
    assert await worker.run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert "outputs are larger than MAX_JOB_OUTPUT_MB (1 MiB): output huge.bin brings them past it" in (
        report.body["error"]
    )
    assert files_under(tmp_path / "outputs") == []


async def test_a_10_kb_output_name_fails_the_job_with_a_short_error_naming_it(qm, comfy, make_worker, workflows):
    name = "x" * 10_000 + ".png"
    hostile_save_image(comfy, lambda _env: listing(("", name)))
    job = qm.store.submit("alice", workflows["quick"])
    assert await make_worker(comfyui_output_dir=comfy.output_dir).run() == 0
    [report] = qm.reports.landed(job.id)
    error = report.body["error"]
    assert report.endpoint == "fail-job"
    assert "output path from ComfyUI is too long (10004 bytes, a name of 10004; at most 1024 and 255)" in error
    assert "filename='xxxx" in error and "(10004 characters)" in error
    assert len(error) < 600, f"the name is shown cut, not in full ({len(error)} characters)"


@pytest.mark.parametrize(
    ("subfolder", "filename"),
    [
        ("", "../../../escape.png"),
        ("../..", "escape.png"),
        ("/etc", "passwd"),
        ("", "/etc/passwd"),
        ("a\0b", "x.png"),
        ("", "x\0.png"),
        ("", "."),
        (".", "./"),
    ],
)
async def test_an_output_path_that_could_leave_its_folder_fails_the_job_and_writes_nothing(
    qm, comfy, make_worker, workflows, tmp_path: Path, subfolder: str, filename: str
):
    hostile_save_image(comfy, lambda _env: listing((subfolder, filename)))
    job = qm.store.submit("alice", workflows["quick"])
    assert await make_worker(comfyui_output_dir=comfy.output_dir).run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert "unsafe output path from ComfyUI" in report.body["error"]
    assert not (tmp_path / "escape.png").exists() and files_under(tmp_path / "outputs") == []


async def test_a_long_node_id_in_comfyuis_history_fails_the_job_instead_of_being_repeated_for_every_file(
    qm, comfy, make_worker, workflows, tmp_path: Path
):
    """Each delivered file names its node id in the report: a 3 MB id on a SaveImage of a 4096-image batch made a
    12 GB report. A workflow's own ids are refused before it runs (test_long_node_ids.py), but the history names
    others too (a node's expansion, "12.0.5"), which a custom node or a proxy can make as long: here only the
    history has it."""
    def many(env: NodeEnv) -> dict[str, Any]:
        for index in range(40):
            (env.output_dir / f"frame_{index:03}.png").write_bytes(b"png")
        return listing(*(("", f"frame_{index:03}.png") for index in range(40)))

    def long_node_ids(answer: dict[str, Any]) -> dict[str, Any]:
        for entry in answer.values():
            entry["outputs"]["n" * 100_000] = entry["outputs"].pop("3")  # SaveImage's
        return answer

    hostile_save_image(comfy, many)
    comfy.reshape("/history/{prompt_id}", long_node_ids)
    job = qm.store.submit("alice", workflows["quick"])
    assert await make_worker(comfyui_output_dir=comfy.output_dir).run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job", f"a report of {len(json.dumps(report.body))} bytes"
    error = report.body["error"]
    assert "node id in ComfyUI's history is 100000 characters long; at most 256" in error and len(error) < 600
    assert files_under(tmp_path / "outputs") == []


async def test_delivered_files_and_folders_have_the_umasks_modes_so_other_readers_of_the_volume_can_serve_them(
    qm, comfy, make_worker, workflows, tmp_path: Path
):
    """Before: each file was written with mkstemp, mode 0600, and renamed into place: a web server or sync job
    reading OUTPUTS_PATH as another uid could not read a result."""
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    job = qm.store.submit("alice", workflows["quick"])
    assert await make_worker(comfyui_output_dir=comfy.output_dir).run() == 0
    [report] = qm.reports.landed(job.id)
    outputs = tmp_path / "outputs"
    for item in report.body["result"]["outputs"]:
        assert stat.S_IMODE((outputs / item["path"]).stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((outputs / "alice" / job.id).stat().st_mode) == 0o777 & ~umask


async def test_a_job_with_no_result_files_leaves_no_folder_in_outputs_path(qm, comfy, make_worker, workflows, tmp_path):
    """A workflow that only previews completes with no outputs, and leaves OUTPUTS_PATH as it found it: before, the
    staged delivery renamed its empty staging folder into place, one empty <user>/<job>/ per such job."""
    previews_only = {key: node for key, node in workflows["quick"].items() if node["class_type"] != "SaveImage"}
    job = qm.store.submit("alice", previews_only)
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job" and report.body["result"]["outputs"] == []
    outputs = tmp_path / "outputs"
    assert not (outputs / "alice").exists()
    assert not any((outputs / ".partial").glob("*"))


@pytest.mark.parametrize("user_folder", ["attempt-2", "attempt-3"])
async def test_a_users_subfolder_named_like_a_retry_folder_neither_blocks_the_retry_nor_outlives_it(
    comfy, tmp_path: Path, user_folder: str
):
    """A filename_prefix "attempt-2/img": attempt 1 published alice/job-1/attempt-2/img_00001_.png, then its report
    was lost (a queue outage). Before: attempt 2 took that folder for its own, left it, and its delivery failed with
    "… already holds files of another delivery of the same job and attempt" ("attempt-3": attempt 2 completed, and
    attempt 1's file stayed beside its result for ever)."""
    outputs = tmp_path / "outputs"
    (comfy.output_dir / user_folder).mkdir()
    (comfy.output_dir / user_folder / "img_00001_.png").write_bytes(b"first")
    history_outputs = {"9": {"images": [{"filename": "img_00001_.png", "subfolder": user_folder, "type": "output"}]}}
    async with output_delivery(comfy, outputs, local=True) as delivery:
        await delivery.deliver(history_outputs, "alice", "job-1", attempt=1)
        (comfy.output_dir / user_folder / "img_00001_.png").write_bytes(b"retry")
        await asyncio.to_thread(delivery.remove_earlier_attempts, "alice", "job-1", 2)
        [file] = await delivery.deliver(history_outputs, "alice", "job-1", attempt=2)
    assert (outputs / file.path).read_bytes() == b"retry"
    assert files_under(outputs / "alice") == [outputs / file.path], "nothing of attempt 1 is left"


async def test_an_output_whose_first_folder_is_named_like_the_workers_retry_folders_fails_the_job_naming_why(
    qm, comfy, make_worker, workflows, tmp_path: Path
):
    """@attempt-N/ is the worker's: an output there would be taken for a retry's folder (kept, or in its way)."""

    def under_a_retry_folders_name(env: NodeEnv) -> dict[str, Any]:
        (env.output_dir / "@attempt-2").mkdir(exist_ok=True)
        (env.output_dir / "@attempt-2" / "img_00001_.png").write_bytes(b"png")
        return listing(("@attempt-2", "img_00001_.png"))

    hostile_save_image(comfy, under_a_retry_folders_name)
    job = qm.store.submit("alice", workflows["quick"])
    assert await make_worker(comfyui_output_dir=comfy.output_dir).run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert "a first folder named @attempt-<number> is the worker's" in report.body["error"]
    assert files_under(tmp_path / "outputs") == []


def _named_through_a_link_loop(folder_type: str) -> Callable[[NodeEnv], dict[str, Any]]:
    """A custom node makes loop/ a symbolic link to itself and names loop/x.png as its output (or preview)."""

    def node(env: NodeEnv) -> dict[str, Any]:
        folder = env.output_dir if folder_type == "output" else env.temp_dir
        with contextlib.suppress(FileExistsError):
            (folder / "loop").symlink_to("loop")
        return {"images": [{"filename": "x.png", "subfolder": "loop", "type": folder_type}]}

    return node


async def test_an_output_named_through_a_symbolic_link_loop_fails_the_job_once(qm, comfy, make_worker, workflows):
    """Before: Path.resolve() raised RuntimeError ("Symlink loop from …"), taken for a bug of the worker: the job
    was handed back, ComfyUI ran it again on each attempt, and it failed in the end as "hit an unexpected error"."""
    hostile_save_image(comfy, _named_through_a_link_loop("output"))
    job = qm.store.submit("mallory", workflows["quick"])
    assert await make_worker(comfyui_output_dir=comfy.output_dir).run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert "loop/x.png is a symbolic link leading out of ComfyUI's output folder" in report.body["error"]
    assert "resubmitted" not in report.body["error"], "not handed back: the job's output is at fault"


async def test_a_preview_named_through_a_symbolic_link_loop_does_not_crash_the_worker(
    qm, comfy, make_worker, workflows
):
    """Before: the tidy-up after the report raised RuntimeError out of the worker's run: the worker died, and the
    next job waited for another replica."""
    hostile_save_image(comfy, _named_through_a_link_loop("temp"))
    jobs = [qm.store.submit("mallory", workflows["quick"]) for _ in range(2)]
    worker = make_worker(comfyui_output_dir=comfy.output_dir, comfyui_temp_dir=comfy.temp_dir)
    assert await worker.run() == 0
    assert [qm.store.get(job.id).status for job in jobs] == ["completed", "completed"]


@pytest.fixture
def immutable_folder(tmp_path: Path):
    """A folder the kernel refuses to add an entry to, even for root (EPERM): what a folder of another uid
    on a shared volume is to the container's uid 10001 (EACCES)."""
    folders: list[Path] = []

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True)
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"cannot make a folder immutable here: {made.stderr.decode().strip()}")
        folders.append(folder)
        return folder

    yield make
    for folder in folders:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


async def test_a_user_folder_that_refuses_the_worker_hands_the_job_back_naming_it_and_the_worker_goes_on(
    qm, comfy, make_worker, workflows, tmp_path: Path, immutable_folder
):
    """Before: the rename that publishes the delivery into OUTPUTS_PATH/<user> failed with EPERM/EACCES and the
    job failed for good ('could not move the delivered files … Permission denied'), though the volume's
    permissions are ours, not the job's."""
    refusing = immutable_folder(tmp_path / "outputs" / "alice")
    job = qm.store.submit("alice", workflows["quick"])
    other = qm.store.submit("bob", workflows["quick"])
    worker = make_worker(serverless_max_idle_polls=2)
    assert await worker.run() == 0
    [report] = qm.reports.landed(job.id)
    error = report.body["error"]
    assert error.startswith("Handed back: Output delivery failed on worker test-worker: could not move"), error
    assert f"{refusing} belongs to uid {os.geteuid()}" in error and "this worker runs as uid" in error
    copies = [j for j in qm.store.list() if j.metadata.get("requeued_from") == job.id]
    assert [copy.metadata["attempt"] for copy in copies] == [2]
    assert qm.store.get(other.id).status == "completed", "one user's folder does not stop the worker"
    assert worker.state.fatal_reason is None
