"""Text from a peer or a client: lone UTF-16 surrogates (Python's JSON decoder lets an escaped ``\\ud800``
through, as does reading raw bytes with "surrogatepass"), which no UTF-8 answer, file name or log line can carry;
characters a terminal obeys or hides rather than shows."""

from __future__ import annotations


def encodes_as_utf8(text: str) -> bool:
    """False when ``text`` holds a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escape_controls(text: str, *, keep_lines: bool = False) -> str:
    """``text`` as a terminal shows it rather than obeys it: each character that is not printable escaped
    (``\\x1b``, ``\\u202e``), but newlines and tabs when ``keep_lines``. An ESC sequence recolours, retitles or
    clears a terminal; a CR writes a line over, a newline or U+2028 forges one; a bidi override (U+202E) shows the
    text after it reversed; a zero-width character hides in a name. Printable letters of any script stay."""
    if text.isprintable():
        return text
    kept = "\n\t" if keep_lines else ""
    return "".join(c if c.isprintable() or c in kept else c.encode("unicode_escape").decode() for c in text)
