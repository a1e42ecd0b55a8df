"""The field a 400 names for a body that is not strict JSON is a path of the client's own keys: named cut short and
escaped, never the keys sent back as they came."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from common.json_depth import MAX_JSON_DEPTH
from queue_manager import JobStatus, QueueManagerServer
from queue_manager.validation import MAX_JSON_VALUES, MAX_KEY_CHARS_NAMED, RefusedJson, strict_json_loads

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


def refusal(body: bytes) -> str:
    with pytest.raises(RefusedJson) as refused:
        strict_json_loads(body)
    return str(refused.value)


def nested(levels: int, kinds: str) -> bytes:
    """``levels`` containers one inside another, each an object {"k": …} or an array […], by ``kinds`` in turn."""
    kind = [kinds[level % len(kinds)] for level in range(levels)]
    opening = "".join('{"k":' if each == "{" else "[" for each in kind)
    closing = "".join("}" if each == "{" else "]" for each in reversed(kind))
    return (opening + "1" + closing).encode()


@pytest.mark.parametrize("kinds", ["{", "[", "{["], ids=["objects", "arrays", "both"])
def test_nesting_a_level_past_the_limit_is_refused_naming_the_same_path_however_deep(kinds: str) -> None:
    """64 levels parse; 65 are refused naming the keys down to the 65th (an array's level as 0), and a body 3000
    deep, past where Python's parser gives up, names the very same path."""
    assert strict_json_loads(nested(MAX_JSON_DEPTH, kinds))
    path = ".".join("k" if kinds[level % len(kinds)] == "{" else "0" for level in range(MAX_JSON_DEPTH))
    named = refusal(nested(MAX_JSON_DEPTH + 1, kinds))
    assert named == f"{path}: nested deeper than {MAX_JSON_DEPTH} levels"
    assert refusal(nested(3000, kinds)) == named


def test_a_million_values_parse_and_one_more_is_refused() -> None:
    """Counted as each array's items and the array itself: 999 999 zeros in one array are the million."""
    zeros = [b"0"] * (MAX_JSON_VALUES - 1)
    assert len(strict_json_loads(b"[" + b",".join(zeros) + b"]")) == MAX_JSON_VALUES - 1
    too_many = refusal(b"[" + b",".join([*zeros, b"0"]) + b"]")
    assert too_many == f"body: more than {MAX_JSON_VALUES} JSON values (items, keys, arrays, objects)"


def test_a_key_is_named_whole_up_to_the_limit_and_a_number_out_of_range_by_its_first_30_characters() -> None:
    key = "k" * MAX_KEY_CHARS_NAMED
    assert refusal(f'{{"{key}": NaN}}'.encode()) == f"{key}: NaN is not allowed (strict JSON)"
    assert refusal(f'{{"{key}k": NaN}}'.encode()) == f"{key}…: NaN is not allowed (strict JSON)"
    number = "1" + "0" * 100 + "e999"
    assert refusal(f'{{"seed": {number}}}'.encode()) == f"seed: number {number[:30]} is out of range"
