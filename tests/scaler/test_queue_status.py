"""QueueStatusReader against the queue manager stand-in: counts, bearer token, retries, bad answers."""

from __future__ import annotations

import pytest
from aiohttp import web

from queue_manager.server import QueueManagerServer
from scaler.queue_status import MAX_PLAUSIBLE_COUNT, QueueStatusError, QueueStatusReader

from ..conftest import served

WORKFLOW = {"1": {"class_type": "Noop", "inputs": {}}}


async def test_reads_pending_and_running(qm):
    for _ in range(3):
        qm.store.submit("alice", WORKFLOW)
    qm.store.pop_next("w1", qm.mode)
    async with QueueStatusReader(qm.url) as reader:
        status = await reader.read()
    assert (status.pending_jobs, status.running_jobs) == (2, 1)


async def test_sends_the_bearer_token():
    async with QueueManagerServer(token="s3cret") as server:
        async with QueueStatusReader(server.url, token="s3cret") as reader:
            assert (await reader.read()).pending_jobs == 0
        async with QueueStatusReader(server.url, token="wrong") as reader:
            with pytest.raises(QueueStatusError, match="401"):
                await reader.read()


async def test_a_refusal_names_the_setting_behind_it(qm):
    """`comfy-scaler status` showed `queue status answered HTTP 401: {"detail": "Not authenticated"}` (or 404 for
    a QUEUE_MANAGER_URL ending in /api), naming no setting, where the worker named QUEUE_MANAGER_TOKEN."""
    async with QueueManagerServer(token="s3cret") as server:
        for token, named in ((None, "QUEUE_MANAGER_TOKEN is unset"), ("wrong", "QUEUE_MANAGER_TOKEN is wrong")):
            async with QueueStatusReader(server.url, token=token) as reader:
                with pytest.raises(QueueStatusError, match=f"HTTP 401: .*: {named}$"):
                    await reader.read()
    qm.faults.inject("queue-status", status=403, times=2)  # a proxy in front refusing: the token too
    for token, named in ((None, "QUEUE_MANAGER_TOKEN is unset"), ("a-token", "QUEUE_MANAGER_TOKEN is wrong")):
        async with QueueStatusReader(qm.url, token=token, attempts=1) as reader:
            with pytest.raises(QueueStatusError, match=f"HTTP 403: .*: {named}$"):
                await reader.read()
    async with QueueStatusReader(f"{qm.url}/api") as reader:
        with pytest.raises(QueueStatusError) as refused:
            await reader.read()
    assert f"(GET {qm.url}/api/api/queue/status): QUEUE_MANAGER_URL must be the queue manager's base URL" in str(
        refused.value
    )


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retries_a_restarting_manager_within_the_read(qm, status: int):
    """A manager restarting (503), overloaded (429, 500) or behind a proxy that lost it for a moment (502, 504)."""
    qm.faults.inject("queue-status", status=status, times=2)
    async with QueueStatusReader(qm.url, attempts=3, retry_initial_s=0.01) as reader:
        assert (await reader.read()).pending_jobs == 0


async def test_a_status_with_the_counts_alone_reads_no_finished_jobs(qm):
    """Scaling needs the pending and running counts only: a status without the finished ones is read, as 0."""
    qm.faults.inject("queue-status", status=200, body={"pending_jobs": 2, "running_jobs": 1})
    async with QueueStatusReader(qm.url, attempts=1) as reader:
        status = await reader.read()
    assert (status.pending_jobs, status.running_jobs, status.completed_jobs, status.failed_jobs, status.mode) == (
        2, 1, 0, 0, "fifo"
    )  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        "<html>502 Bad Gateway</html>",
        {"pending_jobs": -1, "running_jobs": 0},
        {"running_jobs": 0},
        ["not", "a", "dict"],
        {"pending_jobs": 10**400, "running_jobs": 0},  # planning walks every queued job: this never ends
        {"pending_jobs": 0, "running_jobs": 10**12},
        "[" * 100_000 + "]" * 100_000,  # JSON, nested past what the parser reads (RecursionError)
    ],
    ids=["html", "negative", "missing", "a-list", "pending-10e400", "running-10e12", "nested-past-the-parser"],
)
async def test_a_bad_answer_is_an_error_not_a_zero(qm, body):
    qm.faults.inject("queue-status", status=200, body=body)
    async with QueueStatusReader(qm.url, attempts=1) as reader:
        with pytest.raises(QueueStatusError, match=r"^queue status "):  # names what it read, for the log's reason
            await reader.read()


async def test_a_count_of_exactly_the_most_believed_is_read_and_one_more_is_refused(qm):
    async with QueueStatusReader(qm.url, attempts=1) as reader:
        qm.faults.inject("queue-status", status=200, body={"pending_jobs": MAX_PLAUSIBLE_COUNT, "running_jobs": 0})
        assert (await reader.read()).pending_jobs == MAX_PLAUSIBLE_COUNT
        qm.faults.inject("queue-status", status=200, body={"pending_jobs": MAX_PLAUSIBLE_COUNT + 1, "running_jobs": 0})
        with pytest.raises(QueueStatusError, match="pending_jobs=1000001: more than 1000000 is not a plausible count"):
            await reader.read()


async def test_an_unreachable_manager_is_an_error():
    async with QueueStatusReader("http://127.0.0.1:9", attempts=2, retry_initial_s=0.01) as reader:
        with pytest.raises(QueueStatusError, match="cannot reach"):
            await reader.read()


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("https://qm.example/api/queue/status", "https://qm.example"),
        ("https://qm.example/api/queue/status?token=hunter22", "https://qm.example/api/queue/status?token=***"),
        ("/qm/api/queue/status", "{url}/qm"),
    ],
)
async def test_a_redirect_is_named_with_where_it_leads_not_followed(location, shown):
    """Before: `queue status is not JSON: 301: Moved Permanently`, naming neither the status nor where it led (an
    http:// QUEUE_MANAGER_URL to an https-only host)."""
    asked = []

    async def moved(request: web.Request) -> web.Response:
        asked.append(request.path)
        raise web.HTTPMovedPermanently(location)

    app = web.Application()
    app.router.add_get("/{path:.*}", moved)
    async with served(app) as url, QueueStatusReader(url, token="s3cret", attempts=1) as reader:
        with pytest.raises(QueueStatusError) as refused:
            await reader.read()
    assert str(refused.value) == (
        f"queue status answered HTTP 301 redirect to {shown.format(url=url)} — set QUEUE_MANAGER_URL to it"
    )
    assert asked == ["/api/queue/status"], "a redirect is not followed"
