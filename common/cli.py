"""What the programs share on their command line: the container's (comfy-supervisor, comfy-worker) take no arguments,
environment variables configure them, so an argument is a mistake to name rather than ignore; the others read their
numbers as the environment's settings do."""

from __future__ import annotations

import shlex
import sys

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # as a shell reports a process Ctrl-C ended


def refuse_arguments(program: str, hint: str) -> int | None:
    """EXIT_CONFIG, with a line on stderr naming them and ending with ``hint``, when the command line holds
    arguments; None when it holds none."""
    if not sys.argv[1:]:
        return None
    sys.stderr.write(f"{program} takes no arguments, got: {shlex.join(sys.argv[1:])}; {hint}\n")
    return EXIT_CONFIG


def integer(text: str) -> int:
    """An argparse type: a whole number in ASCII (see ascii_only)."""
    return int(ascii_only(text))


def number(text: str) -> float:
    """An argparse type: a number in ASCII (see ascii_only)."""
    return float(ascii_only(text))


def ascii_only(text: str) -> str:
    """``text``, refused (ValueError) unless it is ASCII: int() and float() read any script's digits (Arabic-Indic
    12 as 12, a double-struck 1 as 1), which the environment's settings (pydantic) refuse."""
    if not text.isascii():
        raise ValueError(f"{text!r} is not written in ASCII")
    return text


def interrupted(program: str, when: str = "while starting") -> int:
    """EXIT_INTERRUPTED, with one line on stderr in place of a KeyboardInterrupt traceback: for a Ctrl-C (SIGINT)
    before ``program`` takes the signal itself."""
    sys.stderr.write(f"{program}: interrupted (SIGINT) {when}; exiting\n")
    return EXIT_INTERRUPTED
