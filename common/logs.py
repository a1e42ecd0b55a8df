"""structlog set-up: JSON lines in containers, readable lines on a terminal; secrets scrubbed."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

import structlog

_SECRET_KEYS = ("token", "secret", "password", "authorization", "api_key")
_secret_values: set[str] = set()


def register_secret(value: str | None) -> None:
    """Values that must never reach a log line, whatever key they travel under."""
    if value:
        _secret_values.add(value)


def _scrub(_logger: object, _name: str, event_dict: dict) -> dict:
    for key, value in list(event_dict.items()):
        if any(marker in key.lower() for marker in _SECRET_KEYS):
            event_dict[key] = "***"
        elif isinstance(value, str) and _secret_values:
            for secret in _secret_values:
                if secret in value:
                    event_dict[key] = value.replace(secret, "***")
                    value = event_dict[key]
    return event_dict


def configure_logging(fmt: str = "auto", level: str = "info", stream=None) -> None:
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    processors: Iterable = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _scrub,
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=list(processors),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
