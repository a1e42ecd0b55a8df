"""Run calls to several peers at once and take each one's outcome, as the scaler does with its providers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def settled(calls: Iterable[Awaitable[T]]) -> list[T | Exception]:
    """Each call's result or the exception it raised, in order; one peer's failure does not stop the others.

    A cancellation or an exit (a ``BaseException`` that is not an ``Exception``) is not a peer's failure: it is
    raised, so a call cut short is never taken for a result.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result
    return results  # type: ignore[return-value]  # only results and Exceptions are left
