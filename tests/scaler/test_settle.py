"""scaler.settle.settled: every peer's outcome, but a cancellation is never taken for one."""

from __future__ import annotations

import asyncio

import pytest

from scaler.settle import settled


async def answer(value: object) -> object:
    await asyncio.sleep(0)
    return value


async def fail(exc: BaseException) -> object:
    await asyncio.sleep(0)
    raise exc


async def test_each_call_s_result_or_exception_comes_back_in_order():
    refused = ConnectionError("refused")
    assert await settled([answer(1), fail(refused), answer("three")]) == [1, refused, "three"]


async def test_a_cancellation_is_raised_not_returned():
    with pytest.raises(asyncio.CancelledError):
        await settled([answer(1), fail(asyncio.CancelledError())])
