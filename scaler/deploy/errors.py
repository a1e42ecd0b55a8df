"""What every provider's deploy shares: the exit codes, the error an operator must fix, the options misused."""

from __future__ import annotations

import argparse

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class DeployError(Exception):
    """A problem the operator must fix; the message says what."""


def misused_options(args: argparse.Namespace, what_delete_does: str) -> str | None:
    """What is wrong with the options given together (for stderr, with EXIT_USAGE), or None."""
    if args.dry_run and args.action != "apply":
        return "--dry-run applies to apply only"
    if args.action == "delete" and not args.yes:
        return f"delete {what_delete_does}; add --yes to confirm"
    return None
