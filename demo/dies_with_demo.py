"""`python -m demo.dies_with_demo COMMAND...`: COMMAND in this process's place, killed when the demo dies.

A replica stopped by SIGTERM lets its job finish and reports it to the queue manager. The demo's queue manager
dies with the demo: a demo killed outright (SIGKILL) left its replicas retrying it until their 30 s stop deadline,
their ComfyUI with them."""

from __future__ import annotations

import os
import signal
import sys

from common.children import die_with_parent


def main(argv: list[str]) -> None:
    die_with_parent(os.getppid(), signal.SIGKILL)()  # kept across the exec
    os.execv(argv[0], argv)  # noqa: S606 - the demo's own replica command, in place of this process


if __name__ == "__main__":
    main(sys.argv[1:])
