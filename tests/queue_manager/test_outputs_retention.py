"""A job the retention deletes has its result folder QUEUE_MANAGER_OUTPUTS_DIR/<user_id>/<job_id>/ deleted too, and
<user_id>/ when that leaves it empty. Before, the folders stayed on the volume for ever, no route reaching them, until
the disk filled. Nothing else on the volume is deleted, and no link is followed."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import sqlite3
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from queue_manager import QueueManagerServer
from queue_manager.outputs_retention import MAX_FOLDER_DEPTH, prune_job_folders
from queue_manager.store import PurgedJob

from .conftest import FakeClock
from .test_with_the_worker import wait_until

RETENTION_S = 3600.0


def retaining(clock: FakeClock, outputs_dir: Path | None, **settings: Any) -> QueueManagerServer:
    return QueueManagerServer(clock=clock, outputs_dir=outputs_dir, finished_job_retention_s=RETENTION_S,
                              lease_timeout_s=0, job_timeout_s=100 * RETENTION_S, **settings)


async def finished_job(client: httpx.AsyncClient, user_id: str, volume: Path | None = None) -> str:
    """A job submitted, taken and completed over HTTP; with `volume`, its result files written there first, as a
    worker delivers them (<user_id>/<job_id>/, a subfolder included)."""
    job_id = (await client.post("/api/jobs", json={"user_id": user_id, "workflow": {"1": {}}})).json()["id"]
    taken = await client.get("/api/workers/next-job", params={"worker_id": "w1"})
    assert taken.json()["job"]["id"] == job_id
    if volume is not None:
        (volume / user_id / job_id / "sub").mkdir(parents=True)
        (volume / user_id / job_id / "image.png").write_bytes(b"png")
        (volume / user_id / job_id / "sub" / "video.mp4").write_bytes(b"mp4")
    done = await client.post("/api/workers/complete-job", params={"job_id": job_id}, json={"result": {}})
    assert done.status_code == 200, done.text
    return job_id


def files_under(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


def pruning_events(logs: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["event"], e["count"]) for e in logs if e["event"] in ("outputs_pruned", "outputs_not_pruned")]


async def test_a_purged_jobs_folder_goes_with_its_empty_user_folder_and_nothing_else(
    clock: FakeClock, volume: Path
) -> None:
    (volume / "other-tool").mkdir()
    (volume / "other-tool" / "data.bin").write_bytes(b"not ours")
    (volume / "dave" / "0f0f0f0f-not-a-job-of-ours").mkdir(parents=True)
    async with retaining(clock, volume) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        alice_old = await finished_job(client, "alice", volume)
        bob_old = await finished_job(client, "bob", volume)
        await finished_job(client, "carol")  # no outputs: no folder
        clock.advance(RETENTION_S / 2)
        alice_young = await finished_job(client, "alice", volume)
        clock.advance(RETENTION_S / 2 + 1)
        with capture_logs() as logs:
            assert await queue.purge_finished() == 3

        assert not (volume / "alice" / alice_old).exists()
        assert not (volume / "bob").exists(), "bob's folder, left empty, goes too"
        assert files_under(volume) == sorted([
            "alice", f"alice/{alice_young}", f"alice/{alice_young}/image.png", f"alice/{alice_young}/sub",
            f"alice/{alice_young}/sub/video.mp4",  # a job the retention has not deleted yet keeps its files
            "dave", "dave/0f0f0f0f-not-a-job-of-ours",  # a folder no job of ours names
            "other-tool", "other-tool/data.bin",  # another tool's, on a shared volume
        ])
        assert (await client.get(f"/api/jobs/{bob_old}")).status_code == 404
    assert pruning_events(logs) == [("outputs_pruned", 2)], "carol's job had no folder: nothing to say"


@pytest.mark.parametrize("linked", ["job_id", "user_id"])
async def test_a_link_at_the_user_or_job_folder_is_not_followed(
    clock: FakeClock, volume: Path, tmp_path: Path, linked: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    async with retaining(clock, volume) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        job_id = await finished_job(client, "alice")
        (elsewhere / job_id).mkdir(parents=True)
        (elsewhere / job_id / "precious.txt").write_text("keep me")
        if linked == "job_id":
            (volume / "alice").mkdir()
            (volume / "alice" / job_id).symlink_to(elsewhere / job_id, target_is_directory=True)
        else:
            (volume / "alice").symlink_to(elsewhere, target_is_directory=True)
        clock.advance(RETENTION_S + 1)
        with capture_logs() as logs:
            assert await queue.purge_finished() == 1

    assert (elsewhere / job_id / "precious.txt").read_text() == "keep me"
    assert (volume / "alice" / job_id).is_symlink() if linked == "job_id" else (volume / "alice").is_symlink()
    refused = [e for e in logs if e["event"] == "output_folder_refused"]
    assert [(e["job_id"], e["reason"].split(" is not a folder but a symbolic link to ")[-1]) for e in refused] == [
        (job_id, str(elsewhere / job_id) if linked == "job_id" else str(elsewhere))
    ]
    assert pruning_events(logs) == []


@pytest.mark.parametrize(
    ("user_id", "job_id"), [("alice", ".."), ("alice", "."), ("..", "outputs"), ("alice", ""), ("alice", "a/b"),
                            ("alice", "a\0b"), ("", "job")],
)
def test_an_id_that_is_not_one_folder_name_is_never_used(volume: Path, user_id: str, job_id: str) -> None:
    for folder in ("alice/a/b", "alice/job", "job"):
        (volume / folder).mkdir(parents=True)
        (volume / folder / "file").write_text("kept")
    before = files_under(volume.parent)

    with capture_logs() as logs:
        assert prune_job_folders(volume, [PurgedJob(user_id, job_id)]) == 0

    assert files_under(volume.parent) == before
    assert [e["event"] for e in logs] == ["output_folder_refused"]


def read_only(real: Any) -> Any:
    """`os.unlink` or `os.rmdir` as on a read-only volume, for the deletions (by a folder's descriptor) alone."""
    def refused(path: str, *, dir_fd: int | None = None) -> None:
        if dir_fd is None:  # not a deletion of ours: the test's own temporary database
            return real(path)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return refused


async def test_a_removal_refused_by_a_read_only_volume_is_logged_once_a_pass_and_the_reaper_keeps_running(
    clock: FakeClock, volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "unlink", read_only(os.unlink))
    monkeypatch.setattr(os, "rmdir", read_only(os.rmdir))
    async with (
        retaining(clock, volume, reaper_interval_s=0.02) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        with capture_logs() as logs:
            first = [await finished_job(client, "alice", volume) for _ in range(2)]
            clock.advance(RETENTION_S + 1)
            await wait_until(lambda: pruning_events(logs), timeout_s=3)
            assert [queue.store.get(job_id) for job_id in first] == [None, None]

            later = await finished_job(client, "alice", volume)  # the reaper still runs its passes
            clock.advance(RETENTION_S + 1)
            await wait_until(lambda: len(pruning_events(logs)) == 2, timeout_s=3)
            assert queue.store.get(later) is None

    assert pruning_events(logs) == [("outputs_not_pruned", 2), ("outputs_not_pruned", 1)]
    not_pruned = next(e for e in logs if e["event"] == "outputs_not_pruned")
    assert not_pruned["job_id"] == first[0]
    assert "Read-only file system" in not_pruned["error"]
    assert not_pruned["fix"].startswith("mount the outputs volume read-write into the queue manager")
    assert "orphan sweep" in not_pruned["fix"], "the operator need not prune them by hand"
    assert not [e for e in logs if e["event"] in ("reaper_pass_failed", "outputs_pruning_failed")]
    assert files_under(volume / "alice") == sorted(
        f"{job_id}{name}" for job_id in [*first, later] for name in ("", "/image.png", "/sub", "/sub/video.mp4")
    ), "nothing could be deleted"


async def test_without_an_outputs_dir_nothing_on_disk_is_touched(
    clock: FakeClock, volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(volume)  # where a relative <user_id>/<job_id> would land
    async with retaining(clock, None) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        job_id = await finished_job(client, "alice", volume)
        clock.advance(RETENTION_S + 1)
        with capture_logs() as logs:
            assert await queue.purge_finished() == 1
        assert queue.store.get(job_id) is None

    assert files_under(volume) == ["alice", f"alice/{job_id}", f"alice/{job_id}/image.png", f"alice/{job_id}/sub",
                                   f"alice/{job_id}/sub/video.mp4"]
    assert pruning_events(logs) == []


async def test_jobs_deleted_before_the_disk_fills_mid_pass_still_have_their_folders_deleted(
    clock: FakeClock, volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retention deletes one job per transaction: when the third fails (a full disk), the two already gone
    are gone for good. Before, the failing pass lost their ids with the exception, and their folders stayed."""
    async with (
        retaining(clock, volume, reaper_interval_s=0.02) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        jobs = [await finished_job(client, "alice", volume) for _ in range(3)]
        real_transaction = queue.store._transaction

        @contextlib.contextmanager
        def filling_up(**kwargs: Any) -> Iterator[Any]:
            with contextlib.closing(sqlite3.connect(queue.store.path)) as look:
                left = look.execute("SELECT count(*) FROM jobs").fetchone()[0]
            if left <= 1:
                raise sqlite3.OperationalError("database or disk is full")
            with real_transaction(**kwargs) as conn:
                yield conn

        with capture_logs() as logs:
            monkeypatch.setattr(queue.store, "_transaction", filling_up)
            clock.advance(RETENTION_S + 1)
            await wait_until(lambda: sum(e["event"] == "reaper_pass_failed" for e in logs) >= 2, timeout_s=3)
            monkeypatch.undo()

    gone = [job_id for job_id in jobs if not (volume / "alice" / job_id).exists()]
    assert len(gone) == 2, f"the two jobs deleted before the disk filled lose their folders, not {gone}"
    assert ("jobs_purged", 2) in [(e["event"], e.get("count")) for e in logs]
    assert pruning_events(logs)[0] == ("outputs_pruned", 2)


async def test_a_fifo_swapped_in_for_the_job_folder_after_a_look_never_holds_the_pruning(
    clock: FakeClock, volume: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever writes the volume swaps <job_id> for a link to a FIFO right after the pruning looked at it. Before,
    shutil.rmtree (Python 3.11) opened the name, link followed, without O_NONBLOCK: the thread waited for a writer
    for ever, and the reaper, awaiting it, ran no pass again (no lease, no timeout, no retention)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    swapped = []

    def swapping_after_the_first_look(real: Any) -> Any:
        def look(path: Any, *args: Any, **kwargs: Any) -> Any:
            found = real(path, *args, **kwargs)
            if path == job_id and kwargs.get("dir_fd") is not None and not swapped:
                swapped.append(real.__name__)
                shutil.rmtree(volume / "alice" / job_id)
                (volume / "alice" / job_id).symlink_to(fifo)
            return found
        return look

    async with retaining(clock, volume) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        job_id = await finished_job(client, "alice", volume)
        clock.advance(RETENTION_S + 1)
        monkeypatch.setattr(os, "stat", swapping_after_the_first_look(os.stat))
        monkeypatch.setattr(os, "open", swapping_after_the_first_look(os.open))
        try:
            with capture_logs() as logs:
                async with asyncio.timeout(3):
                    assert await queue.purge_finished() == 1
        finally:
            monkeypatch.undo()
            with contextlib.suppress(OSError):  # a reader held on the FIFO gets its end of file
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert swapped, "the pruning looked at the job's folder"
    assert (volume / "alice" / job_id).is_symlink(), "left as it is, the FIFO never opened"
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert not [e for e in logs if e["event"] == "outputs_pruned"]


async def test_a_link_inside_the_job_folder_is_deleted_itself_never_what_it_leads_to(
    clock: FakeClock, volume: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "folder").mkdir(parents=True)
    (elsewhere / "folder" / "precious.txt").write_text("keep me")
    async with retaining(clock, volume) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        job_id = await finished_job(client, "alice", volume)
        (volume / "alice" / job_id / "sub" / "folder-link").symlink_to(elsewhere / "folder", target_is_directory=True)
        (volume / "alice" / job_id / "file-link").symlink_to(elsewhere / "folder" / "precious.txt")
        clock.advance(RETENTION_S + 1)
        with capture_logs() as logs:
            assert await queue.purge_finished() == 1

    assert files_under(volume) == []
    assert files_under(elsewhere) == ["folder", "folder/precious.txt"]
    assert pruning_events(logs) == [("outputs_pruned", 1)]


async def test_the_folders_are_deleted_off_the_database_thread_and_the_event_loop(
    clock: FakeClock, volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = []
    real_unlink = os.unlink

    def recorded(path: Any, *args: Any, **kwargs: Any) -> None:
        threads.append(threading.current_thread())
        real_unlink(path, *args, **kwargs)

    async with retaining(clock, volume) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        await finished_job(client, "alice", volume)
        clock.advance(RETENTION_S + 1)
        monkeypatch.setattr(os, "unlink", recorded)
        assert await queue.purge_finished() == 1
        monkeypatch.undo()  # the temporary database is removed on stop

    assert len(threads) == 2 and files_under(volume) == []
    assert not any(thread.name.startswith("queue-db") for thread in threads), "a large folder held the database"
    assert threading.main_thread() not in threads, "a large folder held the event loop"


def nest_folders(folder: Path, depth: int) -> None:
    """`depth` folders one inside the other under `folder`, a file at the bottom: made one level at a time, as a
    worker can, however long the path grows."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            fd, above = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(above)
        os.close(os.open("bottom.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)


async def test_a_job_folder_nested_thousands_deep_is_deleted_and_never_stops_the_batch(
    clock: FakeClock, volume: Path
) -> None:
    """Before: the deletion recursed once per level, and a folder 1500 deep (a hostile worker's) raised RecursionError
    out of the pass: the batch's other folders stayed, the deep one too. Now it is deleted; one deeper than the
    bound is an OSError logged for its job alone, the others are deleted."""
    async with retaining(clock, volume) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        deep = await finished_job(client, "alice", volume)
        too_deep = await finished_job(client, "bob", volume)
        plain = await finished_job(client, "carol", volume)
        nest_folders(volume / "alice" / deep, 1500)
        nest_folders(volume / "bob" / too_deep, MAX_FOLDER_DEPTH + 10)
        clock.advance(RETENTION_S + 1)
        try:
            with capture_logs() as logs:
                assert await queue.purge_finished() == 3
            assert not (volume / "alice").exists()
            assert not (volume / "carol" / plain).exists()
            assert pruning_events(logs) == [("outputs_pruned", 2), ("outputs_not_pruned", 1)]
            [failed] = [e for e in logs if e["event"] == "outputs_not_pruned"]
            assert failed["job_id"] == too_deep
            assert f"folders nested more than {MAX_FOLDER_DEPTH} deep" in failed["error"]
        finally:
            # rm walks any depth; pytest's own clean-up of old temporary folders recurses, as the pruning did
            subprocess.run(["rm", "-rf", str(volume)], check=True, timeout=60)
