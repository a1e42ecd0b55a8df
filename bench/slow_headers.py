"""Clients that never finish their request head: what the health server (:8000) and the queue manager hold.

    ./dev python -m bench.slow_headers                      # both servers, 300 clients, 20 s
    ./dev python -m bench.slow_headers --server health --headers 31 --hold 15
    ./dev python -m bench.slow_headers --bodies --clients 8 --hold 60       # queue manager: dripped bodies
    cd /tmp && PYTHONPATH=<another checkout> <venv>/bin/python <this file>   # measure another version

Each server runs in its own process (the health server as the worker starts it, the queue manager as
`python -m queue_manager`); RSS is read from its /proc status (Linux only). Every client sends a request line and
`--headers` 8000-byte headers, never the blank line that ends the head, then one more byte every second. The
default 120 (just under aiohttp's own limit of 128) is past every server's limits now (common.limits: 32 headers,
a 16/32 KiB head), so each client is refused early: what this measures is how fast. bench/head_memory.py measures
the largest head a server does read. Printed: RSS before, once all are connected, after
`--hold` seconds, how many connections the server still kept open then, and what a fresh GET /health got (its
status, or `no answer: <error>`).

`--bodies` (queue manager only): each client sends a complete head for `POST /api/jobs` declaring 16 MiB (the
route's limit; eight of them reserve the whole 128 MiB budget for bodies in flight), then one byte of body a
second. Every 5 s an honest 2 MiB submission is sent: printed, when each was answered and how, and how many
dripping connections the server still kept open after `--hold` seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench._processes import child

_URL = re.compile(r'(?:url|port)["=:\s]+"?(?:http://[0-9.]+:)?([0-9]+)')
QUEUE_TOKENS = ("QUEUE_MANAGER_TOKEN", "QUEUE_MANAGER_WORKER_TOKEN")
HEADER = b"X-Slow-%03d: " + b"a" * 8000 + b"\r\n"
# For a connection to be accepted and for each send to be taken: a server that keeps a connection open but no
# longer reads from it (or never accepts) blocked the bench for ever.
SOCKET_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 5.0  # for each step of the final GET /health (connect, send, each read)
_HEALTH = """
import asyncio
from common.limits import allow_many_connections
from health.server import HealthServer
from worker.state import WorkerState

async def main():
    allow_many_connections()  # as the worker does at start
    state = WorkerState(worker_id="bench", provider="verda", version="0", max_idle_polls=10, serverless=True)
    server = HealthServer(state, host="127.0.0.1", port=0, heartbeat_timeout_s=3600)
    print("port", await server.start(), flush=True)
    async with state.beating():
        await asyncio.Event().wait()

asyncio.run(main())
"""
_METRICS = """
import asyncio
from scaler.metrics import MetricsServer, ScalerMetrics

async def main():
    print("port", await MetricsServer(ScalerMetrics(), host="127.0.0.1", port=0).start(), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def rss_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024


@contextmanager
def server_process(server: str, scratch: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The server (`health`, `metrics` or `queue`) in its own process and its port, ended on exit (bench._processes)."""
    env = {**os.environ, "LOG_FORMAT": "json"}
    for variable in QUEUE_TOKENS:  # this shell's: a worker token without a token, the queue manager refuses to start
        env.pop(variable, None)
    if server == "health":
        command = [sys.executable, "-c", _HEALTH]
    elif server == "metrics":
        command = [sys.executable, "-c", _METRICS]
    else:
        command = [sys.executable, "-m", "queue_manager", "--port", "0", "--db", str(scratch / "q.db")]
    # Its log goes to a file: a pipe nobody reads fills up and stops the server mid-write.
    log = scratch / "server.log"
    with log.open("wb") as sink, child(command, env=env, stdout=sink, stderr=subprocess.STDOUT) as process:
        deadline = time.monotonic() + 20
        while not (match := _URL.search(printed := log.read_text(errors="replace"))):
            if process.poll() is not None:
                raise RuntimeError(f"the {server} server exited {process.returncode}: {printed[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {server} server never printed its port in 20 s: {printed[-2000:]}")
            time.sleep(0.1)
        yield process, int(match.group(1))


def still_open(sock: socket.socket) -> bool:
    """Whether the server has kept the connection (an answer it sent, a 400, is read past)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def connect(port: int, head: bytes) -> socket.socket:
    """A connection to the server on ``port`` that has sent ``head``."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"the server did not accept a connection in {SOCKET_TIMEOUT_S:g} s") from None
    try:
        sock.sendall(head)
    except TimeoutError:
        sock.close()
        raise RuntimeError(f"the server did not read a request's first bytes in {SOCKET_TIMEOUT_S:g} s") from None
    return sock


def send(sock: socket.socket, data: bytes) -> None:
    """``data`` sent on ``sock``, unless the server closed it (its limit)."""
    try:
        sock.sendall(data)
    except TimeoutError:
        raise RuntimeError(
            f"the server read nothing of an open connection for {SOCKET_TIMEOUT_S:g} s (SOCKET_TIMEOUT_S)"
        ) from None
    except OSError:
        pass


def health_probe(port: int) -> int | str:
    """The status of GET /health once the clients held their connections, or why there is none: a server they left
    unable to answer is what this bench finds, not a traceback that loses the figures."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=PROBE_TIMEOUT_S).status_code
    except httpx.HTTPError as exc:
        return f"no answer: {type(exc).__name__} ({PROBE_TIMEOUT_S:g} s timeout)"


def run(server: str, clients: int, headers: int, hold_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch, server_process(server, Path(scratch)) as (process, port):
        socks: list[socket.socket] = []
        try:
            time.sleep(0.5)
            before = rss_mb(process.pid)
            head = b"GET /health HTTP/1.1\r\nHost: bench\r\n" + b"".join(HEADER % i for i in range(headers))
            for _ in range(clients):
                socks.append(connect(port, head))
            time.sleep(1)
            held = rss_mb(process.pid)
            deadline = time.monotonic() + hold_s
            while time.monotonic() < deadline:
                for sock in socks:
                    send(sock, b"a")  # still sending: never idle, never done
                time.sleep(1)
            open_after = sum(still_open(sock) for sock in socks)
            after = rss_mb(process.pid)
            probe = health_probe(port)
        finally:
            for sock in socks:
                sock.close()
    return {
        "server": server, "clients": clients, "head_kib": len(head) // 1024, "rss_before_mb": round(before),
        "rss_held_mb": round(held), "hold_s": hold_s, "open_after_hold": open_after, "rss_after_hold_mb": round(after),
        "probe": probe,
    }  # fmt: skip


BODY_DECLARED = 16 * 1024 * 1024
HONEST_SUBMIT = ('{"user_id": "alice", "workflow": {"1": {"class_type": "SaveImage", "inputs": {"pad": "'
                 + "x" * (2 * 1024 * 1024) + '"}}}}').encode()


def run_bodies(clients: int, hold_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch, server_process("queue", Path(scratch)) as (_, port):
        socks: list[socket.socket] = []
        honest: list[str] = []
        try:
            time.sleep(0.5)
            head = b"POST /api/jobs HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n" % BODY_DECLARED
            for _ in range(clients):
                socks.append(connect(port, head))
            started = time.monotonic()
            next_honest = started + 5
            while time.monotonic() < started + hold_s:
                for sock in socks:
                    send(sock, b" ")
                if time.monotonic() >= next_honest:
                    sent = time.monotonic() - started
                    try:
                        answer = str(httpx.post(f"http://127.0.0.1:{port}/api/jobs", content=HONEST_SUBMIT,
                                                timeout=15).status_code)
                    except httpx.HTTPError as exc:
                        answer = type(exc).__name__
                    honest.append(f"{sent:.0f}s:{answer}")
                    next_honest += 5
                time.sleep(1)
            open_after = sum(still_open(sock) for sock in socks)
        finally:
            for sock in socks:
                sock.close()
    return {"clients": clients, "declared_mib": BODY_DECLARED >> 20, "hold_s": hold_s, "open_after_hold": open_after,
            "honest_2mib_submits": " ".join(honest)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["health", "queue", "both"], default="both")
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--headers", type=int, default=120)
    parser.add_argument("--hold", type=float, default=20.0, metavar="SECONDS")
    parser.add_argument("--bodies", action="store_true", help="drip request bodies to the queue manager instead")
    args = parser.parse_args(argv)
    if args.bodies:
        print(run_bodies(args.clients, args.hold), flush=True)
        return
    for server in ["health", "queue"] if args.server == "both" else [args.server]:
        print(run(server, args.clients, args.headers, args.hold), flush=True)


if __name__ == "__main__":
    main()
