"""`python -m queue_manager`: run the embedded queue manager until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import structlog

from queue_manager.models import QueueMode
from queue_manager.server import QueueManagerServer

log = structlog.get_logger()

TOKEN_ENV = "QUEUE_MANAGER_TOKEN"  # noqa: S105 - the variable's name, not a secret


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-serverless queue",
        description="Serve the comfy-multi Queue Manager HTTP contract from a local SQLite database.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (default: %(default)s)")
    parser.add_argument(
        "--db",
        metavar="PATH",
        default="queue-manager.db",
        help="SQLite database file; jobs survive restarts (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue-depth",
        type=int,
        default=100,
        help="pending jobs before POST /api/jobs answers 429; 0 = unlimited (default: %(default)s)",
    )
    parser.add_argument(
        "--job-timeout",
        type=float,
        default=3600,
        metavar="SECONDS",
        help="fail a job running longer than this with 'Job timeout exceeded' (default: %(default)s)",
    )
    parser.add_argument(
        "--reaper-interval",
        type=float,
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
        default=None,
        help=f"require 'Authorization: Bearer <token>' on /api/ (default: ${TOKEN_ENV}, else no auth)",
    )
    return parser


async def serve(server: QueueManagerServer, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start(host=host, port=port)
        await stop.wait()
        log.info("queue_manager_stopping")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    server = QueueManagerServer(
        args.db,
        max_queue_depth=args.max_queue_depth,
        job_timeout_s=args.job_timeout,
        reaper_interval_s=args.reaper_interval,
        mode=args.mode,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
    )
    try:
        asyncio.run(serve(server, args.host, args.port))
    except OSError as exc:
        log.error("queue_manager_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
