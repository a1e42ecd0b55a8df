"""How deep JSON may nest: what the queue manager refuses at submission, and the worker before ComfyUI."""

from __future__ import annotations

from typing import Any

# A workflow is ~5 levels deep; metadata rarely more. Beyond this a body is an attack, not a job.
MAX_JSON_DEPTH = 64


def deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether dicts and lists nest more than ``limit`` levels in ``value`` (walked without recursion)."""
    stack = [(value, 0)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth >= limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False
