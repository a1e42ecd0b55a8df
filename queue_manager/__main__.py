"""`python -m queue_manager`: run the embedded queue manager until SIGTERM or SIGINT.

Exit 0 when stopped, 1 when it cannot serve (port taken, database served by another), 2 on bad configuration, 130
on a SIGINT (Ctrl-C) before it serves: one line, no traceback.
"""

from __future__ import annotations

import sys

from common.cli import integer, interrupted, number
from common.stop_signals import take_stop_signals

try:  # Ctrl-C while these load (0.5 s) says what a Ctrl-C later in the start says
    import argparse
    import asyncio
    import errno
    import math
    import signal
    import sqlite3
    from collections.abc import Callable
    from pathlib import Path
    from typing import Annotated, TypeVar

    import structlog
    from pydantic import AfterValidator, Field
    from pydantic_settings import SettingsConfigDict

    from common.limits import allow_many_connections
    from common.logs import configure_logging, register_secret
    from common.settings import (
        QUEUE_TOKEN_ENV,
        QUEUE_WORKER_TOKEN_ENV,
        ConfigError,
        LogSettings,
        OptionalPath,
        QueueToken,
        queue_token_problem,
        quoted,
        settings_from_env,
        warn_misspelt_variables,
    )
    from common.text import escape_controls
    from common.timespans import WEEK_S, YEAR_S
    from common.urls import host_port
    from queue_manager.db_lock import DatabaseInUse, lock_database, lock_outputs
    from queue_manager.models import QueueMode
    from queue_manager.outputs import OUTPUTS_DIR_ENV, outputs_dir_problem
    from queue_manager.participants import ParticipantsFileError, add_participant, remove_participant
    from queue_manager.server import (
        DEFAULT_FINISHED_JOB_RETENTION_S,
        DEFAULT_LEASE_TIMEOUT_S,
        DEFAULT_MAX_ATTEMPTS,
        DEFAULT_ROUND_ROBIN_WINDOW_S,
        QueueManagerServer,
        participants_problem,
        token_pair_problem,
    )
except KeyboardInterrupt:
    raise SystemExit(interrupted("queue manager")) from None

log = structlog.get_logger()
T = TypeVar("T")

PARTICIPANTS_FILE_ENV = "QUEUE_MANAGER_PARTICIPANTS_FILE"
ADD_PARTICIPANT = "add-participant"
REMOVE_PARTICIPANT = "remove-participant"


# The settings below are capped at a week (retention: ten years), far past any lease, window or retention meant:
# 1e23 was taken as meant (it ran, but it is a typo).

# Below it, a lease cannot work: 1e-320 handed every job back at each reaper pass (every 0.01 s), and had its worker
# heartbeat as fast as it may (every 0.05 s). The project's own tests go down to 1 s.
MIN_LEASE_TIMEOUT_S = 1.0


LEASE_VALUES = f"0 (no lease), or from {MIN_LEASE_TIMEOUT_S:g} to {WEEK_S:g}"


def _no_lease_or_a_usable_one(value: float) -> float:
    if 0 < value < MIN_LEASE_TIMEOUT_S:
        raise ValueError(f"must be {LEASE_VALUES} seconds: shorter, every job would be handed back before its "
                         "worker's first heartbeat")
    return value


class QueueManagerEnv(LogSettings):
    """What the queue manager reads from the environment (flags, where they exist, win)."""

    model_config = SettingsConfigDict(extra="ignore")

    token: QueueToken | None = Field(default=None, validation_alias=QUEUE_TOKEN_ENV)
    worker_token: QueueToken | None = Field(default=None, validation_alias=QUEUE_WORKER_TOKEN_ENV)
    participants_file: OptionalPath = Field(default=None, validation_alias=PARTICIPANTS_FILE_ENV)
    outputs_dir: OptionalPath = Field(default=None, validation_alias=OUTPUTS_DIR_ENV)
    lease_timeout_s: Annotated[float, AfterValidator(_no_lease_or_a_usable_one)] = Field(
        default=DEFAULT_LEASE_TIMEOUT_S, ge=0, le=WEEK_S, allow_inf_nan=False, validation_alias="LEASE_TIMEOUT_S",
        json_schema_extra={"allowed": LEASE_VALUES},
    )
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=100, validation_alias="MAX_ATTEMPTS")
    # 0 keeps finished jobs for good; inf is refused (say 0), as is anything negative.
    finished_job_retention_s: float = Field(
        default=DEFAULT_FINISHED_JOB_RETENTION_S,
        ge=0,
        le=10 * YEAR_S,
        allow_inf_nan=False,
        validation_alias="FINISHED_JOB_RETENTION_S",
    )
    # 0 = no limit per user (only --max-queue-depth).
    max_pending_per_user: int = Field(default=0, ge=0, validation_alias="MAX_PENDING_PER_USER")
    # 0 = round robin counts every job kept, as before.
    round_robin_window_s: float = Field(
        default=DEFAULT_ROUND_ROBIN_WINDOW_S, ge=0, le=WEEK_S, allow_inf_nan=False,
        validation_alias="ROUND_ROBIN_WINDOW_S",
    )


def _seconds(text: str) -> float:
    """A finite, positive number of seconds (inf would stop the reaper for good, 0 would spin it)."""
    try:
        value = number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, not {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = integer(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text!r}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, not {text!r}")
    return value


def _host(text: str) -> str:
    """An address to bind. Blank, aiohttp binds every interface (each on its own port with --port 0): a queue open to
    the network, from `--host "$UNSET"`."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: name the address to bind (127.0.0.1: this machine only; "
                                         "0.0.0.0: every interface)")
    try:
        text.encode("idna")  # as the resolver will: a label over 63 characters ended the start in a traceback
    except UnicodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is no address or host name ({exc.__cause__ or exc})") from None
    return text


def _database_file(text: str) -> str:
    """A file name: blank would open SQLite's private temporary database (or a file named by spaces), a
    folder cannot be opened."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: name the SQLite file that keeps the jobs")
    try:
        is_folder = Path(text).is_dir()
    except OSError as exc:  # a name longer than the system takes (ENAMETOOLONG), say
        raise argparse.ArgumentTypeError(f"cannot name a file: {exc.strerror or exc}") from None
    if is_folder:
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: name a file in it, e.g. {Path(text) / 'jobs.db'}")
    if Path(text).exists() and not Path(text).is_file():  # /dev/zero: its lock file was written in /dev first
        raise argparse.ArgumentTypeError(f"{text!r} is a device or a FIFO, not a file: name the SQLite file")
    return text


def _token(text: str) -> str:
    """Never empty: `--token "$UNSET"` served with no token at all (or the variable's), unsaid."""
    if not text:
        raise argparse.ArgumentTypeError("is empty: give the token, or leave the flag out")
    return text


def _path_to(what: str) -> Callable[[str], Path]:
    """A path flag's type, never blank: Path("") is ".", the folder the queue manager was started in."""

    def path(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"is empty: name {what}, or leave the flag out")
        try:
            Path(text).exists()
        except OSError as exc:  # a name longer than the system takes (ENAMETOOLONG) exited 1, "cannot be written"
            raise argparse.ArgumentTypeError(f"cannot name {what}: {exc.strerror or exc}") from None
        return Path(text)

    return path


def _participants_file(text: str) -> Path:
    """The participants file to serve with: one that is missing or no regular file (a folder, a FIFO, a device) was
    refused only when the start read it (exit 2), the database's lock file written by then."""
    path = _path_to("the participants file")(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{quoted(text)}: no such file (comfy-serverless queue {ADD_PARTICIPANT} "
                                         "USER_ID --participants-file PATH makes it)")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{quoted(text)}: is not a regular file (a folder, a FIFO or a device)")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-serverless queue",
        description="Serve the comfy-multi Queue Manager HTTP contract from a local SQLite database.",
        epilog=(
            f"Give a participant their own token: comfy-serverless queue {ADD_PARTICIPANT} USER_ID (see its --help). "
            f"Environment: {QUEUE_TOKEN_ENV}, {QUEUE_WORKER_TOKEN_ENV}, {PARTICIPANTS_FILE_ENV}, {OUTPUTS_DIR_ENV}, "
            "LEASE_TIMEOUT_S "
            "(default "
            f"{DEFAULT_LEASE_TIMEOUT_S:g}; "
            f"0 = no lease), MAX_ATTEMPTS (default {DEFAULT_MAX_ATTEMPTS}), FINISHED_JOB_RETENTION_S (default "
            f"{DEFAULT_FINISHED_JOB_RETENTION_S:g}; 0 = keep finished jobs for good), MAX_PENDING_PER_USER (default 0 "
            f"= no limit), ROUND_ROBIN_WINDOW_S (default {DEFAULT_ROUND_ROBIN_WINDOW_S:g}; 0 = every job kept), "
            "LOG_FORMAT (auto|json|console), LOG_LEVEL."
        ),
    )
    parser.add_argument("--host", type=_host, default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=8080, help="port to bind (default: %(default)s)")
    parser.add_argument(
        "--db",
        type=_database_file,
        metavar="PATH",
        default="queue-manager.db",
        help="SQLite database file; jobs survive restarts (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue-depth",
        type=_count,
        default=100,
        help="pending jobs before POST /api/jobs answers 429; 0 = unlimited (default: %(default)s)",
    )
    parser.add_argument(
        "--job-timeout",
        type=_seconds,
        default=3600,
        metavar="SECONDS",
        help="fail a job running longer than this with 'Job timeout exceeded' (default: %(default)s)",
    )
    parser.add_argument(
        "--reaper-interval",
        type=_seconds,
        default=60,
        metavar="SECONDS",
        help="how often to look for timed-out jobs (default: %(default)s)",
    )
    parser.add_argument(
        "--mode",
        choices=[mode.value for mode in QueueMode],
        default=QueueMode.FIFO.value,
        help="order in which pending jobs are handed out (default: %(default)s)",
    )
    parser.add_argument(
        "--token",
        type=_token,
        default=None,
        help=f"require 'Authorization: Bearer <token>' on /api/ (default: ${QUEUE_TOKEN_ENV}, else no auth; "
        "prefer the variable: every user of this machine sees a command line's arguments in `ps`)",
    )
    parser.add_argument(
        "--worker-token",
        type=_token,
        default=None,
        help=f"with --token: the only token /api/workers/ takes; the other routes take either (default: "
        f"${QUEUE_WORKER_TOKEN_ENV}, else one token for all; prefer the variable, as for --token)",
    )
    parser.add_argument(
        "--participants-file",
        type=_participants_file,
        metavar="PATH",
        default=None,
        help=f"with --token: each participant's own token, by its hash; each sees and cancels only their jobs; "
        f"re-read when it changes (default: ${PARTICIPANTS_FILE_ENV}, else none)",
    )
    parser.add_argument(
        "--outputs-dir",
        type=_path_to("the folder where the workers' OUTPUTS_PATH volume is mounted"),
        metavar="PATH",
        default=None,
        help=f"where the workers' OUTPUTS_PATH volume is mounted (read-write: a job the retention deletes has its "
        f"folder there deleted too): serve completed jobs' result files at GET /api/jobs/ID/outputs/PATH (default: "
        f"${OUTPUTS_DIR_ENV}, else not served)",
    )
    return parser


def _participant_parser(command: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"comfy-serverless queue {command}", description=description)
    parser.add_argument("user_id", help="the participant's user_id: 1 to 100 letters, digits, '_' or '-'")
    parser.add_argument(
        "--participants-file",
        type=_path_to("the participants file"),
        metavar="PATH",
        default=None,
        help=f"the file the queue manager reads (default: ${PARTICIPANTS_FILE_ENV})",
    )
    return parser


def build_add_participant_parser() -> argparse.ArgumentParser:
    return _participant_parser(
        ADD_PARTICIPANT,
        "Give a participant a new token: print it once, keep only its hash in the participants file (created 0600 "
        "if missing). Run again for the same user_id to replace their token; the old one stops working at once, the "
        "running queue manager need not restart.",
    )


def build_remove_participant_parser() -> argparse.ArgumentParser:
    return _participant_parser(
        REMOVE_PARTICIPANT,
        "Take a participant's token away: remove their line from the participants file; the token stops working at "
        "once, the running queue manager need not restart. Their jobs are left as they are (cancel them with "
        "DELETE /api/jobs/ID). Exits 1 when they have no line.",
    )


def _say(problem: object) -> None:
    """A problem on stderr as a terminal shows it, never obeys it: it may quote a variable's value (a path)."""
    print(escape_controls(str(problem), keep_lines=True), file=sys.stderr)


def _environment() -> QueueManagerEnv | None:
    """The settings from the environment; None, the error naming the variable on stderr, when one is wrong."""
    try:
        return settings_from_env(QueueManagerEnv, "queue manager")
    except ConfigError as exc:
        _say(exc)
        return None


def _change_participants(
    parser: argparse.ArgumentParser, argv: list[str], change: Callable[[Path, str], T]
) -> tuple[str, Path, T]:
    """(user_id, file, what `change` returned) for the participants file and user_id argv names. Exits 2, saying
    why on stderr, on a usage error or a file that cannot be used; 1 when the file cannot be written."""
    args = parser.parse_args(argv)
    if (env := _environment()) is None:
        raise SystemExit(2)
    path = args.participants_file or env.participants_file
    if path is None:
        _say(f"name the participants file: --participants-file PATH or {PARTICIPANTS_FILE_ENV}")
        raise SystemExit(2)
    try:
        return args.user_id, path, change(path, args.user_id)
    except (ValueError, ParticipantsFileError) as exc:
        _say(exc)
        raise SystemExit(2) from None
    except OSError as exc:
        _say(f"participants file {path}: cannot be written: {exc.strerror or exc}")
        raise SystemExit(1) from None


def add_participant_main(argv: list[str]) -> int:
    user_id, path, token = _change_participants(build_add_participant_parser(), argv, add_participant)
    try:
        if sys.stdout is None:  # closed (`>&-`): print() would drop the token and say nothing
            raise OSError("standard output is closed")
        print(token, flush=True)
    except OSError as exc:  # a full disk, a closed pipe: the token is lost, never shown (nor logged)
        _say(f"{user_id}'s new token could not be printed ({exc.strerror or exc}): {path} holds its hash, "
             "so any token they had no longer works; run this again with a working standard output")
        return 1
    _say(f"{user_id}'s token (above) is shown once; {path} keeps only its hash")
    return 0


def remove_participant_main(argv: list[str]) -> int:
    user_id, path, removed = _change_participants(build_remove_participant_parser(), argv, remove_participant)
    if not removed:
        _say(f"{user_id} has no line in participants file {path}: nothing changed")
        return 1
    print(f"{user_id} removed from {path}: their token no longer works (their jobs are left as they are)")
    return 0


async def serve(server: QueueManagerServer, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    take_stop_signals(stop.set, (signal.SIGTERM, signal.SIGINT))
    try:
        await server.start(host=host, port=port)
        await stop.wait()
        log.info("queue_manager_stopping")
    finally:
        await server.stop()  # a second signal meanwhile only sets `stop` again: the stop runs to its end
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)  # nothing is left to stop: their default would end the exit


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # raised only until serve() takes SIGINT
        return interrupted("queue manager")


def _main(argv: list[str]) -> int:
    if argv[:1] == [ADD_PARTICIPANT]:
        return add_participant_main(argv[1:])
    if argv[:1] == [REMOVE_PARTICIPANT]:
        return remove_participant_main(argv[1:])
    args = build_parser().parse_args(argv)
    if (env := _environment()) is None:
        return 2
    configure_logging(env.log_format, env.log_level)
    warn_misspelt_variables(QueueManagerEnv)
    allow_many_connections()
    token = args.token or (env.token.get_secret_value() if env.token else None) or None
    worker_token = args.worker_token or (env.worker_token.get_secret_value() if env.worker_token else None) or None
    register_secret(token)
    register_secret(worker_token)
    for flag, value in (("--token", args.token), ("--worker-token", args.worker_token)):
        if value and (problem := queue_token_problem(value)):
            _say(f"{flag} {problem}")
            return 2
    participants_file = args.participants_file or env.participants_file
    if problem := token_pair_problem(token, worker_token) or participants_problem(token, participants_file):
        _say(problem)
        return 2
    outputs_dir = args.outputs_dir or env.outputs_dir
    if outputs_dir is not None and (problem := outputs_dir_problem(outputs_dir)):
        _say(problem)
        return 2
    try:
        lock_database(args.db)
    except DatabaseInUse as exc:
        log.error("queue_manager_failed", error=str(exc),
                  hint="one queue manager per database: stop that one first, or give this one a --db of its own")
        return 1
    try:
        if outputs_dir is not None:
            lock_outputs(outputs_dir)
    except DatabaseInUse as exc:
        log.error("queue_manager_failed", error=str(exc),
                  hint="one outputs folder per queue manager: give each queue's workers their own OUTPUTS_PATH "
                       "folder, and this one its --outputs-dir")
        return 1
    server = QueueManagerServer(
        args.db,
        max_queue_depth=args.max_queue_depth,
        job_timeout_s=args.job_timeout,
        reaper_interval_s=args.reaper_interval,
        mode=args.mode,
        token=token,
        worker_token=worker_token,
        participants_file=participants_file,
        outputs_dir=outputs_dir,
        lease_timeout_s=env.lease_timeout_s,
        max_attempts=env.max_attempts,
        finished_job_retention_s=env.finished_job_retention_s,
        max_pending_per_user=env.max_pending_per_user,
        round_robin_window_s=env.round_robin_window_s,
    )
    try:
        asyncio.run(serve(server, args.host, args.port))
    except ParticipantsFileError as exc:
        _say(exc)
        return 2
    except sqlite3.Error as exc:
        hint = (" (its folder must exist and this user must be able to write there: SQLite adds -wal and -shm "
                "files beside it)" if getattr(exc, "sqlite_errorname", None) == "SQLITE_CANTOPEN" else "")
        log.error("queue_manager_failed", error=f"--db {args.db}: {exc}{hint}")
        return 2
    except OSError as exc:  # the port is taken (a second queue manager?) or privileged, or --host is not ours
        log.error("queue_manager_failed", error=str(exc), hint=_bind_hint(exc, args.host, args.port))
        return 1
    return 0


def _bind_hint(exc: OSError, host: str, port: int) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"port {port} is one only root (or a process with CAP_NET_BIND_SERVICE) may listen on: choose "
                "--port 1024 or above (and point the workers' QUEUE_MANAGER_URL at it)")
    return (f"another process listens on {host_port(host, port)}: stop it, or choose another --port (and point the "
            "workers' QUEUE_MANAGER_URL at it); --host must be an address of this machine")


if __name__ == "__main__":
    raise SystemExit(main())
