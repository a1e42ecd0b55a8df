"""The latest keys a worker has seen (the jobs it took, the reports it sent), bounded: the oldest leaves first."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class SeenKeys:
    def __init__(self, memory: int) -> None:
        self._keys: OrderedDict[Hashable, None] = OrderedDict()
        self._memory = memory

    def add(self, key: Hashable) -> bool:
        """True when ``key`` is new (now remembered); False when it was seen already."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._memory:
            self._keys.popitem(last=False)
        return True

    def forget(self, key: Hashable) -> None:
        self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)
