"""Participants fetch their completed jobs' files from the queue manager (QUEUE_MANAGER_OUTPUTS_DIR): before, nothing
served them, and the operator had to serve the workers' OUTPUTS_PATH volume by other means. Only a file the job's
own result lists is ever served, only to whoever may read the job, and never through a link out of the folder."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from structlog.testing import capture_logs

from queue_manager import JobStatus, QueueManagerServer
from queue_manager import app as queue_manager_app
from queue_manager import outputs as queue_manager_outputs
from queue_manager.participants import add_participant
from standins.comfyui import ComfyUISimulator
from worker.outputs import DeliveredFile

from ..conftest import CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, run_module_to_exit, without_capabilities
from .test_cli import REPO, start_cli
from .test_participants import clean_env
from .test_with_the_worker import make_worker, wait_until
from .test_worker_token import bearer

OPERATOR = "operator-token-1"
WORKERS = "workers-token-2"
WORKFLOW = {"1": {}}
IMAGE = bytes(range(256)) * 64  # 16 KiB, every byte value
NOT_LISTED = "Output not found: ask for one of the paths the job's result lists in outputs[].path, as listed"


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    return {user: add_participant(tmp_path / "participants", user) for user in ("alice", "bob")}


@pytest.fixture
async def queue(tmp_path: Path, volume: Path, tokens: dict[str, str]) -> AsyncIterator[QueueManagerServer]:
    async with QueueManagerServer(token=OPERATOR, worker_token=WORKERS, participants_file=tmp_path / "participants",
                                  outputs_dir=volume) as server:
        yield server


@pytest.fixture
async def client(queue: QueueManagerServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=queue.url, timeout=5.0) as http:
        yield http


def output_url(job_id: str, path: str) -> str:
    """How a client builds the URL of one of result.outputs[].path: each segment percent-encoded."""
    return f"/api/jobs/{job_id}/outputs/{quote(path)}"


async def fetch(client: httpx.AsyncClient, raw_path: str, headers: dict[str, str]) -> httpx.Response:
    """GET raw_path as it is: httpx would remove dot segments before sending."""
    request = client.build_request("GET", "/", headers=headers)
    request.url = request.url.copy_with(raw_path=raw_path.encode())
    return await client.send(request)


async def completed_job(
    queue: QueueManagerServer, client: httpx.AsyncClient, user_id: str, files: dict[str, bytes]
) -> tuple[str, list[str]]:
    """A job taken and completed through the worker routes, its files written first as the worker delivers them
    (OUTPUTS_PATH/<user_id>/<job_id>/<name>): its id and its result's paths."""
    job = queue.store.submit(user_id, WORKFLOW)
    taken = await client.get("/api/workers/next-job", params={"worker_id": "w1"}, headers=bearer(WORKERS))
    assert taken.json()["job"]["id"] == job.id
    outputs = []
    for name, data in files.items():
        path = f"{user_id}/{job.id}/{name}"
        (queue.outputs_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (queue.outputs_dir / path).write_bytes(data)
        outputs.append(DeliveredFile("9", "images", path, len(data), hashlib.sha256(data).hexdigest()).as_dict())
    result = {"prompt_id": "p1", "outputs": outputs, "outputs_root": "/outputs", "worker_id": "w1"}
    reported = await client.post("/api/workers/complete-job", params={"job_id": job.id, "worker_id": "w1",
                                 "attempt": "1"}, json={"result": result}, headers=bearer(WORKERS))
    assert reported.status_code == 200, reported.text
    return job.id, [item["path"] for item in outputs]


async def test_a_worker_delivered_file_is_fetched_byte_exact_by_its_owner(tmp_path: Path, volume: Path) -> None:
    comfy = ComfyUISimulator(tmp_path / "comfy-out", tmp_path / "comfy-temp")
    await comfy.start()
    alice = add_participant(tmp_path / "participants", "alice")
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fetch"}},
    }
    try:
        async with (
            QueueManagerServer(token=OPERATOR, worker_token=WORKERS, participants_file=tmp_path / "participants",
                               outputs_dir=volume) as qm,
            httpx.AsyncClient(base_url=qm.url, timeout=5.0) as client,
        ):  # fmt: skip
            job = qm.store.submit("alice", workflow)
            worker = make_worker(qm, comfy, tmp_path, outputs_path=volume, queue_manager_token=WORKERS,
                                 serverless_job_limit=1)
            assert await worker.run() == 0
            done = (await client.get(f"/api/jobs/{job.id}", headers=bearer(alice))).json()
            assert done["status"] == "completed", done
            [output] = done["result"]["outputs"]
            fetched = await client.get(output_url(job.id, output["path"]), headers=bearer(alice))
    finally:
        await comfy.stop()
    assert fetched.status_code == 200, fetched.text
    assert hashlib.sha256(fetched.content).hexdigest() == output["sha256"]
    assert len(fetched.content) == output["bytes"]
    assert fetched.headers["Content-Type"] == "image/png"


async def test_the_operator_and_the_workers_token_fetch_any_job_another_participant_none(
    queue: QueueManagerServer, client: httpx.AsyncClient, tokens: dict[str, str]
) -> None:
    job_id, [path] = await completed_job(queue, client, "alice", {"a.png": IMAGE})
    answers = {who: await client.get(output_url(job_id, path), headers=bearer(token))
               for who, token in (("alice", tokens["alice"]), ("operator", OPERATOR), ("workers", WORKERS),
                                  ("bob", tokens["bob"]))}
    unknown = await client.get(output_url("no-such-job", path), headers=bearer(tokens["bob"]))
    nobody = await client.get(output_url(job_id, path))
    assert [answers[who].content for who in ("alice", "operator", "workers")] == [IMAGE] * 3
    assert (answers["bob"].status_code, answers["bob"].json()) == (unknown.status_code, unknown.json()) == (
        404, {"detail": "Job not found"})
    assert nobody.status_code == 401


async def test_a_path_the_result_does_not_list_is_not_served_though_on_the_volume(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tokens: dict[str, str]
) -> None:
    job_id, [path] = await completed_job(queue, client, "alice", {"a.png": IMAGE})
    (volume / "alice" / job_id / "other.png").write_bytes(b"not in the result")
    _, [bobs] = await completed_job(queue, client, "bob", {"b.png": b"bob's"})
    asked = [f"alice/{job_id}/other.png", bobs, path.upper(), f"{path}/", f"{job_id}/a.png", "a.png"]
    answers = [await client.get(output_url(job_id, p), headers=bearer(tokens["alice"])) for p in asked]
    assert [(a.status_code, a.json()) for a in answers] == [(404, {"detail": NOT_LISTED})] * len(asked)
    assert all(b"bob's" not in a.content and b"not in the result" not in a.content for a in answers)


@pytest.mark.parametrize("raw", [
    "alice%2F{job}%2F..%2F..%2F..%2Fsecret.txt", "..%2F..%2Fsecret.txt", "%2E%2E/%2E%2E/secret.txt",
    "%2Fetc%2Fpasswd", "/etc/passwd", "alice/{job}/%2E%2E/%2E%2E/%2E%2E/secret.txt",
])  # fmt: skip
async def test_dot_dot_and_absolute_paths_are_not_served(
    queue: QueueManagerServer, client: httpx.AsyncClient, tmp_path: Path, tokens: dict[str, str], raw: str
) -> None:
    (tmp_path / "secret.txt").write_text("QUEUE_MANAGER_TOKEN=hunter2")
    job_id, _ = await completed_job(queue, client, "alice", {"a.png": IMAGE})
    target = raw.replace("{job}", job_id)
    answer = await fetch(client, f"/api/jobs/{job_id}/outputs/{target}", bearer(tokens["alice"]))
    assert answer.status_code == 404
    assert "hunter2" not in answer.text and "root:" not in answer.text
    assert answer.json() == {"detail": NOT_LISTED}


async def test_a_result_listing_a_path_out_of_the_jobs_folder_is_not_served(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tokens: dict[str, str]
) -> None:
    """A result is whatever was reported: one naming another's file, or climbing out, serves nothing."""
    (volume.parent / "secret.txt").write_text("QUEUE_MANAGER_TOKEN=hunter2")
    _, [bobs] = await completed_job(queue, client, "bob", {"b.png": b"bob's"})
    job = queue.store.submit("alice", WORKFLOW)
    await client.get("/api/workers/next-job", params={"worker_id": "w1"}, headers=bearer(WORKERS))
    forged = [bobs, f"alice/{job.id}/../../../secret.txt", str(volume.parent / "secret.txt"), f"alice/{job.id}//b"]
    result = {"outputs": [{"path": path} for path in forged]}
    await client.post("/api/workers/complete-job", params={"job_id": job.id, "worker_id": "w1", "attempt": "1"},
                      json={"result": result}, headers=bearer(WORKERS))
    with capture_logs() as logs:
        answers = [await fetch(client, f"/api/jobs/{job.id}/outputs/{quote(p, safe='')}", bearer(OPERATOR))
                   for p in forged]
    assert [(a.status_code, a.json()) for a in answers] == [(404, {"detail": NOT_LISTED})] * len(forged)
    refused = [line for line in logs if line["event"] == "output_refused"]
    assert len(refused) == len(forged) and all("outside the job's folder" in line["reason"] for line in refused)


@pytest.mark.parametrize("link", ["file", "folder"])
async def test_a_link_planted_on_the_volume_out_of_the_folder_is_not_followed(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tmp_path: Path, tokens: dict[str, str],
    link: str,
) -> None:  # fmt: skip
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.png").write_text("root:x:0:0:root:/root:/bin/bash")
    job_id, [path] = await completed_job(queue, client, "alice", {"a.png": IMAGE})
    if link == "file":
        (volume / path).unlink()
        (volume / path).symlink_to(outside / "a.png")
    else:  # the job's folder itself
        job_folder = volume / "alice" / job_id
        (job_folder / "a.png").unlink()
        job_folder.rmdir()
        job_folder.symlink_to(outside)
    with capture_logs() as logs:
        answer = await client.get(output_url(job_id, path), headers=bearer(tokens["alice"]))
    assert (answer.status_code, answer.json()) == (404, {"detail": NOT_LISTED})
    [refused] = [line for line in logs if line["event"] == "output_refused"]
    assert "symbolic link" in refused["reason"] and refused["job_id"] == job_id


def plant(path: Path, kind: str) -> None:
    """A FIFO or a character device (1, 3: the kernel's /dev/null) where a listed file was."""
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
        return
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")


@pytest.mark.parametrize("kind", ["fifo", "device"])
async def test_a_device_or_fifo_planted_at_a_listed_path_is_refused_and_never_opened_for_reading(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, kind: str,
) -> None:  # fmt: skip
    """Opening a device can act on it (a tape rewinds, a terminal hangs up): it is looked at (O_PATH), never opened."""
    job_id, [path] = await completed_job(queue, client, "alice", {"a.png": IMAGE})
    plant(volume / path, kind)
    opened_for_reading = []
    real_open = os.open

    def spy(name: object, flags: int, *args: object, **kwargs: object) -> int:
        if not flags & os.O_PATH:
            opened_for_reading.append(name)
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(queue_manager_outputs.os, "open", spy)
    with capture_logs() as logs:
        answer = await client.get(output_url(job_id, path), headers=bearer(tokens["alice"]))
    monkeypatch.undo()
    assert (answer.status_code, answer.json()) == (404, {"detail": NOT_LISTED})
    [refused] = [line for line in logs if line["event"] == "output_refused"]
    assert (refused["path"], refused["reason"]) == (path, "not a regular file")
    assert opened_for_reading == []


async def test_a_file_beside_the_listed_one_is_never_sent_in_its_place(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tokens: dict[str, str]
) -> None:
    """aiohttp's FileResponse sends NAME.gz, when there is one, to a client accepting gzip (httpx does)."""
    job_id, [path] = await completed_job(queue, client, "alice", {"a.png": IMAGE})
    (volume / f"{path}.gz").write_bytes(b"\x1f\x8b not the image")
    answer = await client.get(output_url(job_id, path), headers={**bearer(tokens["alice"]),
                                                                  "Accept-Encoding": "gzip, br"})
    assert answer.status_code == 200
    assert "Content-Encoding" not in answer.headers
    assert answer.content == IMAGE


async def test_a_listed_file_gone_from_the_volume_answers_404_saying_so(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tokens: dict[str, str]
) -> None:
    job_id, [path] = await completed_job(queue, client, "alice", {"a.png": IMAGE})
    (volume / path).unlink()
    with capture_logs() as logs:
        answer = await client.get(output_url(job_id, path), headers=bearer(tokens["alice"]))
    assert answer.status_code == 404
    assert answer.json()["detail"].startswith(f"Output {path} is listed in the job's result but no longer on the "
                                              "volume")
    [gone] = [line for line in logs if line["event"] == "output_gone"]
    assert (gone["job_id"], gone["path"], gone["log_level"]) == (job_id, path, "warning")


async def test_a_file_reopened_as_another_than_the_one_checked_is_not_sent(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tmp_path: Path, tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The checked file is opened for reading through its own descriptor's name in /proc/self/fd: were that name
    to reach another file, that file is not sent."""
    shadow = tmp_path / "shadow"
    shadow.write_text("root:$6$salt$hash:19000:0:99999:7:::")
    job_id, [path] = await completed_job(queue, client, "alice", {"a.png": IMAGE})
    real_open = os.open

    def reopening_another(name: object, flags: int, *args: object, **kwargs: object) -> int:
        elsewhere = str(name).startswith("/proc/self/fd/")
        return real_open(shadow if elsewhere else name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", reopening_another)
    with capture_logs() as logs:
        answer = await client.get(output_url(job_id, path), headers=bearer(tokens["alice"]))
    assert answer.status_code == 404, f"{answer.status_code}: sent {len(answer.content)} bytes"
    assert answer.json() == {"detail": NOT_LISTED}
    [refused] = [line for line in logs if line["event"] == "output_refused"]
    assert refused["reason"] == "/proc/self/fd reopened another file than the one checked"


async def test_a_queue_manager_out_of_descriptors_answers_503_not_that_the_output_does_not_exist(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Its own trouble (here: no descriptor left for the reopen) is not the client's: before, 404 "Output not
    found", which tells a client to give up on a file that is there."""
    job_id, [path] = await completed_job(queue, client, "alice", {"a.png": IMAGE})
    real_open = os.open

    def out_of_descriptors(name: object, flags: int, *args: object, **kwargs: object) -> int:
        if str(name).startswith("/proc/self/fd/"):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", out_of_descriptors)
    with capture_logs() as logs:
        answer = await client.get(output_url(job_id, path), headers=bearer(tokens["alice"]))
    monkeypatch.undo()
    assert answer.status_code == 503, answer.text
    assert answer.json()["detail"] == (f"Output {path} cannot be opened by the queue manager right now (Too many open "
                                       "files): try again later")
    assert [line["event"] for line in logs if line["log_level"] == "error"] == ["output_open_failed"]
    assert (await client.get(output_url(job_id, path), headers=bearer(tokens["alice"]))).content == IMAGE


@pytest.mark.parametrize("ask", ["whole", "range", "unchanged"])
async def test_a_file_swapped_for_a_link_after_the_check_is_not_what_is_sent(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tmp_path: Path, tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, ask: str,
) -> None:  # fmt: skip
    """Whoever writes the volume swaps the file for a link between the check and the sending: the file checked
    is sent, or nothing."""
    shadow = tmp_path / "shadow"
    shadow.write_text("root:$6$salt$hash:19000:0:99999:7:::")
    job_id, [path] = await completed_job(queue, client, "alice", {"a.png": IMAGE})
    etag = (await client.get(output_url(job_id, path), headers=bearer(tokens["alice"]))).headers["ETag"]
    check = queue_manager_app.listed_output

    def check_then_swap(*args: object) -> object:
        checked = check(*args)
        (volume / path).unlink()
        (volume / path).symlink_to(shadow)
        return checked

    monkeypatch.setattr(queue_manager_app, "listed_output", check_then_swap)
    headers = {"whole": {}, "range": {"Range": "bytes=100-199"}, "unchanged": {"If-None-Match": etag}}[ask]
    answer = await client.get(output_url(job_id, path), headers={**bearer(tokens["alice"]), **headers})
    assert b"root:" not in answer.content
    assert (answer.status_code, answer.content) == {"whole": (200, IMAGE), "range": (206, IMAGE[100:200]),
                                                    "unchanged": (304, b"")}[ask]


def held_open_under(folder: Path) -> list[str]:
    """The files under `folder` this process (the queue manager's, in these tests) holds a descriptor on."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith(f"{folder}/"):
                held.append(target)
    return held


async def test_no_descriptor_is_left_open_after_many_downloads_finished_refused_or_aborted(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tokens: dict[str, str]
) -> None:
    big = os.urandom(1 << 20) * 32  # 32 MiB: far more than the sockets buffer, so an abort cuts a download short
    job_id, [small, large, folder] = await completed_job(queue, client, "alice", {"a.png": IMAGE, "b.mp4": big,
                                                                                 "c": b""})
    (volume / folder).unlink()
    (volume / folder).mkdir()  # listed, looked at, and refused: not a regular file
    alice = bearer(tokens["alice"])
    etag = (await client.get(output_url(job_id, small), headers=alice)).headers["ETag"]
    for _ in range(20):
        assert (await client.get(output_url(job_id, small), headers=alice)).content == IMAGE
        for asked, status in (({"Range": "bytes=-10"}, 206), ({"If-None-Match": etag}, 304)):
            assert (await client.get(output_url(job_id, small), headers={**alice, **asked})).status_code == status
        assert (await client.get(output_url(job_id, folder), headers=alice)).status_code == 404
        async with client.stream("GET", output_url(job_id, large), headers=alice) as download:
            assert len(await anext(download.aiter_raw())) < len(big)
            assert held_open_under(volume), "the download is under way"
        # leaving the block unread closes the connection mid-download
    await wait_until(lambda: not held_open_under(volume))


async def test_a_download_left_unread_is_cut_off_and_its_file_closed(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that stopped reading a download held its connection and the open file for good (aiohttp has no
    write timeout, and the connections' cap never closes one being answered): a 30 MiB output left unread 8 s
    was still all there to read. Each slice must now go within the stall timeout (here 0.5 s), as answers do."""
    monkeypatch.setattr(queue_manager_app, "ANSWER_STALL_TIMEOUT_S", 0.5)
    big = os.urandom(1 << 20) * 30
    job_id, [large] = await completed_job(queue, client, "alice", {"b.mp4": big})
    host, port = queue.url.removeprefix("http://").split(":")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=raw)
    writer.write(f"GET {output_url(job_id, large)} HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {tokens['alice']}\r\n\r\n".encode())
    await writer.drain()
    try:
        await wait_until(lambda: held_open_under(volume))  # the download is under way
        await wait_until(lambda: not held_open_under(volume))  # cut off: the file closed while nothing was read
        received = b""
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await reader.read(1 << 20):
                    received += chunk
        # reset, not closed: a close left the kernel offering what it had queued (2 MB of it measured)
        assert len(received) < 256 * 1024, len(received)
    finally:
        writer.close()
    assert (await client.get(output_url(job_id, large), headers=bearer(tokens["alice"]))).content == big


async def test_a_file_cut_short_while_it_is_sent_ends_the_download_at_once(
    queue: QueueManagerServer, client: httpx.AsyncClient, volume: Path, tokens: dict[str, str],
) -> None:
    """A file truncated on the volume while it was sent: the rest of the Content-Length never came, the connection
    stayed open, and the client waited for it until the queue manager closed the connection (60 s measured)."""
    big = os.urandom(1 << 20) * 32
    job_id, [large] = await completed_job(queue, client, "alice", {"b.mp4": big})
    received = 0
    # reset when the kernel still held some of it for the client, closed otherwise
    with capture_logs() as logs, pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        async with (
            httpx.AsyncClient(base_url=queue.url, timeout=10.0) as reading,
            reading.stream("GET", output_url(job_id, large), headers=bearer(tokens["alice"])) as download,
        ):  # fmt: skip
            async for chunk in download.aiter_raw():
                if not received:
                    os.truncate(volume / large, 1000)
                received += len(chunk)
    assert received < len(big)
    [shrank] = [line for line in logs if line["event"] == "output_shrank"]
    assert shrank["bytes"] == len(big) and shrank["bytes_sent"] < len(big)


@pytest.mark.parametrize("locked", ["file", "job folder"])
async def test_a_listed_file_the_queue_manager_cannot_read_answers_503_saying_so(
    tmp_path: Path, volume: Path, locked: str
) -> None:
    process, url = await start_cli("--db", str(tmp_path / "q.db"), "--outputs-dir", str(volume), env=clean_env(),
                                   preexec_fn=without_capabilities(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
            job_id = (await client.post("/api/jobs", json={"user_id": "alice", "workflow": WORKFLOW})).json()["id"]
            await client.get("/api/workers/next-job", params={"worker_id": "w1"})
            path = f"alice/{job_id}/a.png"
            (volume / path).parent.mkdir(parents=True)
            (volume / path).write_bytes(IMAGE)
            # A worker that wrote it with another owner and mode 600 (or its folder 700).
            (volume / path if locked == "file" else (volume / path).parent).chmod(0o000)
            await client.post("/api/workers/complete-job", params={"job_id": job_id, "worker_id": "w1",
                              "attempt": "1"}, json={"result": {"outputs": [{"path": path}]}})
            answer = await client.get(output_url(job_id, path))
    finally:
        (volume / "alice" / job_id).chmod(0o755)  # for tmp_path's clean-up
        process.terminate()
        async with asyncio.timeout(10):
            log = (await process.stdout.read()).decode()
            await process.wait()
    assert answer.status_code == 503, f"{answer.status_code} {answer.text!r}"
    assert answer.json() == {"detail": (
        f"Output {path} is listed in the job's result but cannot be read by the queue manager (file permissions on "
        "the outputs volume): tell the operator")}
    [line] = [event for event in map(json.loads, log.splitlines()) if event["event"] == "output_unreadable"]
    assert (line["job_id"], line["path"], line["level"]) == (job_id, path, "error")
    # The operator's next step: `ls -ld` what it names (the file itself or the folder it cannot search).
    assert line["error"] == ("Permission denied " + (f"reading {path}" if locked == "file" else
                                                     f"searching alice/{job_id}"))


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.RUNNING, JobStatus.FAILED])
async def test_a_job_not_completed_answers_409_naming_its_state(
    queue: QueueManagerServer, client: httpx.AsyncClient, tokens: dict[str, str], status: JobStatus
) -> None:
    job = queue.store.submit("alice", WORKFLOW)
    if status is not JobStatus.PENDING:
        await client.get("/api/workers/next-job", params={"worker_id": "w1"}, headers=bearer(WORKERS))
    if status is JobStatus.FAILED:
        await client.post("/api/workers/fail-job", params={"job_id": job.id, "worker_id": "w1", "attempt": "1"},
                          json={"error": "boom"}, headers=bearer(WORKERS))
    assert queue.store.get(job.id).status is status
    answer = await client.get(output_url(job.id, f"alice/{job.id}/a.png"), headers=bearer(tokens["alice"]))
    assert (answer.status_code, answer.json()) == (
        409, {"detail": f"Job is {status.value}: only a completed job's outputs are served"})


async def test_a_range_is_answered_206_with_those_bytes(
    queue: QueueManagerServer, client: httpx.AsyncClient, tokens: dict[str, str]
) -> None:
    job_id, [path] = await completed_job(queue, client, "alice", {"clip.mp4": IMAGE})
    answer = await client.get(output_url(job_id, path), headers={**bearer(tokens["alice"]), "Range": "bytes=100-199"})
    assert answer.status_code == 206
    assert answer.content == IMAGE[100:200]
    assert answer.headers["Content-Range"] == f"bytes 100-199/{len(IMAGE)}"
    assert answer.headers["Content-Type"] == "video/mp4"


@pytest.mark.parametrize(("name", "content_type"), [
    ("ComfyUI_00001_.png", "image/png"), ("still.JPG", "image/jpeg"), ("clip.webm", "video/webm"),
    ("page.html", "application/octet-stream"), ("vector.svg", "application/octet-stream"),
    ("notes", "application/octet-stream"),
])  # fmt: skip
async def test_the_headers_never_let_a_browser_run_an_output(
    queue: QueueManagerServer, client: httpx.AsyncClient, tokens: dict[str, str], name: str, content_type: str
) -> None:
    job_id, [path] = await completed_job(queue, client, "alice", {name: b"<script>alert(1)</script>"})
    answer = await client.get(output_url(job_id, path), headers=bearer(tokens["alice"]))
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == content_type
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in answer.headers["Content-Security-Policy"]
    assert answer.headers["Content-Disposition"] == f"inline; filename=\"{name}\"; filename*=UTF-8''{name}"


async def test_a_file_name_is_quoted_safely_in_content_disposition(
    queue: QueueManagerServer, client: httpx.AsyncClient, tokens: dict[str, str]
) -> None:
    name = 'a"b\\c; d=é.png'
    job_id, [path] = await completed_job(queue, client, "alice", {name: IMAGE})
    answer = await client.get(output_url(job_id, path), headers=bearer(tokens["alice"]))
    assert answer.status_code == 200 and answer.content == IMAGE
    assert answer.headers["Content-Disposition"] == (
        "inline; filename=\"a_b_c; d=_.png\"; filename*=UTF-8''a%22b%5Cc%3B%20d%3D%C3%A9.png")


async def test_without_the_setting_the_route_says_outputs_are_not_served_and_how_to_turn_it_on() -> None:
    async with QueueManagerServer() as queue, httpx.AsyncClient(base_url=queue.url) as client:
        job = queue.store.submit("alice", WORKFLOW)
        answer = await client.get(output_url(job.id, f"alice/{job.id}/a.png"))
    assert answer.status_code == 404
    assert "not served by this queue manager" in answer.json()["detail"]
    assert "QUEUE_MANAGER_OUTPUTS_DIR" in answer.json()["detail"]


@pytest.mark.parametrize("by", ["flag", "variable"])
@pytest.mark.parametrize("problem", ["missing", "unreadable", "name-too-long"])
async def test_the_cli_exits_2_when_the_outputs_folder_cannot_be_read(tmp_path: Path, by: str, problem: str) -> None:
    """name-too-long, before: an uncaught OSError (File name too long) from is_dir, a traceback and exit 1."""
    folder = tmp_path / ("o" * 300 if problem == "name-too-long" else "outputs")
    if problem == "unreadable":
        folder.mkdir(mode=0o000)
    env = clean_env(QUEUE_MANAGER_OUTPUTS_DIR=str(folder)) if by == "variable" else clean_env()
    flag = ("--outputs-dir", str(folder)) if by == "flag" else ()
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", str(tmp_path / "q.db"), *flag, env=env, cwd=REPO, timeout_s=20,
        preexec_fn=without_capabilities(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH),
    )  # fmt: skip
    assert code == 2
    if by == "flag" and problem == "name-too-long":  # refused with the other arguments, before anything is opened
        assert err.strip().splitlines()[-1].endswith("argument --outputs-dir: cannot name the folder where the "
                                                     "workers' OUTPUTS_PATH volume is mounted: File name too long")
        return
    [line] = err.strip().splitlines()
    assert line.startswith(f"QUEUE_MANAGER_OUTPUTS_DIR (--outputs-dir) {folder} ")
    assert "unset QUEUE_MANAGER_OUTPUTS_DIR" in line


async def test_the_cli_serves_outputs_from_the_variables_folder(tmp_path: Path, volume: Path) -> None:
    process, url = await start_cli("--db", str(tmp_path / "q.db"),
                                   env=clean_env(QUEUE_MANAGER_OUTPUTS_DIR=str(volume)))
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            answer = await client.get("/api/jobs/no-such-job/outputs/alice/no-such-job/a.png")
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            await process.wait()
    assert (answer.status_code, answer.json()) == (404, {"detail": "Job not found"}), "served: the job is looked for"




NO_PROC = """import sys
from queue_manager import __main__, outputs
outputs.PROC_FDS = sys.argv[1]
sys.exit(__main__.main(sys.argv[2:]))
"""


async def test_the_cli_exits_2_when_proc_self_fd_cannot_reach_its_open_files(tmp_path: Path, volume: Path) -> None:
    """Every download is streamed through /proc/self/fd/N: without /proc, each would answer a bare 404."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", NO_PROC, str(tmp_path / "no-proc" / "self" / "fd"), "--port", "0", "--db",
        str(tmp_path / "q.db"), "--outputs-dir", str(volume), cwd=REPO, env=clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(20):
            _, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 2, err.decode()
    [line] = err.decode().strip().splitlines()
    assert line.startswith(f"QUEUE_MANAGER_OUTPUTS_DIR (--outputs-dir) {volume} cannot be served: ")
    assert "mount /proc" in line and "unset QUEUE_MANAGER_OUTPUTS_DIR" in line


@pytest.mark.parametrize(
    ("result", "listed"),
    [
        ({"outputs": [{"path": "a/b/é.png"}, {"path": 3}, "a/b/c.png", {"name": "x"}, None, [{"path": "d"}]]},
         {"a/b/é.png"}),
        ({"outputs": {"path": "a/b/c.png"}}, set()),  # not a list
        ({"outputs": "a/b/c.png"}, set()),
        ({"images": [{"path": "a/b/c.png"}]}, set()),
        ({"outputs": [{"path": "a/b/\ud800.png"}, {"path": "a/b/ok.png"}]}, {"a/b/ok.png"}),  # no request names it
        ({"outputs": []}, set()),
    ],
    ids=["mixed items", "an object", "a string", "no outputs", "a lone surrogate", "empty"],
)
def test_the_store_lists_only_the_text_paths_of_the_objects_in_result_outputs(
    tmp_path: Path, result: dict, listed: set[str]
) -> None:
    """The route asks the store for `outputs[].path` alone (SQLite picks them out of the stored result): the same
    paths the whole result, loaded into Python, would list, and never an error for an odd result."""
    from queue_manager import JobStore, QueueMode

    store = JobStore(tmp_path / "q.db")
    try:
        job_id = store.submit("alice", {"1": {}}).id
        store.pop_next("w", QueueMode.FIFO)
        store.complete(job_id, result)
        listing = store.output_listing(job_id)
        assert listing is not None
        assert (listing.user_id, listing.status, set(listing.paths)) == ("alice", JobStatus.COMPLETED, listed)
        assert store.output_listing("no-such-job") is None
    finally:
        store.close()


def test_a_stored_result_that_is_not_json_lists_nothing_instead_of_failing(tmp_path: Path) -> None:
    import sqlite3

    from queue_manager import JobStore, QueueMode

    store = JobStore(tmp_path / "q.db")
    try:
        job_id = store.submit("alice", {"1": {}}).id
        store.pop_next("w", QueueMode.FIFO)
        store.complete(job_id, {"outputs": [{"path": "a/b/c.png"}]})
        with contextlib.closing(sqlite3.connect(tmp_path / "q.db")) as other, other:
            other.execute("UPDATE jobs SET result = ? WHERE id = ?", ('{"outputs": [{"path": "a/b/c.png"', job_id))
        listing = store.output_listing(job_id)
        assert listing is not None and listing.paths == frozenset()
    finally:
        store.close()
