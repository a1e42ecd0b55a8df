"""A Range on a job's output is answered as RFC 9110 says (14.1.2, 13.1.5): an If-Range naming another version of the
file gets the whole file, never that version's bytes spliced onto the client's, and an empty suffix is unsatisfiable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from queue_manager import QueueManagerServer
from queue_manager.participants import add_participant

from .test_outputs import IMAGE, OPERATOR, WORKERS, completed_job, output_url
from .test_worker_token import bearer


@pytest.fixture
async def served(tmp_path: Path, volume: Path) -> AsyncIterator[tuple[QueueManagerServer, httpx.AsyncClient, str]]:
    alice = add_participant(tmp_path / "participants", "alice")
    async with (
        QueueManagerServer(token=OPERATOR, worker_token=WORKERS, participants_file=tmp_path / "participants",
                           outputs_dir=volume) as queue,
        httpx.AsyncClient(base_url=queue.url, timeout=5.0) as client,
    ):  # fmt: skip
        yield queue, client, alice


@pytest.mark.parametrize(
    ("validator", "status"),
    [("old", 200), ("current", 206), ("current, weak", 200), ("not a validator", 200)],
)
async def test_a_resume_whose_if_range_names_another_version_gets_the_whole_file(
    served: tuple[QueueManagerServer, httpx.AsyncClient, str], volume: Path, validator: str, status: int
) -> None:
    """Before, aiohttp read If-Range only as a date: a download resumed with the ETag of a file rewritten since got
    206 and the new file's bytes from the offset on, spliced onto the old ones it had."""
    queue, client, alice = served
    job_id, [path] = await completed_job(queue, client, "alice", {"clip.mp4": IMAGE})
    old = (await client.get(output_url(job_id, path), headers=bearer(alice))).headers["ETag"]
    rewritten = IMAGE[::-1] + b"more"
    (volume / path).write_bytes(rewritten)
    current = (await client.get(output_url(job_id, path), headers=bearer(alice))).headers["ETag"]
    assert current != old
    if_range = {"old": old, "current": current, "current, weak": f"W/{current}", "not a validator": "yesterday"}
    answer = await client.get(output_url(job_id, path), headers={
        **bearer(alice), "Range": "bytes=100-", "If-Range": if_range[validator]})  # fmt: skip
    assert answer.status_code == status, answer.headers
    if status == 206:
        assert answer.content == rewritten[100:]
        assert answer.headers["Content-Range"] == f"bytes 100-{len(rewritten) - 1}/{len(rewritten)}"
    else:
        assert answer.content == rewritten
        assert "Content-Range" not in answer.headers


@pytest.mark.parametrize("suffix", ["bytes=-0", "bytes=-000"])
async def test_a_suffix_of_zero_bytes_is_416_not_the_whole_file(
    served: tuple[QueueManagerServer, httpx.AsyncClient, str], suffix: str
) -> None:
    """Before, `Range: bytes=-0` (the last 0 bytes) was answered 206 with the whole file: aiohttp read it as `0-`."""
    queue, client, alice = served
    job_id, [path] = await completed_job(queue, client, "alice", {"clip.mp4": IMAGE})
    answer = await client.get(output_url(job_id, path), headers={**bearer(alice), "Range": suffix})
    assert (answer.status_code, answer.content) == (416, b"")
    assert answer.headers["Content-Range"] == f"bytes */{len(IMAGE)}"
    last = await client.get(output_url(job_id, path), headers={**bearer(alice), "Range": "bytes=-1"})
    assert (last.status_code, last.content) == (206, IMAGE[-1:])


@pytest.mark.parametrize("asked", ["bytes=0-1,5-6", "bytes=0-1, -2", "bytes=100-199,0-9", "items=0-5"])
async def test_a_set_of_ranges_or_another_unit_gets_the_whole_file_not_416(
    served: tuple[QueueManagerServer, httpx.AsyncClient, str], asked: str
) -> None:
    """Before, aiohttp read one range only and answered 416 to the rest, telling the client that ranges the file
    holds could not be met. A server may ignore Range, and must one in a unit it does not know (RFC 9110 14.2)."""
    queue, client, alice = served
    job_id, [path] = await completed_job(queue, client, "alice", {"clip.mp4": IMAGE})
    answer = await client.get(output_url(job_id, path), headers={**bearer(alice), "Range": asked})
    assert (answer.status_code, answer.content) == (200, IMAGE), answer.headers
    assert "Content-Range" not in answer.headers


@pytest.mark.parametrize("asked", ["bytes=-1", "bytes=-500"])
async def test_a_suffix_of_an_empty_output_gets_it_whole_not_416(
    served: tuple[QueueManagerServer, httpx.AsyncClient, str], asked: str
) -> None:
    """A suffix of more than 0 bytes is satisfiable, and of a file shorter than it is the whole file (RFC 9110
    14.1.1-2): an empty output is that, which no Content-Range can name (a 206 of 0 bytes), so it is sent as a
    200. Before, 416: the client was told the file did not hold what it asked for."""
    queue, client, alice = served
    job_id, [path] = await completed_job(queue, client, "alice", {"empty.png": b""})
    answer = await client.get(output_url(job_id, path), headers={**bearer(alice), "Range": asked})
    assert (answer.status_code, answer.content) == (200, b""), answer.headers
    assert "Content-Range" not in answer.headers
    beyond = await client.get(output_url(job_id, path), headers={**bearer(alice), "Range": "bytes=0-"})
    assert beyond.status_code == 416  # no first byte to start from: unsatisfiable, as before
