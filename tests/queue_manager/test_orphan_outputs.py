"""The orphan sweep: a result folder QUEUE_MANAGER_OUTPUTS_DIR/<user_id>/<job_id>/ whose job the database no longer
has (a queue manager killed while the retention deleted a pass's folders, jobs purged by an older version or while
the volume was read-only) is deleted once untouched for the retention, its user's folder with it when left empty.
Before, such folders stayed on the volume for ever and the operator was told to delete them by hand.

Each test that checks what is kept has an old orphan beside it that the same sweep deletes: the sweep ran, and chose."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from queue_manager import QueueManagerServer, orphan_outputs
from queue_manager.store import JobStore

from .conftest import FakeClock
from .test_outputs_retention import RETENTION_S, files_under, finished_job, read_only, retaining
from .test_with_the_worker import wait_until

OLD_S = 10 * RETENTION_S


def job_folder(volume: Path, clock: FakeClock, *, user_id: str = "alice", job_id: str | None = None,
               age_s: float = OLD_S) -> Path:
    """A delivered job's folder with a file in it, last modified `age_s` before the clock's now."""
    folder = volume / user_id / (job_id or str(uuid.uuid4()))
    folder.mkdir(parents=True)
    (folder / "image.png").write_bytes(b"png")
    aged(folder, clock, age_s)
    return folder


def aged(path: Path, clock: FakeClock, age_s: float) -> None:
    then = clock() - age_s
    os.utime(path, (then, then), follow_symlinks=False)


def sweep_events(logs: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["event"], e.get("count", e.get("failed"))) for e in logs if e["event"].startswith("orphan_outputs")]


async def test_an_orphan_older_than_the_retention_goes_with_its_empty_user_folder(
    clock: FakeClock, volume: Path
) -> None:
    orphan = job_folder(volume, clock, user_id="bob")
    (orphan / "sub").mkdir()
    (orphan / "sub" / "video.mp4").write_bytes(b"mp4")
    aged(orphan, clock, OLD_S)
    async with retaining(clock, volume) as queue:
        with capture_logs() as logs:
            assert await queue.sweep_orphan_outputs() == 1

    assert files_under(volume) == [], "bob's folder, left empty, goes too"
    assert sweep_events(logs) == [("orphan_outputs_pruned", 1)]
    pruned = next(e for e in logs if e["event"] == "orphan_outputs_pruned")
    assert pruned["outputs_dir"] == str(volume.resolve()) and pruned["retention_s"] == RETENTION_S


async def test_a_folder_whose_job_is_kept_stays_however_old(clock: FakeClock, volume: Path) -> None:
    async with retaining(clock, volume) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        finished = await finished_job(client, "alice")
        pending = (await client.post("/api/jobs", json={"user_id": "alice", "workflow": {"1": {}}})).json()["id"]
        for job_id in (finished, pending):
            job_folder(volume, clock, job_id=job_id, age_s=100 * RETENTION_S)
        orphan = job_folder(volume, clock)
        with capture_logs() as logs:
            assert await queue.sweep_orphan_outputs() == 1

    assert not orphan.exists()
    assert files_under(volume) == sorted(
        [f"alice/{job_id}{name}" for job_id in (finished, pending) for name in ("", "/image.png")] + ["alice"]
    )
    assert sweep_events(logs) == [("orphan_outputs_pruned", 1)]


async def test_an_orphan_younger_than_the_retention_stays(clock: FakeClock, volume: Path) -> None:
    young = job_folder(volume, clock, age_s=RETENTION_S - 60)
    old = job_folder(volume, clock, age_s=RETENTION_S + 60)
    async with retaining(clock, volume) as queue:
        assert await queue.sweep_orphan_outputs() == 1

    assert young.exists() and not old.exists()
    assert files_under(volume) == ["alice", f"alice/{young.name}", f"alice/{young.name}/image.png"]


async def test_names_no_job_of_ours_has_are_left_alone(clock: FakeClock, volume: Path) -> None:
    job_id = str(uuid.uuid4())
    kept = [
        volume / "alice" / "holiday-photos",  # not a job id
        volume / "alice" / job_id.upper(),  # not as the queue manager writes one
        volume / "alice" / f"{job_id}.bak",
        volume / "alice" / f".{job_id}",  # a dot-name
        volume / ".hidden" / job_id,  # a dot-name as the user
        volume / "al.ice" / job_id,  # not a user id
        volume / ".partial" / f"alice.{job_id}.{uuid.uuid4().hex}",  # a worker's delivery being staged
        volume / ".partial" / job_id,
    ]
    for folder in kept:
        folder.mkdir(parents=True)
        (folder / "file").write_text("kept")
    (volume / "alice" / str(uuid.uuid4())).write_text("a file named like a job")
    for path in (*kept, *(folder.parent for folder in kept), *(volume / "alice").iterdir()):
        aged(path, clock, OLD_S)
    before = files_under(volume)
    orphan = job_folder(volume, clock)
    async with retaining(clock, volume) as queue:
        assert await queue.sweep_orphan_outputs() == 1

    assert not orphan.exists()
    assert files_under(volume) == before


@pytest.mark.parametrize("linked", ["job_id", "user_id", "job_id swapped in after the walk"])
async def test_a_link_at_the_user_or_job_folder_is_never_followed(
    clock: FakeClock, volume: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    job_id = str(uuid.uuid4())
    target = job_folder(elsewhere, clock, user_id="precious", job_id=job_id)
    if linked == "user_id":
        (volume / "alice").symlink_to(target.parent, target_is_directory=True)
        aged(volume / "alice", clock, OLD_S)
    elif linked == "job_id":
        (volume / "alice").mkdir()
        (volume / "alice" / job_id).symlink_to(target, target_is_directory=True)
        aged(volume / "alice" / job_id, clock, OLD_S)
    else:  # a real, old folder when the walk looks; a link by the time it is deleted
        job_folder(volume, clock, job_id=job_id)
        walk = orphan_outputs.old_job_folders

        def swapping(*args: Any) -> Any:
            found = walk(*args)
            (volume / "alice" / job_id / "image.png").unlink()
            (volume / "alice" / job_id).rmdir()
            (volume / "alice" / job_id).symlink_to(target, target_is_directory=True)
            return found

        monkeypatch.setattr(orphan_outputs, "old_job_folders", swapping)
    orphan = job_folder(volume, clock, user_id="bob")
    async with retaining(clock, volume) as queue:
        with capture_logs() as logs:
            assert await queue.sweep_orphan_outputs() == 1

    assert not orphan.exists()
    assert files_under(elsewhere) == ["precious", f"precious/{job_id}", f"precious/{job_id}/image.png"]
    assert (volume / "alice").is_symlink() if linked == "user_id" else (volume / "alice" / job_id).is_symlink()
    refused = [(e["job_id"], e["reason"]) for e in logs if e["event"] == "output_folder_refused"]
    if linked.startswith("job_id swapped"):
        assert refused == [(job_id, f"alice/{job_id} is not a folder but a symbolic link to {target}")]
    else:
        assert refused == [], "a link is not a job's folder: not even looked into"


@pytest.mark.parametrize(("retention_s", "served"), [(RETENTION_S, True), (0, True), (RETENTION_S, False)])
async def test_nothing_is_swept_with_the_retention_off_or_no_outputs_dir(
    clock: FakeClock, volume: Path, monkeypatch: pytest.MonkeyPatch, retention_s: float, served: bool
) -> None:
    """The first case is the control: the same orphan, the same passes, and it goes."""
    monkeypatch.chdir(volume)  # where a relative <user_id>/<job_id> would land
    orphan = job_folder(volume, clock, age_s=100 * RETENTION_S)
    queue = QueueManagerServer(clock=clock, outputs_dir=volume if served else None, lease_timeout_s=0,
                               finished_job_retention_s=retention_s, reaper_interval_s=0.01)
    async with queue:
        with capture_logs() as logs:
            assert await queue.sweep_orphan_outputs() == (1 if retention_s and served else 0)
            await asyncio.sleep(0.2)  # twenty reaper intervals: the background sweep's first is the first of them

    assert orphan.exists() is not bool(retention_s and served)
    assert sweep_events(logs) == ([("orphan_outputs_pruned", 1)] if retention_s and served else [])


async def test_the_queue_manager_sweeps_shortly_after_start(clock: FakeClock, volume: Path) -> None:
    orphan = job_folder(volume, clock)
    with capture_logs() as logs:
        async with retaining(clock, volume, reaper_interval_s=0.02):
            await wait_until(lambda: not orphan.exists(), timeout_s=3)
    assert sweep_events(logs) == [("orphan_outputs_pruned", 1)]


async def test_a_read_only_volume_is_one_warning_a_sweep_naming_the_fix(
    clock: FakeClock, volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orphans = [job_folder(volume, clock) for _ in range(3)]
    async with retaining(clock, volume) as queue:
        monkeypatch.setattr(os, "unlink", read_only(os.unlink))
        monkeypatch.setattr(os, "rmdir", read_only(os.rmdir))
        with capture_logs() as logs:
            assert await queue.sweep_orphan_outputs() == 0
            assert await queue.sweep_orphan_outputs() == 0
        monkeypatch.undo()
        assert await queue.sweep_orphan_outputs() == 3, "mounted read-write again, the next sweep deletes them"

    assert sweep_events(logs) == [("orphan_outputs_not_pruned", 3), ("orphan_outputs_not_pruned", 3)]
    warning = next(e for e in logs if e["event"] == "orphan_outputs_not_pruned")
    assert warning["log_level"] == "warning" and "Read-only file system" in warning["error"]
    assert warning["fix"].startswith("mount the outputs volume read-write into the queue manager")
    assert [e["event"] for e in logs] == ["orphan_outputs_not_pruned"] * 2, "no traceback, no line per folder"
    assert not any(folder.exists() for folder in orphans)


async def test_an_unreadable_user_folder_is_named_and_the_rest_swept(
    clock: FakeClock, volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreadable = job_folder(volume, clock, user_id="carol")
    orphan = job_folder(volume, clock)
    real_listdir = os.listdir

    def denied(path: Any) -> list[str]:
        if isinstance(path, int) and os.readlink(f"/proc/self/fd/{path}").endswith("/carol"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_listdir(path)

    async with retaining(clock, volume) as queue:
        monkeypatch.setattr(os, "listdir", denied)
        with capture_logs() as logs:
            assert await queue.sweep_orphan_outputs() == 1
        monkeypatch.undo()

    assert unreadable.exists() and not orphan.exists()
    assert sweep_events(logs) == [("orphan_outputs_pruned", 1), ("orphan_outputs_not_pruned", 1)]
    assert "Permission denied" in next(e for e in logs if e["event"] == "orphan_outputs_not_pruned")["error"]


async def test_ids_are_looked_up_in_batches_and_the_disk_is_walked_off_the_database_thread_and_the_loop(
    clock: FakeClock, volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orphan_outputs, "LOOKUP_BATCH", 4)
    orphans = [job_folder(volume, clock, user_id=f"user{n % 3}") for n in range(10)]
    asked: list[tuple[int, str]] = []
    disk_threads: list[threading.Thread] = []
    real_lookup, real_listdir = JobStore.existing_job_ids, os.listdir

    def lookup(store: JobStore, job_ids: Any) -> set[str]:
        asked.append((len(job_ids), threading.current_thread().name))
        return real_lookup(store, job_ids)

    def listdir(path: Any) -> list[str]:
        disk_threads.append(threading.current_thread())
        return real_listdir(path)

    async with retaining(clock, volume) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        kept = await finished_job(client, "user0")
        job_folder(volume, clock, user_id="user0", job_id=kept)
        monkeypatch.setattr(JobStore, "existing_job_ids", lookup)
        monkeypatch.setattr(os, "listdir", listdir)
        assert await queue.sweep_orphan_outputs() == 10
        monkeypatch.undo()

    assert not any(folder.exists() for folder in orphans)
    assert files_under(volume) == ["user0", f"user0/{kept}", f"user0/{kept}/image.png"]
    assert sorted(n for n, _ in asked) == [3, 4, 4] and all(name.startswith("queue-db") for _, name in asked)
    assert disk_threads and not any(t.name.startswith("queue-db") for t in disk_threads)
    assert threading.main_thread() not in disk_threads
