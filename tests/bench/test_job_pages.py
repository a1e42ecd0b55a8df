"""bench/job_pages against a server whose pages never end, or that refuses them."""

from __future__ import annotations

import itertools

import httpx
import pytest
from aiohttp import web

from bench.job_pages import list_all
from tests.conftest import served


def pages(next_cursor) -> web.Application:
    """A GET /api/jobs answering one job a page, each followed by ``next_cursor()``."""

    async def jobs(_request: web.Request) -> web.Response:
        return web.json_response([{"id": "x"}], headers={"X-Next-Cursor": next_cursor()})

    app = web.Application()
    app.router.add_get("/api/jobs", jobs)
    return app


@pytest.mark.timeout(30)
async def test_a_next_page_cursor_that_never_moves_on_fails_the_listing_naming_it() -> None:
    """Before, the bench asked for the same page for ever, its list of page times growing without limit."""
    async with served(pages(lambda: "stuck")) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        with pytest.raises(RuntimeError, match="gave the next-page cursor 'stuck' twice, after 2 jobs"):
            await list_all(client, {"limit": 1}, jobs=100)


@pytest.mark.timeout(30)
async def test_pages_past_the_jobs_there_are_fail_the_listing() -> None:
    counter = itertools.count()
    async with served(pages(lambda: str(next(counter)))) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        with pytest.raises(RuntimeError, match="listed 6 pages \\(6 jobs\\) of 5 jobs, and more"):
            await list_all(client, {"limit": 1}, jobs=5)


def refusing(status: int, body: str, content_type: str) -> web.Application:
    async def jobs(_request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/api/jobs", jobs)
    return app


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("status", "body", "content_type"), [
    (401, '{"detail": "Not authenticated"}', "application/json"),
    (500, "<html><body>500 Internal Server Error</body></html>", "text/html"),
    (200, '{"detail": "not a list"}', "application/json"),
])  # fmt: skip
async def test_a_page_refused_or_not_a_list_fails_the_listing_naming_the_answer(
    status: int, body: str, content_type: str
) -> None:
    """Before, a 401's JSON was counted as 1 job listed (len of its object) and the bench went on to print its
    figures; a 500's HTML raised a JSONDecodeError that named neither the request nor the status."""
    async with served(refusing(status, body, content_type)) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
        with pytest.raises(RuntimeError, match=f"^GET /api/jobs answered {status}, not a list of jobs: ") as raised:
            await list_all(c, {"limit": 1}, jobs=5)
    assert body in str(raised.value)
