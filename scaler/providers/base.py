"""The one small interface between the scaler loop and whatever runs the workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from scaler.policy import Replica


@dataclass(frozen=True, slots=True)
class BackendView:
    """What the platform reports: its live replicas (``started_at`` in epoch seconds), the deployment status, and
    the replica bounds it holds now as (min, max), or None for a platform that has none to report.

    ``ready``: how many of the replicas serve, when the platform says; None counts every listed replica as ready.
    """

    replicas: tuple[Replica, ...]
    status: str
    bounds: tuple[int, int] | None = None
    ready: int | None = None


class Backend(Protocol):
    async def observe(self) -> BackendView: ...

    async def apply(self, desired: int) -> bool:
        """Pin the replica count to ``desired``; True when something was written, False when already so."""
        ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def aclose(self) -> None: ...
