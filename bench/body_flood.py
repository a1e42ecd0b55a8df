"""Clients that send request bodies the server never reads, as fast as they can, each reconnecting at once when
closed: does the probe still get its answer quickly, and what does the server's process hold?

    ./dev python -m bench.body_flood                                     # the health server, 200 clients, 20 s
    ./dev python -m bench.body_flood --server queue --clients 50 200 --seconds 30
    cd /tmp && PYTHONPATH=<another checkout> <venv>/bin/python -m bench.body_flood ...  # another version

Each server in its own process, as bench/slow_headers.py starts it. The clients run in one helper process: each
sends `GET <probe path>` with `Content-Length: 10^12` and then 64 KiB blocks of body for as long as the server
keeps the connection, then connects again. A GET's handler never reads a body: by aiohttp's default the server
answers, then reads on and discards the body until its lingering time (10 s) ends, then closes. While the clients
send, a fresh probe (the health servers' /health, the metrics server's /metrics) every
0.2 s, 5 s timeout each; the server's RSS read from its /proc status every 0.1 s. Printed: the probes' statuses,
p50 and worst latency, RSS before, its peak, at the end, the connections the clients made (how often the server
closed them), the CPU seconds the server used, and its RSS `--after` seconds after the clients stopped.

`--large-bodies N` (the queue manager only): what a setting costs legitimate clients, without a flood: N
submissions of a 10 MB workflow (`POST /api/jobs`, each read, validated and stored) and N 40 MB reports of an
unknown job (read whole, then 422), one at a time; printed: the p50 of each and the server's CPU seconds for them.
Any other answer (a 401, a 413 of a smaller limit) fails the bench: a refusal is not the legitimate post timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.head_memory import PROBE_PATH, PeakRss
from bench.slow_headers import rss_mb, server_process

_FLOOD = """
import asyncio, sys
port, clients, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
head = b"GET %s HTTP/1.1\\r\\nHost: bench\\r\\nContent-Length: 1000000000000\\r\\n\\r\\n" % path.encode()
block = b"x" * 65536
connections = 0

async def client():
    global connections
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        connections += 1
        try:
            writer.write(head)
            while True:
                writer.write(block)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

async def main():
    for _ in range(clients):
        asyncio.create_task(client())
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    print(connections, flush=True)

asyncio.run(main())
"""


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run(server: str, clients: int, seconds: float, after_s: float) -> dict[str, object]:
    path = PROBE_PATH[server]
    with tempfile.TemporaryDirectory() as scratch, server_process(server, Path(scratch)) as (process, port):
        time.sleep(0.5)
        before, cpu_before = rss_mb(process.pid), cpu_s(process.pid)
        peak = PeakRss(process.pid)
        peak.start()
        flood = subprocess.Popen(
            [sys.executable, "-c", _FLOOD, str(port), str(clients), path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        statuses: dict[str, int] = {}
        latencies: list[float] = []
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    outcome = str(httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[outcome] = statuses.get(outcome, 0) + 1
                time.sleep(0.2)
            end = rss_mb(process.pid)
        finally:
            connections, _ = flood.communicate("")
        cpu = cpu_s(process.pid) - cpu_before
        time.sleep(after_s)
        peak.done.set()
        after = rss_mb(process.pid)
    latencies.sort()
    return {
        "server": server, "clients": clients, "seconds": seconds, "connections": int(connections or 0),
        "probes": statuses, "p50_ms": round(latencies[len(latencies) // 2], 1), "max_ms": round(latencies[-1], 1),
        "server_cpu_s": round(cpu, 1), "rss_before_mb": round(before), "rss_peak_mb": round(max(peak.peak_mb, end)),
        "rss_end_mb": round(end), "after_s": after_s, "rss_after_mb": round(after),
    }  # fmt: skip


def large_bodies(posts: int) -> dict[str, object]:
    node = {"class_type": "CLIPTextEncode", "inputs": {"text": "y" * 900}}
    submission = json.dumps({"user_id": "alice", "workflow": {str(n): node for n in range(10_500)}}).encode()
    report = b"x" * (40 * 1024 * 1024)
    with (
        tempfile.TemporaryDirectory() as scratch,
        server_process("queue", Path(scratch)) as (process, port),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client,
    ):
        figures: dict[str, object] = {"posts": posts}
        for name, path, body, expected in [
            ("submit_10MB", "/api/jobs", submission, 201),
            ("report_40MB", "/api/workers/complete-job?job_id=unknown", report, 422),
        ]:
            cpu_before, took = cpu_s(process.pid), []
            for _ in range(posts):
                started = time.perf_counter()
                reply = client.post(path, content=body, headers={"Content-Type": "application/json"})
                took.append((time.perf_counter() - started) * 1000)
                if reply.status_code != expected:  # a refusal (401, 413) is not the legitimate post timed
                    raise RuntimeError(f"{name}: POST {path} answered {reply.status_code}, not {expected}: "
                                       f"{reply.text[:300]}")  # fmt: skip
            figures |= {f"{name}_p50_ms": round(sorted(took)[len(took) // 2]),
                        f"{name}_cpu_s": round(cpu_s(process.pid) - cpu_before, 2)}  # fmt: skip
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["health", "queue", "metrics", "all"], default="health")
    parser.add_argument("--clients", type=int, nargs="+", default=[200])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--after", type=float, default=2.0, metavar="SECONDS", help="RSS read this long after")
    parser.add_argument("--large-bodies", type=int, default=0, metavar="N", help="no flood: N large posts timed")
    args = parser.parse_args(argv)
    if args.large_bodies:
        print(json.dumps(large_bodies(args.large_bodies)), flush=True)
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for server in ["health", "metrics", "queue"] if args.server == "all" else [args.server]:
        for clients in args.clients:
            print(json.dumps(run(server, clients, args.seconds, args.after)), flush=True)


if __name__ == "__main__":
    main()
