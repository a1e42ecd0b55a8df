"""Connections that each send the largest request head a server reads, slowly, never finishing it: what the
server's process holds while they last.

    ./dev python -m bench.head_memory                                    # every server, 100, 500, 1000 clients
    ./dev python -m bench.head_memory --server queue --clients 1000
    ./dev python -m bench.head_memory --server health --headers 32 --field-bytes 8190   # aiohttp's field limit
    ./dev python -m bench.head_memory --server queue --clients 1000 --after-close 65   # past the heap trim's minute
    cd /tmp && PYTHONPATH=<another checkout> <venv>/bin/python -m bench.head_memory ...  # another version

Each server in its own process, as bench/slow_headers.py starts it (the health server as the worker does, the
queue manager as `python -m queue_manager`, the scaler's metrics server alone). Each client sends a request line,
then `--headers` headers, each a value of `--field-bytes` bytes (aiohttp's `max_field_size`) and a name of half
that, one header per client per round, 20 ms between rounds, and never the blank line that ends the head. By
default the head is the largest the server reads (common.limits: as many headers as it allows, each as long as
the limit on the whole head lets them be).
The server's RSS is read from its /proc status every 0.1 s while the clients send and for `--hold` seconds after.
Printed: RSS before, its peak, RSS at the end, the connections the server still kept open then, a fresh
probe's answer (the health servers' /health, the metrics server's /metrics), and RSS `--after-close` seconds after
every client closed: what the process keeps (the queue manager trims its heap once a minute, common.heap_trim).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.slow_headers import connect, rss_mb, send, server_process, still_open
from common import limits

HEADS = {"health": "PROBE_HEADS", "metrics": "PROBE_HEADS", "queue": "QUEUE_HEADS"}
PROBE_PATH = {"health": "/health", "metrics": "/metrics", "queue": "/health"}


def largest_head(server: str) -> tuple[int, int]:
    """(headers, bytes each) of the largest head ``server`` reads: as many headers as it allows, each as long as
    the whole head's limit lets them be (aiohttp's 128 of 8190 bytes before common.limits)."""
    heads = getattr(limits, HEADS[server], None)
    if heads is None:
        return 128, 8190
    whole = getattr(heads, "max_head_bytes", None)  # not before common.head_size
    if whole is None:
        return heads.max_headers, heads.max_field_bytes
    request_line_and_host = len(b"GET %s HTTP/1.1\r\nHost: bench\r\n" % PROBE_PATH[server].encode())
    each_line = (whole - request_line_and_host) // (heads.max_headers - 1)
    return heads.max_headers, min(heads.max_field_bytes, (each_line - len(b": \r\n")) * 2 // 3)


def header(number: int, field_bytes: int) -> bytes:
    """The longest header aiohttp's C parser reads: it counts a header's value alone against ``max_field_size``,
    and its name with the name before it (its Python parser counts the whole line)."""
    name = (b"X-Pad-%04d-" % number).ljust(field_bytes // 2, b"n")
    return name + b": " + b"v" * field_bytes + b"\r\n"


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_mb, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            with contextlib.suppress(OSError, KeyError):
                self.peak_mb = max(self.peak_mb, rss_mb(self.pid))


def run(
    server: str, clients: int, headers: int, field_bytes: int, hold_s: float, after_close_s: float
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch, server_process(server, Path(scratch)) as (process, port):
        socks: list[socket.socket] = []
        try:
            time.sleep(0.5)
            before = rss_mb(process.pid)
            peak = PeakRss(process.pid)
            peak.start()
            started = time.monotonic()
            for _ in range(clients):
                socks.append(connect(port, b"GET %s HTTP/1.1\r\nHost: bench\r\n" % PROBE_PATH[server].encode()))
            for number in range(headers - 1):  # Host is one
                line = header(number, field_bytes)
                for sock in socks:
                    send(sock, line)
                time.sleep(0.02)
            sent_s = time.monotonic() - started
            time.sleep(hold_s)
            open_after = sum(still_open(sock) for sock in socks)
            end = rss_mb(process.pid)
            peak.done.set()
            try:
                probe = str(httpx.get(f"http://127.0.0.1:{port}{PROBE_PATH[server]}", timeout=5).status_code)
            except httpx.HTTPError as exc:
                probe = type(exc).__name__
            for sock in socks:
                sock.close()
            time.sleep(after_close_s)
            closed = rss_mb(process.pid)
        finally:
            for sock in socks:
                sock.close()
    return {
        "server": server, "clients": clients, "headers": headers, "field_bytes": field_bytes,
        "head_kib": round(headers * len(header(0, field_bytes)) / 1024), "sent_in_s": round(sent_s, 1),
        "rss_before_mb": round(before), "rss_peak_mb": round(max(peak.peak_mb, end)), "rss_end_mb": round(end),
        "open_at_end": open_after, "probe": probe, "after_close_s": after_close_s, "rss_closed_mb": round(closed),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["health", "queue", "metrics", "all"], default="all")
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--headers", type=int, help="headers each (default: the most the server reads)")
    parser.add_argument("--field-bytes", type=int, help="bytes of each header (default: the most the server reads)")
    parser.add_argument("--hold", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--after-close", type=float, default=2.0, metavar="SECONDS", help="RSS read this long after")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket each
    for server in ["health", "metrics", "queue"] if args.server == "all" else [args.server]:
        most_headers, most_field_bytes = largest_head(server)
        for clients in args.clients:
            head = (args.headers or most_headers, args.field_bytes or most_field_bytes)
            result = run(server, clients, *head, args.hold, args.after_close)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
