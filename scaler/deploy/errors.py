"""What every provider's deploy shares: the exit codes, the error an operator must fix, the options misused."""

from __future__ import annotations

import argparse
import sys

from common.logs import scrub

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class DeployError(Exception):
    """A problem the operator must fix; the message says what."""


def print_error(message: object) -> None:
    """``error: <message>`` on stderr, with the secrets the log scrubber knows masked: a provider's error body
    may quote what was sent (a secret's value, the client secret)."""
    print(f"error: {scrub(str(message))}", file=sys.stderr)


def options_misused(args: argparse.Namespace, what_delete_does: str) -> bool:
    """Print to stderr what is wrong with the options given together; True if anything is (exit EXIT_USAGE)."""
    if args.dry_run and args.action != "apply":
        problem = "--dry-run applies to apply only"
    elif args.action == "delete" and not args.yes:
        problem = f"delete {what_delete_does}; add --yes to confirm"
    else:
        return False
    print(problem, file=sys.stderr)
    return True
