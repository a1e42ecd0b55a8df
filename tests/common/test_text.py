"""What reaches a terminal from a peer or a client is shown, never obeyed: one rule for the scaler's and the
deploy's output, the console log and the demo."""

from __future__ import annotations

import io

import pytest
import structlog

from common.logs import configure_logging
from common.text import escape_controls
from demo.cli import shown

# Each a character that isprintable() rejects and that C0/C1 escaping let through before.
HIDDEN = {
    "\u202e": "\\u202e",  # RIGHT-TO-LEFT OVERRIDE: what follows shows reversed
    "\u2066": "\\u2066",  # LEFT-TO-RIGHT ISOLATE
    "\u2028": "\\u2028",  # LINE SEPARATOR: a terminal may break the line there, a forged line
    "\u2029": "\\u2029",  # PARAGRAPH SEPARATOR
    "\u200b": "\\u200b",  # ZERO WIDTH SPACE: hides in a name
}


@pytest.mark.parametrize("keep_lines", [False, True])
@pytest.mark.parametrize(("raw", "escaped"), HIDDEN.items(), ids=lambda value: ascii(value))
def test_a_character_that_reorders_or_hides_text_is_escaped(raw: str, escaped: str, keep_lines: bool) -> None:
    """Before: only C0/C1 controls were escaped: "refused: \u202egnp.exe" showed as "refused: exe.png"."""
    assert escape_controls(f"refused: {raw}gnp.exe", keep_lines=keep_lines) == f"refused: {escaped}gnp.exe"


def test_controls_and_escape_sequences_are_escaped_and_printable_letters_of_any_script_kept() -> None:
    text = "é 画 ok\x1b]0;owned\x07\x1b[2J\x9b\r\n\tend"
    assert escape_controls(text) == "é 画 ok\\x1b]0;owned\\x07\\x1b[2J\\x9b\\r\\n\\tend"
    assert escape_controls(text, keep_lines=True) == "é 画 ok\\x1b]0;owned\\x07\\x1b[2J\\x9b\\r\n\tend"
    assert escape_controls("é 画 plain") == "é 画 plain"


def test_the_demo_and_escape_controls_show_a_peers_text_alike() -> None:
    hostile = "node \u202egnp\u200b\u2028forged\x1b[2J\x9b é 画 [bold]"
    assert shown(hostile) == escape_controls(hostile).replace("[bold]", "\\[bold]")


def test_a_bidi_override_in_a_console_log_line_is_escaped_and_its_letters_kept() -> None:
    """The console log escaped an event's C0/C1 controls only: an error quoting a peer's "\u202e" showed the rest of
    the line reversed on the operator's terminal."""
    buffer = io.StringIO()
    configure_logging("console", "info", stream=buffer)
    try:
        structlog.get_logger().warning("Job X failed: node 画 \u202egnp.exe\u2028forged")
    finally:
        structlog.reset_defaults()
    line = buffer.getvalue()
    assert "Job X failed: node 画 \\u202egnp.exe\\u2028forged" in line, line
    assert not set(HIDDEN) & set(line), ascii(line)


def test_a_console_logs_event_and_traceback_are_escaped_in_place_the_traceback_keeping_its_lines() -> None:
    """The event and a traceback are text, not values: escaped where they stand, not quoted like a value (a
    traceback's lines are not printable characters: quoted, the console renderer could not print it at all)."""
    buffer = io.StringIO()
    configure_logging("console", "info", stream=buffer)
    log = structlog.get_logger()
    try:
        log.warning("Job X failed: \x1b[2J node", node="a\x1bb")
        try:
            raise RuntimeError("boom \x1b]0;owned\x07 end")
        except RuntimeError:
            log.exception("Job Y crashed")
    finally:
        structlog.reset_defaults()
    text = buffer.getvalue()
    assert "Job X failed: \\x1b[2J node" in text and "'Job X" not in text, ascii(text)  # not quoted
    assert "'a\\x1bb'" in text, ascii(text)  # a value: quoted
    traceback = text[text.index("Job Y crashed") :].splitlines()[1:]
    assert traceback[0] == "Traceback (most recent call last):", ascii(text)
    assert traceback[-1] == "RuntimeError: boom \\x1b]0;owned\\x07 end", ascii(text)
