"""Text that arrived as JSON: Python's decoder lets lone UTF-16 surrogates through (an escaped ``\\ud800``, or raw
bytes read with "surrogatepass"), and no UTF-8 answer, file name or log line can carry one."""

from __future__ import annotations


def encodes_as_utf8(text: str) -> bool:
    """False when ``text`` holds a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
