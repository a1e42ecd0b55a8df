"""What the container's programs (comfy-supervisor, comfy-worker) share on their command line: environment
variables configure them, so an argument is a mistake to name rather than ignore."""

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


def interrupted(program: str, when: str = "while starting") -> int:
    """EXIT_INTERRUPTED, with one line on stderr in place of a KeyboardInterrupt traceback: for a Ctrl-C (SIGINT)
    before ``program`` takes the signal itself."""
    sys.stderr.write(f"{program}: interrupted (SIGINT) {when}; exiting\n")
    return EXIT_INTERRUPTED
