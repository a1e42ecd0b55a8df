"""The field a 400 names for a body that is not strict JSON is a path of the client's own keys: named cut short and
escaped, never the keys sent back as they came."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from queue_manager import JobStatus, QueueManagerServer
from queue_manager.validation import MAX_KEY_CHARS_NAMED

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def queue() -> AsyncIterator[QueueManagerServer]:
    async with QueueManagerServer() as server:
        yield server


@pytest.fixture
async def client(queue: QueueManagerServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=queue.url, timeout=30.0) as http:
        yield http


async def test_a_long_key_is_named_cut_short_not_sent_back(
    client: httpx.AsyncClient, queue: QueueManagerServer
) -> None:
    """Before: the 400 held the whole 5 MB key (a 5 000 056-byte answer, the request sent back); 7 MB of keys 64
    deep made a 6.3 MB answer."""
    key = "k" * 5_000_000
    wide = await client.post("/api/jobs", headers=JSON,
                             content=f'{{"user_id":"a","workflow":{{"{key}":NaN}}}}'.encode())
    deep_key = "x" * 100_000
    deep = await client.post("/api/jobs", headers=JSON, content=(
        '{"user_id":"a","workflow":' + f'{{"{deep_key}":' * 70 + "1" + "}" * 70 + "}").encode())
    assert (wide.status_code, deep.status_code) == (400, 400)
    named = "k" * MAX_KEY_CHARS_NAMED + "…"
    assert wide.json()["detail"] == f"workflow.{named}: NaN is not allowed (strict JSON)"
    assert len(deep.content) < 64 * (MAX_KEY_CHARS_NAMED + 2) + 200
    assert deep.json()["detail"].endswith("nested deeper than 64 levels")
    assert queue.store.counts()[JobStatus.PENDING] == 0


async def test_keys_with_lone_surrogates_nested_past_the_parsers_limit_are_400_not_500(
    client: httpx.AsyncClient, queue: QueueManagerServer
) -> None:
    """Before: 500 "Internal Server Error" and a traceback (UnicodeEncodeError): the path named the keys as they
    were, lone surrogates no answer can encode."""
    body = '{"user_id":"a","workflow":' + '{"\\ud800":' * 3000 + "1" + "}" * 3000 + "}"
    response = await client.post("/api/jobs", headers=JSON, content=body.encode())
    assert response.status_code == 400
    assert response.json()["detail"].startswith("workflow.\\ud800.\\ud800.")
    assert response.json()["detail"].endswith(": nested deeper than 64 levels")
    assert (await client.get("/health")).json()["status"] == "healthy"


@pytest.mark.parametrize("value", [b"0", b"{}", b"[]"])
async def test_a_body_of_over_a_million_values_is_400_naming_the_count(
    client: httpx.AsyncClient, queue: QueueManagerServer, value: bytes
) -> None:
    """Counted before parsing from its commas, brackets and braces (docs/queue-manager-api.md): each parsed value
    costs ~150 bytes, so a 50-MB body of empty objects peaked at 2.4 GB. A million values and the envelope's: 2-3 MB."""
    body = b'{"user_id":"a","workflow":{"1":[' + b",".join([value] * 1_000_000) + b"]}}"
    response = await client.post("/api/jobs", headers=JSON, content=body)
    assert response.status_code == 400
    assert response.json() == {"detail": "body: more than 1000000 JSON values (items, keys, arrays, objects)"}
    assert queue.store.counts()[JobStatus.PENDING] == 0
