"""A peer's answer quoted in an error costs what the quote costs, whatever the answer: a proxy's error page or a
broken ComfyUI answering megabytes within the readers' limits must neither stall the event loop (the worker's
shares it with its health server, the scaler's with its tick) nor multiply in memory on its way into a message."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from aiohttp import web

from scaler.queue_status import QueueStatusError, QueueStatusReader
from worker.comfyui import ComfyUIClient, ComfyUIUnavailable
from worker.queue_client import PollError, QueueClient, TransientHTTPError

from ..conftest import LoopbackPeer, LoopThread

ONE_MIB = 1 << 20
# Scrubbing a quote once read the whole answer again from every letter of it: 1 MiB of letters took ~13 minutes
# (40 KB: 1.2 s; quadratic). Now milliseconds: the guard only tells a stall from an answer.
STALL_GUARD_S = 60.0


class ErrorPage(LoopbackPeer):
    """A loopback server answering every request with ``status`` and ``body`` (text/html, as a proxy's page)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body
        super().__init__()

    async def answer(self, _request: web.Request) -> web.Response:
        return web.Response(status=self.status, body=self.body, content_type="text/html")


@pytest.fixture
async def letters_502() -> AsyncIterator[ErrorPage]:
    async with ErrorPage(502, b"a" * ONE_MIB) as page:
        yield page


async def in_own_loop(call: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """``call()`` on an event loop in a thread of its own, so a call that stalls its loop does not hold the test's
    loop (and its server) with it: it fails the test at STALL_GUARD_S, or, in one C call that keeps the GIL (a
    regular expression's pass), as soon as that call returns."""
    with LoopThread() as other:
        done = asyncio.run_coroutine_threadsafe(call(), other.loop)
        return await asyncio.wait_for(asyncio.wrap_future(done), STALL_GUARD_S)


async def test_a_megabyte_error_page_to_a_workers_report_is_quoted_in_200_characters(letters_502: ErrorPage):
    async def report() -> None:
        queue = QueueClient(letters_502.url, "worker-1", report_budget_s=0.2, retry_initial_s=0.05)
        try:
            await queue.fail_job("job-1", "boom", attempt=1)
        finally:
            await queue.aclose()

    with pytest.raises(TransientHTTPError) as raised:
        await in_own_loop(report)
    assert str(raised.value) == "HTTP 502: " + "a" * 200


async def test_a_megabyte_of_non_json_from_comfyui_is_quoted_in_200_characters():
    async def history() -> None:
        comfy = ComfyUIClient(page.url, timeout_s=10)
        try:
            await comfy.history("p1")
        finally:
            await comfy.aclose()

    async with ErrorPage(200, b"a" * ONE_MIB) as page:
        with pytest.raises(ComfyUIUnavailable) as raised:
            await in_own_loop(history)
    assert str(raised.value) == "ComfyUI GET /history/p1 answered non-JSON: '" + "a" * 199


async def test_a_megabyte_of_non_json_to_the_scalers_status_read_is_quoted_in_200_characters():
    async def read() -> None:
        async with QueueStatusReader(page.url) as reader:
            await reader.read()

    async with ErrorPage(200, b"a" * ONE_MIB) as page:
        with pytest.raises(QueueStatusError) as raised:
            await in_own_loop(read)
    assert str(raised.value) == "queue status is not JSON: " + "a" * 200


async def test_an_error_page_to_a_workers_poll_is_cut_before_its_white_space_is_folded():
    """The poll's error quoted the page with its white space folded, the whole page split into words first: a
    63 MiB page of short words took the worker 13.8 s and 1.58 GB of RSS; this one, 8 MiB, ~200 MB."""
    body = b"ab " * (8 * ONE_MIB // 3)
    async with ErrorPage(502, body) as page:
        queue = QueueClient(page.url, "worker-1")
        tracemalloc.start()
        try:
            with pytest.raises(PollError) as raised:
                await queue.next_job()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await queue.aclose()
    assert str(raised.value) == "queue manager answered HTTP 502: " + "ab " * 66 + "a…"
    # What reading the answer costs (its bytes, the response's copy, the text): never the page's words.
    assert peak < 6 * len(body), f"{peak >> 20} MiB at peak for an {len(body) >> 20} MiB page"
