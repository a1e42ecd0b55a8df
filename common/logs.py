"""structlog set-up: JSON lines in containers, readable lines on a terminal; secrets scrubbed.

Records of the standard `logging` module (aiohttp's "Error handling request" with its traceback, asyncio's
"Task exception was never retrieved", ...) go through the same processors, so a container's log stays one
JSON object per line whoever wrote it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from traceback import format_exception
from types import TracebackType
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from common.head_size import refusal_reason
from common.log_throttle import LogThrottle
from common.log_writer import EXIT_FLUSH_S, QueuedLogWriter
from common.text import escape_controls
from common.urls import name_words, names_a_credential, redact_urls_in

_secret_values: set[str] = set()
# How far past a cut a URL's user name and password may run and still be masked as a URL's (ours are registered
# secrets, masked however long).
URL_CREDENTIALS_MARGIN = 4096


# The shortest value the scrubber masks. Every occurrence of a registered value in any text becomes ***: a secret
# " " or "e" masked every space or every e of every log line ("v***rda_auth***nticating"), and the 5-7 letter words
# logs are made of ("error", "token", "verda") would fare no better. Real credentials are far longer (a Verda client
# secret, a RunPod API key, a queue manager's token: dozens of characters), and the settings refuse a shorter one,
# naming it (common.settings.secret_length_problem), so a credential is never left unmasked here.
MIN_SECRET_CHARS = 8


def register_secret(value: str | None) -> None:
    """Values that must never reach a log line, whatever key they travel under; one shorter than MIN_SECRET_CHARS
    is not one: masking it would garble every line that holds those characters."""
    if value and len(value) >= MIN_SECRET_CHARS:
        _secret_values.add(value)


def forget_secret(value: str | None) -> None:
    """A secret that can no longer be used (a replaced access token): scrubbing it costs time on every line."""
    _secret_values.discard(value or "")


def scrub(text: str) -> str:
    """`text` without URL credentials or registered secrets."""
    text = redact_urls_in(text)
    for secret in _secret_values:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def scrubbed_excerpt(text: str, limit: int) -> str:
    """``text`` scrubbed, then cut to ``limit`` (a peer's answer quoted in an error, say). In that order: cut
    first, a secret across the cut kept its first part, which no scrubber then knew. Only the head is scrubbed,
    with room past the cut for the longest secret and a URL's credentials: a 64 MiB answer took 4.3 s whole."""
    margin = URL_CREDENTIALS_MARGIN + max(map(len, _secret_values), default=0)
    return scrub(text[: limit + margin])[:limit]


def error_text(error: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an error for a log field, a status or a report: scrubbed, then cut to ``limit``."""
    return scrubbed_excerpt(f"{type(error).__name__}: {error}", limit)


def scrub_all(value: Any, limit: int | None = None) -> Any:
    """``value`` with every string in it scrubbed, however deep in dicts, lists and tuples (a key named like a
    credential masks its whole value, unless that is a yes/no or nothing: `worker_token=true` says whether one is
    set): for what is printed rather than logged, e.g. a status report. A string longer than ``limit`` is cut to
    it, saying so."""
    if isinstance(value, str):
        if limit is not None and len(value) > limit:
            return f"{scrubbed_excerpt(value, limit)}… (cut: {len(value)} characters)"
        return scrub(value)
    if isinstance(value, dict):
        return {key: "***" if _names_a_secret(key, item) else scrub_all(item, limit) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_all(item, limit) for item in value]
    return value


def _names_a_secret(key: object, value: object) -> bool:
    """Whether ``key`` names a credential by its words, as a URL's parameter (common.urls): not ``max_tokens``,
    ``tokenizer``, ``keyframes`` or ``author``, which held a word's letters and read ``***``. Its plural
    (``tokens``, ``api_keys``) may hold credentials too, unless what it holds is a count (``max_tokens=512``)."""
    if not isinstance(key, str) or isinstance(value, bool | None):
        return False
    words = name_words(key)
    singular = [word if word.endswith("ss") else word.removesuffix("s") for word in words]
    return names_a_credential(words) or (not isinstance(value, int | float) and names_a_credential(singular))


# The longest text a log value keeps: a peer's or a client's megabytes quoted whole took seconds to scrub (8 MiB of
# "?a=b&": 13 s, the process stalled) and made a line no log collector takes.
MAX_LOG_VALUE_CHARS = 64 * 1024


def _scrub(_logger: object, _name: str, event_dict: dict) -> dict:
    # Nested values too: the scaler's "Scaling decision" carries a provider's error inside `details`.
    return scrub_all(event_dict, MAX_LOG_VALUE_CHARS)


# Control characters a terminal would obey (colours, a new title, a cleared screen, a forged next line) reach
# log values from jobs: a workflow's node name in ComfyUI's error, say. JSON escapes them; on a terminal the
# console renderer prints a value raw unless it holds a space or a quote, and the event never escaped.
_TEXT_KEYS = ("exception", "stack")  # printed as text, a traceback keeping its lines


class _Quoted:
    """A value the console shows as Python's repr: quoted, each control character escaped once."""

    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return repr(self._text)


def _escape_controls(_logger: object, _name: str, event_dict: dict) -> dict:
    for key, value in event_dict.items():
        if not isinstance(value, str) or value.isprintable():
            continue
        if key == "event" or key in _TEXT_KEYS:
            event_dict[key] = escape_controls(value, keep_lines=key in _TEXT_KEYS)
        else:
            event_dict[key] = _Quoted(value)
    return event_dict


class _LinesLostIfUnwritable(structlog.PrintLogger):
    """A log that cannot be written (a full disk, a reader gone: EPIPE, a closed file) loses the line, as the
    standard logging module's handlers do: a log call that raised ended the process at its first line, or a job
    mid-way."""

    def msg(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().msg(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _QueuedLines:
    """structlog's logger for a log written by a QueuedLogWriter: a line and its newline in one piece."""

    def __init__(self, writer: QueuedLogWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.write(message + "\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


# One writer a file (fds 1 and 2 may be the same pipe): two threads writing to it would interleave long lines.
_writers: dict[tuple[int, int], QueuedLogWriter] = {}


def _queued(stream) -> QueuedLogWriter:
    """The one writer of the file ``stream`` writes to; lines still queued at exit get EXIT_FLUSH_S to be written."""
    status = os.fstat(stream.fileno())
    file = (status.st_dev, status.st_ino)
    if file not in _writers:
        with contextlib.suppress(OSError, ValueError):
            stream.flush()  # what was written to it before comes first
        if not _writers:
            atexit.register(flush_logs)  # early: it runs after the exit handlers that log (_quiet_…)
        _writers[file] = QueuedLogWriter(stream.fileno(), getattr(stream, "encoding", None) or "utf-8", _report_dropped)
    return _writers[file]


def unblocking(stream):
    """Where to write whole lines meant for ``stream`` without ever blocking the caller (a reader that stalls):
    its file's queued writer, shared with the log lines, so they stay in order; in memory, ``stream`` itself."""
    stream = stream or _nowhere()  # started with it closed (`>&-`): Python's sys.stdout is None
    return _queued(stream) if _writes_to_a_file(stream) else stream


@functools.cache
def _nowhere():
    """Where lines go that are meant for a stream the process was started without: one file, whoever asks."""
    return open(os.devnull, "w")  # open for as long as the process logs


def flush_logs() -> None:
    """The lines still queued written, EXIT_FLUSH_S at most for all the files together (each its own, stdout and
    stderr stalled made it twice that): at exit, and before os._exit, which runs no exit handler."""
    deadline = time.monotonic() + EXIT_FLUSH_S
    writers = list(_writers.values())
    with contextlib.ExitStack() as held:
        for writer in writers:
            held.enter_context(writer.last_line_held())
        for writer in writers:
            writer.report_dropped_now()  # logged: into the log's writer, before the last line it holds back
    for writer in writers:
        writer.wait_written(max(0.0, deadline - time.monotonic()))


def _report_dropped(dropped: int, dropped_at: float | None) -> None:
    stamp = {} if dropped_at is None else {STAMPED_AT: dropped_at}
    structlog.get_logger().warning("Log lines dropped: the log's reader fell behind", dropped=dropped, **stamp)


# A line about what happened earlier (lines dropped, reported at exit) stamped with when (time.time()) it happened.
STAMPED_AT = "_stamped_at"


def _stamped_at(_logger: object, _name: str, event_dict: dict) -> dict:
    at = event_dict.pop(STAMPED_AT, None)
    if at is not None:
        event_dict["timestamp"] = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    return event_dict


def configure_logging(fmt: str = "auto", level: str = "info", stream=None) -> None:
    # No stderr (started with it closed, `2>&-`): Python's sys.stderr is None, and the lines go nowhere.
    stream = stream or sys.stderr or _nowhere()
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    # Written by a thread of its own: a reader that stops reading (a pipe full) must not block the event loop.
    # Into memory (a test, a bench reading its own lines), each line is there at once.
    sink = unblocking(stream)
    renderer = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    last = [_scrub, renderer] if use_json else [_scrub, _escape_controls, renderer]
    shared: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _stamped_at,
    ]
    # Tracebacks become text before scrubbing, so a secret inside an exception message is masked too.
    processors: Iterable = [*shared, structlog.processors.format_exc_info, *last]
    structlog.configure(
        processors=list(processors),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *_: _QueuedLines(sink) if sink is not stream else _LinesLostIfUnwritable(stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(shared, last, level, sink)
    _quiet_malformed_requests()
    sys.excepthook = _log_uncaught if _writes_to_a_file(stream) else _print_uncaught


def _writes_to_a_file(stream) -> bool:
    """Whether lines written to ``stream`` leave the process (a terminal, a pipe, a file), unlike an in-memory
    buffer a program reads its own lines from (a bench counting them)."""
    try:
        stream.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    return True


def _log_uncaught(kind: type[BaseException], exc: BaseException, traceback: TracebackType | None) -> None:
    """An exception nothing caught: one log line like the others, scrubbed, rather than Python's raw traceback,
    which no scrubber saw (a secret or a URL's password in its message went out as is). Ctrl-C stays Python's."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, traceback)
        return
    structlog.get_logger().critical("uncaught_exception", exc_info=(kind, exc, traceback))


def _print_uncaught(kind: type[BaseException], exc: BaseException, traceback: TracebackType | None) -> None:
    """An exception nothing caught, in a process whose log is kept in memory: Python's traceback, scrubbed, on
    stderr. Into that log it went unseen: an exit 1 with nothing printed."""
    if sys.stderr is not None:
        sys.stderr.write(scrub("".join(format_exception(kind, exc, traceback))))


# One "Malformed HTTP request refused" line at most this often: a port scan or a flood sends thousands a second.
MALFORMED_WARN_EVERY_S = 60.0


class _MalformedRequestAsWarning(logging.Filter):
    """aiohttp logs a request it cannot parse (a port scan, a broken client; answered 400) as an error with a
    traceback, which reads as a server failure at 2 a.m. It is the client's fault: one warning line, no traceback,
    the first then at most one a minute, telling how many more were refused since (those of the last minute at its
    end, or at exit). A handler's own exception (a 500) stays an error, each one logged."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = LogThrottle(MALFORMED_WARN_EVERY_S, clock, report_held_back=self._report_held_back)
        self.flush = self._throttle.flush

    @staticmethod
    def _report_held_back(refused: int) -> None:
        logging.getLogger("aiohttp.server").warning(
            "Malformed HTTP requests refused: %d more since the last one logged", refused
        )

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RequestPayloadError) and isinstance(exc.__cause__, HttpProcessingError):
            exc = exc.__cause__  # a body aiohttp drained after the answer, unreadable (gzip that is not gzip)
        if isinstance(exc, HttpProcessingError):
            refused = self._throttle.occurred()
            if refused is None:
                return False
            reason = refusal_reason(exc)  # as the answer says it: never the request's bytes
            since = f" ({refused - 1} more refused since the last one)" if refused > 1 else ""
            record.msg = f"Malformed HTTP request refused ({exc.code}): {record.getMessage()}: {reason}{since}"
            record.args = ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_malformed_requests() -> None:
    """A fresh filter each time logging is configured: its count starts over."""
    server_logger = logging.getLogger("aiohttp.server")
    for old in [f for f in server_logger.filters if isinstance(f, _MalformedRequestAsWarning)]:
        server_logger.removeFilter(old)
        atexit.unregister(old.flush)
    quiet = _MalformedRequestAsWarning()
    server_logger.addFilter(quiet)
    atexit.register(quiet.flush)


def _route_stdlib_logging(shared: list, last: list, level: str, stream) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                *last,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_comfy_structlog", False)]:
        root.removeHandler(old)
    handler._comfy_structlog = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.getLevelName(level.upper()))
    # httpx logs every request at INFO ("HTTP Request: GET …"): two lines per idle poll of a worker, every 2 s.
    # They are kept for LOG_LEVEL=debug.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
