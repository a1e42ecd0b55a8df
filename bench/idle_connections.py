"""Many connections held open at once, idle or half-sent: do the servers still answer their probes, and what
does each connection cost?

    ./dev python -m bench.idle_connections                               # both servers, 1000 and 5000, both kinds
    ./dev python -m bench.idle_connections --server queue --connections 20000 --kind half

Each server in its own process, as bench/slow_headers.py starts it (the health server as the worker starts it,
the queue manager as `python -m queue_manager`); each runs at its start the open-file raise of common/limits.py
(to this machine's hard limit). The connections are opened by helper processes (2500 each, so the bench is not
held by its own open-file limit). `idle`: connected, nothing sent; `half`: a request line and one header, never
the blank line that ends the head. Printed: how many connected within 60 s, the files the server holds open then
(its connections and a few more), RSS before and with them all held, and, with them held, 20 fresh requests of each
probe (the health server's /health and /ready; the queue manager's /health and a worker's next-job poll): the
statuses, p50 and worst latency (5 s timeout each). The bench's health server is not ready (no ComfyUI): /ready
answers 503 throughout, as it should.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.slow_headers import rss_mb, server_process

PER_HOLDER = 2500
_HOLDER = """
import socket, sys, time
port, count, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks, deadline = [], time.monotonic() + 60
for _ in range(count):
    if time.monotonic() > deadline:
        break
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=max(0.1, deadline - time.monotonic()))
        if kind == "half":
            sock.sendall(b"GET /health HTTP/1.1\\r\\nHost: bench\\r\\n")
        socks.append(sock)
    except OSError:
        break
print(len(socks), flush=True)
sys.stdin.read()
"""
PROBES = {"health": ["/health", "/ready"], "queue": ["/health", "/api/workers/next-job?worker_id=bench"]}


def probe(port: int, path: str, times: int = 20) -> dict[str, object]:
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    for _ in range(times):
        started = time.perf_counter()
        try:
            with httpx.Client(timeout=5) as client:  # a fresh connection each time, as a probe makes
                outcome = str(client.get(f"http://127.0.0.1:{port}{path}").status_code)
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[outcome] = statuses.get(outcome, 0) + 1
    latencies.sort()
    return {"answers": statuses, "p50_ms": round(latencies[len(latencies) // 2], 1), "max_ms": round(latencies[-1], 1)}


def run(server: str, connections: int, kind: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch, server_process(server, Path(scratch)) as (process, port):
        holders: list[subprocess.Popen[str]] = []
        try:
            time.sleep(0.5)
            probe(port, PROBES[server][0], times=1)
            before = rss_mb(process.pid)
            left = connections
            while left > 0:
                count = min(PER_HOLDER, left)
                holders.append(subprocess.Popen(
                    [sys.executable, "-c", _HOLDER, str(port), str(count), kind],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                ))  # fmt: skip
                left -= count
            connected = sum(int(holder.stdout.readline() or 0) for holder in holders)  # type: ignore[union-attr]
            time.sleep(2)
            held = rss_mb(process.pid)
            files_held = len(os.listdir(f"/proc/{process.pid}/fd"))  # its connections, and a few files
            probes = {path: probe(port, path) for path in PROBES[server]}
            alive = process.poll() is None
        finally:
            for holder in holders:
                holder.communicate("")
    return {
        "server": server, "kind": kind, "connections": connections, "connected": connected,
        "server_open_files": files_held, "rss_before_mb": round(before), "rss_held_mb": round(held),
        "kb_per_connection": round((held - before) * 1024 / max(connected, 1), 1), "alive": alive, **probes,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["health", "queue", "both"], default="both")
    parser.add_argument("--connections", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--kind", choices=["idle", "half", "both"], default="both")
    args = parser.parse_args(argv)
    for server in ["health", "queue"] if args.server == "both" else [args.server]:
        for kind in ["idle", "half"] if args.kind == "both" else [args.kind]:
            for connections in args.connections:
                print(json.dumps(run(server, connections, kind)), flush=True)


if __name__ == "__main__":
    main()
