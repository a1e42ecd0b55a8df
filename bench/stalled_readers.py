"""Clients that ask for answers and never read them: how many connections the health server keeps, and its RSS.

    ./dev python -m bench.stalled_readers                        # 500 clients, watched for 90 s
    ./dev python -m bench.stalled_readers --clients 500 --watch 90
    cd /tmp && PYTHONPATH=<another checkout> <venv>/bin/python <this file>   # measure another version

The health server in its own process, as bench/slow_headers.py starts it. Each client connects with a 4 KB receive
buffer and sends `GET /metrics` pipelined, 2000 at a time, for 5 s or until its socket takes no more, then holds
the connection without reading a byte. Fewer than the 1000-connection cap (common.waiting_connections), so that
cap never closes one. Printed every 10 s: the connections the server holds established on its port (from
/proc/net/tcp) and its RSS; at the end, 20 fresh `/health` probes (statuses, p50 and worst latency).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import socket
import tempfile
import time
from pathlib import Path

from bench.idle_connections import probe
from bench.slow_headers import rss_mb, server_process

SCRAPES = b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n" * 2000
SEND_FOR_S = 5.0


def connections_on(port: int) -> int:
    """The connections established on this machine whose local side is ``port`` (the server's ends)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            _, local, _, state = line.split()[:4]
            count += int(local.rsplit(":", 1)[1], 16) == port and state == "01"
    return count


def run(clients: int, watch_s: float) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks: list[socket.socket] = []
    with tempfile.TemporaryDirectory() as scratch, server_process("health", Path(scratch)) as (process, port):
        try:
            time.sleep(0.5)
            before = rss_mb(process.pid)
            for _ in range(clients):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", port))
                sock.setblocking(False)
                socks.append(sock)
            started = time.monotonic()
            while time.monotonic() - started < SEND_FOR_S:
                for sock in socks:
                    with contextlib.suppress(BlockingIOError, InterruptedError, ConnectionError):
                        sock.send(SCRAPES)
                time.sleep(0.2)
            samples = []
            while (at := time.monotonic() - started) <= watch_s:
                held = {"connections": connections_on(port), "rss_mb": round(rss_mb(process.pid))}
                samples.append({"s": round(at), **held})
                time.sleep(10)
            health = probe(port, "/health")
        finally:
            for sock in socks:
                sock.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return {"clients": clients, "rss_before_mb": round(before), "samples": samples, "/health": health}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--watch", type=float, default=90.0, help="seconds to watch after the clients sent")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.clients, args.watch)), flush=True)


if __name__ == "__main__":
    main()
