"""GET /api/jobs past one page: the X-Next-Cursor header (and Link rel="next") of a page, sent back as `after`,
lists the jobs that follow it, never one twice or one skipped while jobs arrive or leave in between; a page cut
at the 16 MiB size bound says so. The body stays comfy-multi's list."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from queue_manager import QueueManagerServer
from queue_manager.models import JobStatus
from queue_manager.store import LIST_BUDGET_BYTES

from .conftest import FakeClock

Page = tuple[list[str], httpx.Response]


async def page(client: httpx.AsyncClient, **params: Any) -> Page:
    response = await client.get("/api/jobs", params=params)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()], response


async def every_page(client: httpx.AsyncClient, **params: Any) -> list[list[str]]:
    pages = []
    while True:
        ids, response = await page(client, **params)
        pages.append(ids)
        if "X-Next-Cursor" not in response.headers:
            return pages
        params["after"] = response.headers["X-Next-Cursor"]


def joined(pages: list[list[str]]) -> list[str]:
    return [job_id for ids in pages for job_id in ids]


async def test_more_than_1000_jobs_are_listed_in_pages_each_once(queue: QueueManagerServer) -> None:
    submitted = [queue.store.submit(f"user{n % 7}", {"1": {}}).id for n in range(1100)]
    async with httpx.AsyncClient(base_url=queue.url, timeout=30.0) as client:
        first, response = await page(client, limit=500)
        cursor = response.headers["X-Next-Cursor"]
        assert response.headers["Link"] == f'</api/jobs?limit=500&after={cursor}>; rel="next"'
        assert "X-List-Truncated" not in response.headers, "cut by limit, not by size"
        second, response = await page(client, limit=500, after=cursor, token="kept-to-itself")
        link = response.headers["Link"]  # only what lists the jobs is repeated: not another parameter sent
        assert "token" not in link
        followed = await client.get(link.split(">")[0].lstrip("<"))
        pages = [first, second, [job["id"] for job in followed.json()]]
        assert "X-Next-Cursor" not in followed.headers, "the last page says nothing follows"
        assert [len(ids) for ids in pages] == [500, 500, 100]
        assert joined(pages) == submitted

        newest = await every_page(client, limit=1000, order="newest")
        assert [len(ids) for ids in newest] == [1000, 100] and joined(newest) == submitted[::-1]
        pending = await every_page(client, limit=100, status="pending", user_id="user3")
        assert joined(pending) == submitted[3::7]

        exactly, response = await page(client, limit=len(submitted[3::7]), user_id="user3")
        assert exactly == submitted[3::7] and "X-Next-Cursor" not in response.headers, "full, and nothing after"

    # A comfy-multi client never sees any of it: with the extensions off, no header, and `after` is ignored.
    async with QueueManagerServer(extensions=False) as peer, httpx.AsyncClient(base_url=peer.url) as client:
        peer.store.submit("alice", {"1": {}})
        peer.store.submit("alice", {"1": {}})
        response = await client.get("/api/jobs", params={"limit": 1, "after": "nonsense"})
        assert response.status_code == 200 and len(response.json()) == 1
        assert {"x-next-cursor", "link", "x-list-truncated"}.isdisjoint(response.headers)


@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_jobs_arriving_or_leaving_between_pages_never_repeat_or_skip_one(
    queue: QueueManagerServer, client: httpx.AsyncClient, order: str
) -> None:
    before = [queue.store.submit("alice", {"1": {}}).id for _ in range(25)]
    listed: list[str] = []
    arrived: list[str] = []
    params: dict[str, Any] = {"limit": 10, "order": order}
    while True:
        ids, response = await page(client, **params)
        listed += ids
        for _ in range(3):  # others submit between this page and the next
            created = await client.post("/api/jobs", json={"user_id": "bob", "workflow": {"1": {}}})
            arrived.append(created.json()["id"])
        # and one listed job leaves: a cancelled pending job is deleted, which would shift an offset by one
        assert (await client.delete(f"/api/jobs/{ids[0]}")).status_code == 204
        if "X-Next-Cursor" not in response.headers:
            break
        params["after"] = response.headers["X-Next-Cursor"]

    assert len(listed) == len(set(listed)), "no job listed twice"
    if order == "oldest":
        assert listed[: len(before)] == before, "every job there at the start, once, in order"
        assert set(listed[len(before):]) <= set(arrived), "then those that arrived meanwhile"
    else:
        assert listed == before[::-1], "newest first: later arrivals come before the first page, none is skipped"


async def test_finished_jobs_newest_first_page_in_the_order_they_finished_same_instant_and_all(
    queue: QueueManagerServer, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    jobs = [queue.store.submit("alice", {"1": {}}).id for _ in range(11)]
    finished = [jobs[4], jobs[0], jobs[7], jobs[2], jobs[8], jobs[1], jobs[5]]
    for index, job_id in enumerate(finished):
        queue.store.pop_next("w1", queue.mode)
        if index % 3 == 0:
            clock.advance(1.5)  # the rest finish at the same instant as the one before
        queue.store.complete(job_id, {"n": index})
    whole, _ = await page(client, status="completed", order="newest", limit=1000)
    assert whole == finished[::-1], "the last to finish first, whatever the clock said"
    pages = await every_page(client, status="completed", order="newest", limit=2)
    assert joined(pages) == whole and [len(ids) for ids in pages] == [2, 2, 2, 1]

    # cancelled jobs have no completion time (as in comfy-multi): their cursor pages them all the same
    running = [job.id for job in queue.store.list(status=JobStatus.RUNNING)]
    assert len(running) >= 2
    for job_id in running:
        queue.store.cancel(job_id)
    assert joined(await every_page(client, status="cancelled", order="newest", limit=1)) == running[::-1]


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"after": "x"}, "X-Next-Cursor"),
        ({"after": ""}, "X-Next-Cursor"),
        ({"after": "oldest-abc"}, "X-Next-Cursor"),
        ({"after": "oldest-" + "9" * 30}, "X-Next-Cursor"),
        ({"after": "finished-nan-3", "status": "completed", "order": "newest"}, "X-Next-Cursor"),
        ({"after": "finished-inf-3", "status": "completed", "order": "newest"}, "X-Next-Cursor"),
        ({"after": "oldest-5", "order": "newest"}, "oldest order, not newest"),
        ({"after": "newest-5", "status": "failed", "order": "newest"}, "newest order, not finished"),
    ],
)
async def test_a_cursor_that_is_not_one_is_422_naming_after(
    queue: QueueManagerServer, client: httpx.AsyncClient, params: dict[str, str], why: str
) -> None:
    queue.store.submit("alice", {"1": {}})
    response = await client.get("/api/jobs", params=params)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "after"] and why in error["msg"], error


async def test_a_list_cut_at_the_size_bound_says_so_and_its_cursor_fetches_the_rest(
    queue: QueueManagerServer,
) -> None:
    big = "x" * (LIST_BUDGET_BYTES // 3 + 1024)  # three of them pass the bound: two fit
    jobs = [queue.store.submit("alice", {"1": {}}).id for _ in range(4)]
    for job_id in jobs[:3]:
        queue.store.pop_next("w1", queue.mode)
        queue.store.complete(job_id, {"blob": big})
    async with httpx.AsyncClient(base_url=queue.url, timeout=60.0) as client:
        first, response = await page(client, limit=100)
        assert first == jobs[:2]
        assert response.headers["X-List-Truncated"] == "size"
        rest, response = await page(client, limit=100, after=response.headers["X-Next-Cursor"])
        assert rest == jobs[2:], "the next page starts at the job that did not fit"
        assert {"x-list-truncated", "x-next-cursor"}.isdisjoint(response.headers)


def test_every_yields_all_jobs_past_the_size_bound_where_one_list_stops(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What demo/run.py and bench/fault_run.py read: a list with a huge limit stops at the bound unsaid."""
    from queue_manager import store as store_module

    monkeypatch.setattr(store_module, "LIST_BUDGET_BYTES", 5_000)
    jobs = [queue.store.submit("alice", {"1": {}}).id for _ in range(5)]
    for job_id in jobs:
        queue.store.pop_next("w1", queue.mode)
        queue.store.complete(job_id, {"blob": "x" * 3_000})
    assert len(queue.store.list(limit=10**9)) == 1, "one page holds one 3 KB result under a 5 KB bound"
    assert [job.id for job in queue.store.every()] == jobs
    assert [job.id for job in queue.store.every(status=JobStatus.COMPLETED, newest_first=True)] == jobs[::-1]


async def test_lists_answered_at_once_hold_no_more_than_the_answers_budget(
    queue: QueueManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a job's view reserved from the answers' budget: a list (up to 16 MiB of results) did not, so 40 lists
    at once, each left unread for 5 s, took the queue manager to 789 MB and /health to 4 s. A list past the
    budget now waits for room, then is 503 with Retry-After, as a job's view is."""
    import asyncio
    import socket

    from queue_manager import app

    monkeypatch.setattr(app, "ANSWERS_IN_FLIGHT_BYTES", 10_000_000)
    monkeypatch.setattr(app, "ANSWER_BUDGET_WAIT_S", 0.3)
    job = queue.store.submit("alice", {"1": {}})
    queue.store.pop_next("w", queue.mode)
    queue.store.complete(job.id, {"outputs": [], "blob": "x" * 6_000_000})  # more than loopback buffers take
    host, port = queue.url.removeprefix("http://").split(":")
    unread = socket.create_connection((host, int(port)))
    unread.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        unread.sendall(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        async with httpx.AsyncClient(base_url=queue.url, timeout=10) as client:
            async with asyncio.timeout(5):
                while (refused := await client.get("/api/jobs")).status_code == 200:
                    await asyncio.sleep(0.05)  # until the unread list holds its reservation
            assert refused.status_code == 503, refused.text[:300]
            assert refused.headers["Retry-After"] == "1"
            assert refused.json()["detail"].startswith("Busy: answers being sent hold")
            unread.close()  # its reservation ends with it (its write fails or stalls out)
            async with asyncio.timeout(5):
                while (listed := await client.get("/api/jobs")).status_code == 503:
                    await asyncio.sleep(0.05)
            assert [shown["id"] for shown in listed.json()] == [job.id]
    finally:
        unread.close()
