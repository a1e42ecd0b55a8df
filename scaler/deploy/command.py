"""`python -m scaler.deploy [--provider NAME] [apply|status|delete] …`: parse the arguments, hand them to a provider.

Each provider module (scaler/deploy/<name>.py) exposes `async def deploy(args, environ) -> int` and owns its
spec, its API calls and its output. This module knows only the options they share.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic_settings import SettingsConfigDict

from common.logs import configure_logging, register_secret
from common.settings import ConfigError, LogSettings, settings_from_env
from common.text import escape_controls
from common.urls import url_secrets
from scaler.deploy.errors import EXIT_USAGE
from scaler.deploy.spec import GivenSpec

PROVIDERS = {"verda": "scaler.deploy.verda", "runpod": "scaler.deploy.runpod"}
# Values no output may show (the scrubber masks them wherever they appear).
SECRET_ENV = ("VERDA_CLIENT_SECRET", "RUNPOD_API_KEY", "QUEUE_MANAGER_TOKEN")


class DeployLogSettings(LogSettings):
    """As comfy-scaler reads them: an empty variable is unset."""

    model_config = SettingsConfigDict(env_ignore_empty=True)


def _spec_path(text: str) -> Path:
    """Never blank: Path("") is the folder it ran in, refused as "." with no word of --spec (`--spec "$UNSET"`)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: name the spec file, or leave the flag out for the provider's")
    return GivenSpec(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy-serverless", description="Create, update, inspect or delete the worker's serverless deployment."
    )
    parser.add_argument("action", nargs="?", choices=("apply", "status", "delete"), default="apply")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="verda", help="where to deploy")
    parser.add_argument("--spec", type=_spec_path, default=None, help="deployment spec (default: the provider's)")
    parser.add_argument("--dry-run", action="store_true", help="print the request body apply would send; no network")
    parser.add_argument(
        "--console", action="store_true", help="print the values to type into the provider's web console; no network"
    )
    parser.add_argument("--yes", action="store_true", help="confirm delete")
    return parser.parse_args(argv)


async def deploy_main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    environ = os.environ if environ is None else environ
    # Values no output may show: the scrubber masks them in log lines and in the error printed.
    for name in SECRET_ENV:
        register_secret(environ.get(name))
    for credential in url_secrets(environ.get("QUEUE_MANAGER_URL", "")):
        register_secret(credential)
    provider = importlib.import_module(PROVIDERS[args.provider])
    if args.console and not getattr(provider, "HAS_CONSOLE", False):
        print(f"--console: no console walkthrough for --provider {args.provider}", file=sys.stderr)
        return EXIT_USAGE
    return await provider.deploy(args, environ)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, stopping the deploy as Ctrl-C (SIGINT) does."""


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted


def main(argv: Sequence[str] | None = None) -> int:
    try:
        logging = settings_from_env(DeployLogSettings, "deploy", trust_store=True)
    except ConfigError as exc:
        print(escape_controls(str(exc), keep_lines=True), file=sys.stderr)  # it may quote a variable's value
        return EXIT_USAGE
    # Log lines (retries, waits) go to stderr as in every process, apart from what the deploy prints.
    configure_logging(logging.log_format, logging.log_level)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return asyncio.run(deploy_main(argv))
    except KeyboardInterrupt as interrupt:
        signum = signal.SIGTERM if isinstance(interrupt, Interrupted) else signal.SIGINT
        print(
            f"interrupted ({signum.name}): stopped before the end; only what is printed above was done, and a request"
            " under way may still take effect. Run the same command again (it sends only what is missing), or"
            " `status` with the same options to see where things stand.",
            file=sys.stderr,
        )
        return 128 + signum
