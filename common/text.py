"""Text from a peer or a client: lone UTF-16 surrogates (Python's JSON decoder lets an escaped ``\\ud800``
through, as does reading raw bytes with "surrogatepass"), which no UTF-8 answer, file name or log line can carry;
control characters, which a terminal obeys rather than shows."""

from __future__ import annotations

import re

# An ESC sequence recolours, retitles or clears a terminal; a CR writes a line over, a newline forges one.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROLS_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def encodes_as_utf8(text: str) -> bool:
    """False when ``text`` holds a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escape_controls(text: str, *, keep_lines: bool = False) -> str:
    """``text`` as a terminal shows it rather than obeys it: each control character escaped (``\\x1b``), but
    newlines and tabs when ``keep_lines``."""
    controls = _CONTROLS_BUT_LINES if keep_lines else _CONTROLS
    return controls.sub(lambda found: found[0].encode("unicode_escape").decode(), text)
