"""`comfy-serverless`: `demo` runs the whole system on this machine; `queue` serves the local queue manager."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sqlite3
import sys
from collections.abc import Callable
from itertools import takewhile
from pathlib import Path
from typing import TypeVar

import httpx
import structlog
from pydantic import AnyHttpUrl, TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape

from common.cli import integer, number
from common.logs import configure_logging, scrub
from common.text import escape_controls
from common.timespans import DAY_S, HOUR_S
from common.urls import direct_transport, redact_url
from demo.providers import PROVIDERS, parse_providers
from demo.report import ReportNotWritten
from demo.results import ROUTE
from demo.run import DemoOptions, run_demo
from queue_manager import JobStore
from queue_manager.db_lock import DatabaseInUse, lock_database
from queue_manager.models import JobStatus
from scaler.policy import MAX_REPLICAS_LIMIT, MIN_PRICE_PER_HOUR

# The info lines a run without the live table shows: its progress and the fleet's moves (docs/demo.md).
DEMO_INFO_LINES = {"Demo progress", "Provider move", "Provider back in service"}
# Bounds of the demo's own knobs: it runs everything on this machine, and a day is longer than anyone waits.
MAX_JOBS, MAX_USERS = 10_000, 1_000
MAX_PRICE_PER_HOUR = 1_000.0
COMFYUI_PROBE_S = 10.0
EXIT_INTERRUPTED = 130  # as a shell reports a process Ctrl-C ended
INTERRUPTED = "comfy-serverless demo: interrupted (Ctrl-C)"
DB_IN_USE_WAIT_S = 1.0  # a commit of the process holding it takes milliseconds
Number = TypeVar("Number", int, float)


def demo_parser() -> argparse.ArgumentParser:
    defaults = DemoOptions()
    parser = argparse.ArgumentParser(
        prog="comfy-serverless demo",
        description="Run a local queue, ComfyUI (simulated unless --comfyui-url), the scaler and its workers, "
        "submit a workshop's burst of jobs, and report what happened. Loopback only.",
    )
    parser.add_argument("--jobs", type=_whole(1, MAX_JOBS), default=defaults.jobs,
                        help=f"jobs to submit, 1-{MAX_JOBS} (default %(default)s)")
    parser.add_argument("--users", type=_whole(1, MAX_USERS), default=defaults.users,
                        help=f"participants, 1-{MAX_USERS} (default %(default)s)")
    parser.add_argument("--bad-jobs", type=_whole(0, MAX_JOBS), default=defaults.bad_jobs,
                        help="intentionally broken workflows, to show failure reports (default %(default)s)")
    parser.add_argument("--max-replicas", type=_whole(1, MAX_REPLICAS_LIMIT), default=defaults.max_replicas,
                        help=f"1-{MAX_REPLICAS_LIMIT} (default %(default)s)")
    parser.add_argument("--workload", choices=["workshop"], default="workshop",
                        help="submission pattern: most jobs in the first seconds, the rest trailing off")
    parser.add_argument("--comfyui-url", type=_comfyui_url, help="a real ComfyUI to use instead of the simulator")
    parser.add_argument("--node-seconds", type=_number(0, HOUR_S), default=defaults.node_seconds,
                        help="simulated seconds per ComfyUI node (default %(default)s)")
    parser.add_argument("--spread-s", type=_number(0, DAY_S), default=defaults.spread_s,
                        help="submissions spread over this many seconds (default %(default)s)")
    parser.add_argument("--price-per-hour", type=_price, default=defaults.price_per_hour,
                        help="USD per GPU-hour for the spend estimate (default: Verda H100 serverless, %(default)s)")
    # Checked (by writing) in parse_demo_args, once every other option is taken
    parser.add_argument("--output-dir", type=_named,
                        help=f"outputs, logs and report.json go here (default {defaults.output_dir})")
    parser.add_argument("--db", type=_named, help="queue database (default: a temporary one)")
    parser.add_argument("--idle-to-zero-s", type=_number(0, DAY_S), default=defaults.idle_to_zero_s,
                        help="how long an idle worker keeps polling, plus 5 scaler intervals, before it exits by "
                        "itself (default %(default)s); the demo's scaler plans for --target-wait-s and stops a "
                        "replica the queue does not need at once, without waiting for it")
    parser.add_argument("--target-wait-s", type=_number(1, DAY_S), default=defaults.target_wait_s,
                        help="the wait the scaler plans for, as target_wait_s in production (default %(default)s)")
    parser.add_argument("--timeout-s", type=_number(1, DAY_S), default=defaults.timeout_s,
                        help="give up after this many seconds (default %(default)s)")
    parser.add_argument("--no-live", action="store_true", help="log progress lines instead of a live table")
    parser.add_argument("--providers", type=_providers, default=(),
                        help="several providers with fallback, cheapest first: a comma list of local, fake-verda, "
                        "fake-runpod (docs/providers.md)")
    parser.add_argument("--fail", choices=PROVIDERS, help="make this provider unreachable from the start")
    return parser


def parse_demo_args(argv: list[str]) -> argparse.Namespace:
    """The demo's options; exits 2 naming the option for one that argparse alone cannot judge."""
    parser = demo_parser()
    args = parser.parse_args(argv)
    if args.fail is not None and args.fail not in args.providers:  # ignored, nothing failed, no fallback shown
        parser.error(f"--fail: {args.fail} is not one of the providers the demo runs "
                     f"(--providers {','.join(args.providers) or 'not given: the local workers alone'})")
    if args.comfyui_url is not None and (why := asyncio.run(_comfyui_unreachable(args.comfyui_url))):
        parser.error(f"--comfyui-url: no ComfyUI answers at {redact_url(args.comfyui_url)} ({why})")
    # Last: these write (a database, the output folders); when one is refused, what either created is removed
    new = _new_paths(args.db, args.output_dir)
    try:
        db = _checked("--db", _database, args.db)
        output_dir = _checked("--output-dir", _output_dir, args.output_dir) or DemoOptions().output_dir
    except argparse.ArgumentTypeError as exc:
        _remove(new)
        parser.error(str(exc))
    args.output_dir, args.db = output_dir, db
    return args


def _checked(flag: str, check: Callable[[str], Path], value: str | None) -> Path | None:
    try:
        return check(value) if value else None
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{flag}: {exc}") from None


def _new_paths(db: str | None, output_dir: str | None) -> list[Path]:
    """What checking --db and --output-dir may create that is not there yet: the database and SQLite's files beside
    it, and the outermost missing folder on the way to each output folder."""
    paths = [Path(db + suffix) for suffix in ("", "-wal", "-shm", "-journal")] if db else []
    for folder in (Path(output_dir, "outputs"), Path(output_dir, "logs")) if output_dir else ():
        paths += list(takewhile(lambda path: not os.path.lexists(path), (folder, *folder.parents)))[-1:]
    return [path for path in paths if not os.path.lexists(path)]


def _remove(paths: list[Path]) -> None:
    for path in filter(os.path.lexists, paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


async def _comfyui_unreachable(url: str) -> str | None:
    """Why GET /system_stats (as the workers ask it) fails, or None. Before, every worker waited for it in vain,
    was started again, until --timeout-s (15 minutes by default)."""
    try:
        async with httpx.AsyncClient(timeout=COMFYUI_PROBE_S, transport=direct_transport(url)) as http:
            response = await http.get(f"{url.rstrip('/')}/system_stats")
    except httpx.HTTPError as exc:
        return type(exc).__name__  # its text holds the URL, credentials and all
    return None if response.status_code == 200 else f"HTTP {response.status_code}"


def run_demo_command(argv: list[str]) -> int:
    try:
        args = parse_demo_args(argv)
    except KeyboardInterrupt:  # the --comfyui-url probe waits up to COMFYUI_PROBE_S
        print(f"{INTERRUPTED}; nothing was started", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        if args.db is not None:  # as `python -m queue_manager` does: one started on it later is refused
            lock_database(args.db)
    except DatabaseInUse as exc:
        print(f"comfy-serverless demo: error: {exc}; stop it or give the demo a database of its own", file=sys.stderr)
        return 2
    # Without a terminal there is no live table: the progress lines (info) are all an operator sees until the end.
    live = not args.no_live and sys.stderr.isatty()
    configure_logging("console" if sys.stderr.isatty() else "json", "warning" if live else "info")
    _show_only_the_demo_s_own_info_lines()
    options = DemoOptions(
        jobs=args.jobs, users=args.users, bad_jobs=args.bad_jobs, max_replicas=args.max_replicas,
        comfyui_url=args.comfyui_url, node_seconds=args.node_seconds, spread_s=args.spread_s,
        price_per_hour=args.price_per_hour, output_dir=args.output_dir, db=args.db,
        idle_to_zero_s=args.idle_to_zero_s, target_wait_s=args.target_wait_s, timeout_s=args.timeout_s, live=live,
        providers=args.providers, fail=args.fail,
    )
    # Ctrl-C stops the run itself (exit 1, the report saying so); before its handlers are set and after they are
    # removed it interrupts whatever runs, the replicas stopped by then or never started.
    path = args.output_dir / "report.json"
    try:
        report = asyncio.run(run_demo(options))
    except KeyboardInterrupt:
        print(f"{INTERRUPTED}; nothing is left running", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ReportNotWritten as exc:
        print(f"comfy-serverless demo: {exc}; nothing is left running", file=sys.stderr)
        return 1
    try:
        print_report(report, path)
    except KeyboardInterrupt:
        print(f"{INTERRUPTED}; nothing is left running, the report is in {path}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if report["ok"] else 1


def _drop_other_info_lines(_logger: object, method: str, event: dict) -> dict:
    if method in ("debug", "info") and event.get("event") not in DEMO_INFO_LINES:
        raise structlog.DropEvent
    return event


def _show_only_the_demo_s_own_info_lines() -> None:
    """The queue manager, the scaler and the fake provider APIs run in this process and log each job, tick and
    request: 1,389 lines in a 3-minute --no-live run, 33 of them its progress. Warnings and errors still show."""
    structlog.configure(processors=[_drop_other_info_lines, *structlog.get_config()["processors"]])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def print_report(report: dict, path: Path) -> None:
    console = Console(soft_wrap=True)
    cost = report["cost_usd"]
    console.print(f"\n[bold]Demo report[/bold] ({escape(str(path))})")
    console.print(
        f"  jobs: {report['jobs_submitted']} submitted, {report['completed']} completed, {report['failed']} failed "
        f"({report['failed_on_purpose']} broken on purpose, --bad-jobs), "
        f"{len(report['unfinished'])} unfinished; {report['requeued_by_scale_down']} requeued by a scale-down"
    )
    for reason, count in report["failure_reasons"].items():
        console.print(f"    {count} x {shown(reason)}")
    console.print(f"  wait p50/p95: {report['wait_s']['p50']} / {report['wait_s']['p95']} s; "
                  f"run p50/p95: {report['run_s']['p50']} / {report['run_s']['p95']} s")
    console.print(f"  replica starts: {report['replica_starts']}; replicas at the end: {report['replicas_at_end']}")
    if "billed_by_the_providers" in cost:
        spend = (f"  GPU spend: ${cost['per_second']:.4f} by the second at each provider's price, "
                 f"${cost['billed_by_the_providers']:.2f} billed by the providers (below), against "
                 f"${cost['always_on_one_gpu_same_span']:.2f} for one always-on GPU at "
                 f"${report['price_per_hour']:.2f}/h")
    else:
        spend = (f"  GPU spend at ${report['price_per_hour']:.2f}/h: ${cost['per_second']:.4f} by the second, "
                 f"${cost['billed_10_min_intervals']:.2f} billed in 10-minute intervals, against "
                 f"${cost['always_on_one_gpu_same_span']:.2f} for one always-on GPU")
    console.print(f"{spend} over the same {report['span_s']} s "
                  f"(which, alone, would have needed {report['gpu_work_s']} s of work for these jobs)")
    if "providers" in report:
        _print_providers(console, report["providers"])
    console.print(f"  outputs: {escape(report['outputs'])}")
    _print_results(console, report["results"])
    if report["stopped"]:
        console.print(f"  [red]stopped before the end: {shown(report['stopped'])}[/red]")
    if report["orphan_processes"]:
        console.print(f"  [red]processes still alive: {report['orphan_processes']}[/red]")
    if report["failed_unexpectedly"]:
        failed = ", ".join(report["failed_unexpectedly"])
        console.print(f"  [red]jobs that failed though not broken on purpose: {failed}[/red]")
    if report["unfinished"]:
        console.print(f"  [red]jobs that did not finish: {', '.join(report['unfinished'])}[/red]")
    for failure in report["not_saved"]:
        console.print(f"  [red]not saved: {escape(failure)}[/red]")
    console.print("[green]OK[/green]" if report["ok"] else "[red]NOT OK[/red]")


def shown(text: str) -> str:
    """Text from a job or a peer (ComfyUI's error, a provider's) as the terminal shows it, not obeys it: rich markup
    and each character that is not printable (colours, a window title, a cleared screen, a line written over)
    escaped."""
    return escape(escape_controls(text))


def _whole(low: int, high: int) -> Callable[[str], int]:
    return _ranged(integer, "a whole number", low, high)


def _number(low: float, high: float) -> Callable[[str], float]:
    return _ranged(number, "a number", low, high)


def _price(text: str) -> float:
    """A price the scaler takes (scaler.policy.is_a_price) up to the demo's own bound: 0 (free), or from
    MIN_PRICE_PER_HOUR; one between made ScalingConfig raise once everything had started (a traceback)."""
    value = _number(0, MAX_PRICE_PER_HOUR)(text)
    if 0 < value < MIN_PRICE_PER_HOUR:
        raise argparse.ArgumentTypeError(f"{text} is not 0 (free) or {MIN_PRICE_PER_HOUR:g}-{MAX_PRICE_PER_HOUR:g}")
    return value


def _ranged(convert: Callable[[str], Number], kind: str, low: Number, high: Number) -> Callable[[str], Number]:
    """An argparse type: ``kind`` from ``low`` to ``high``; nan, inf or out of range is refused (argparse names
    the flag)."""
    def parse(text: str) -> Number:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not low <= value <= high:  # nan fails this too
            raise argparse.ArgumentTypeError(f"{text} is not {low:g}-{high:g}")
        return value

    return parse


def _comfyui_url(text: str) -> str:
    """A URL the workers take as COMFYUI_URL (worker.config reads it as AnyHttpUrl): refused by every worker at
    start, each was started again until --timeout-s."""
    try:
        TypeAdapter(AnyHttpUrl).validate_python(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(f"{scrub(repr(text))} is not an http:// or https:// URL") from None
    return text


def _named(text: str) -> str:
    """Never blank: `--output-dir "$OUT"` with OUT unset took the current folder, `--db " "` a file named " "."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"an empty path ({text!r}): name it, or leave the option out")
    return text


def _output_dir(text: str) -> Path:
    """A folder the demo can write its outputs to (created here); one it cannot was a traceback once started."""
    path = Path(text)
    try:
        for folder in ("outputs", "logs"):  # logs: a file in its place was a traceback once the replicas started
            (path / folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot create {error.filename or text}: {error.strerror}") from None
    return path


def _database(text: str) -> Path:
    """A file the queue manager can open as its database (a new one is created): a folder, a file in a missing
    folder, one that is no database or one another process holds locked was a traceback once it was starting.
    And one no other process has open and no job of which is unfinished: the demo's simulated workers took a serving
    (or stopped) queue manager's jobs too."""
    try:
        store = JobStore(text)
        try:
            counts = store.counts()
        finally:
            store.close()
    except sqlite3.Error as error:
        raise argparse.ArgumentTypeError(f"cannot open {text}: {error}") from None
    if _opened_elsewhere(text):
        raise argparse.ArgumentTypeError(f"{text} is in use by another process (a queue manager serving it?); "
                                         "stop it or give the demo a database of its own")
    if unfinished := counts[JobStatus.PENDING] + counts[JobStatus.RUNNING]:
        raise argparse.ArgumentTypeError(
            f"{text} holds {unfinished} unfinished job{'s' if unfinished > 1 else ''} (pending or running): the "
            "demo's simulated workers would run them with simulated images (a stopped queue's database?); give the "
            "demo a database of its own")
    return Path(text)


def _opened_elsewhere(path: str) -> bool:
    """Whether another connection has the database open: in WAL mode (the queue manager's) an idle one holds no
    transaction, but it keeps an exclusive lock from being taken."""
    probe = sqlite3.connect(path, timeout=DB_IN_USE_WAIT_S, isolation_level=None)
    try:
        probe.execute("PRAGMA locking_mode=EXCLUSIVE")
        probe.execute("BEGIN EXCLUSIVE")
        probe.execute("ROLLBACK")
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()
    return False


def _providers(text: str) -> tuple[str, ...]:
    try:
        return tuple(parse_providers(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _print_results(console: Console, results: dict) -> None:
    line = (f"  Results: {results['fetched']} files fetched through the queue manager ({ROUTE}), "
            f"{results['failed']} failed")
    console.print(line if not results["failed"] else f"[red]{line}[/red]")
    if first := results["first_failure"]:
        where = f"job {first['job_id']}, {first['path']}"
        console.print(f"    [red]first: {shown(where)}: {shown(first['reason'])}[/red]")


def _print_providers(console: Console, fleet: dict) -> None:
    console.print("  providers (billed by each one's own rule):")
    for name, row in fleet["providers"].items():
        spend = fleet["spend"].get(name, {}).get("last_day", 0.0)
        state = f"degraded: {shown(str(row['degraded']))}" if row["degraded"] else "healthy"
        console.print(f"    {name}: {row['replica_starts']} replica starts, ${spend:.4f} at "
                      f"${row['price_per_hour']:.2f}/h ({row['billing']}), {state}")
    moves: dict[str, int] = {}
    for move in fleet["moves"]:
        key = f"{move['provider']} {move.get('reason') or move['health']}"
        moves[key] = moves.get(key, 0) + 1
    console.print("  fallback moves: " + (", ".join(f"{shown(k)} x{n}" for k, n in moves.items()) or "none"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: comfy-serverless {demo,queue} [options]\n\n"
              "  demo   run the whole system on this machine (see: comfy-serverless demo --help)\n"
              "  queue  serve the local queue manager (see: comfy-serverless queue --help)")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return run_demo_command(rest)
    if command == "queue":
        from queue_manager.__main__ import main as queue_main

        return queue_main(rest)
    print(f"comfy-serverless: unknown command {command!r} (expected demo or queue)", file=sys.stderr)
    return 2
