"""What every provider's deploy shares: the exit codes, the error an operator must fix, the options misused."""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx

from common.logs import scrub
from common.settings import secret_length_problem, sendable_problem
from common.text import escape_controls
from common.urls import IN_CLEAR, encrypted_or_local

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class DeployError(Exception):
    """A problem the operator must fix; the message says what."""


def shown(value: object) -> str:
    """``value`` as text for the terminal, its control characters escaped (``\\x1b``): a provider's string."""
    return escape_controls(str(value))


def print_error(message: object) -> None:
    """``error: <message>`` on stderr, with the secrets the log scrubber knows masked: a provider's error body
    may quote what was sent (a secret's value, the client secret). Its lines are kept, the rest ``shown``."""
    lines = scrub(str(message)).split("\n")
    print("error: " + "\n".join(map(shown, lines)), file=sys.stderr)


def credential(environ: Mapping[str, str], variable: str, missing: str, *, secret: bool = True) -> str:
    """The value of ``variable``, a credential; DeployError ``missing`` when it is unset or blank, or naming it when
    it cannot be sent as is (not ASCII, bytes the environment could not decode: a UnicodeEncodeError traceback; a
    newline pasted with it) or, a ``secret``, is too short for the logs to mask (secret_length_problem), as the
    scaler refuses them."""
    value = environ.get(variable, "")
    if not value.strip():
        raise DeployError(missing)
    if problem := sendable_problem(value):
        raise DeployError(f"{variable}: {problem}: it is sent with every request (a newline pasted with it?)")
    if secret and (problem := secret_length_problem(value)):
        raise DeployError(f"{variable}: {problem}")
    return value


def options_misused(args: argparse.Namespace, what_delete_does: str) -> bool:
    """Print to stderr what is wrong with the options given together; True if anything is (exit EXIT_USAGE)."""
    if args.dry_run and args.action != "apply":
        problem = "--dry-run applies to apply only"
    elif args.console and args.action != "apply":
        problem = "--console applies to apply only"
    elif args.action == "delete" and not args.yes:
        problem = f"delete {what_delete_does}; add --yes to confirm"
    else:
        return False
    print(problem, file=sys.stderr)
    return True


def unreachable(api: str, error: httpx.HTTPError) -> str:
    """``cannot reach the <api> API (<call>): <kind>: <detail>``: which call failed, so that the operator knows
    whether the lines printed before it are all that was done."""
    try:
        where = f" ({error.request.method} {error.request.url.path})"
    except RuntimeError:  # an error raised before its request was built
        where = ""
    return f"cannot reach the {api} API{where}: {type(error).__name__}: {error or 'no answer'}"


HOST_NAME_RULE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


def _unusable_host(url: str) -> str | None:
    """What makes ``url`` no address an API can be reached at, or None. The URL is never quoted: it may carry a
    user and password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        host = parts.hostname or ""
    except ValueError as error:
        return f"not a URL ({error})"
    if not host:
        return None  # no scheme either ("api.verda.com/v1"): refused as in clear
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOST_NAME_RULE.fullmatch(host):
            return "its host name has characters no host name has (a space, a quote?)"
    return None


def check_api_url(variable: str, url: str) -> str:
    """``url`` itself, or DeployError when it is no URL to reach an API at (an unparsable one was tried five
    times over ten seconds, then reported as the API unreachable) or would carry the credentials unencrypted."""
    if (problem := _unusable_host(url)) is not None:
        raise DeployError(f"{variable}: {problem}: give the API's https:// URL")
    if encrypted_or_local(url):
        return url
    raise DeployError(f"{variable}: {IN_CLEAR}")
