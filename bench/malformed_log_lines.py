"""How many log lines a flood of requests a server cannot parse writes: a port scan, a broken client.

    ./dev python -m bench.malformed_log_lines                      # 10 000 requests to the worker's health server
    ./dev python -m bench.malformed_log_lines --requests 100000
    cd /tmp && PYTHONPATH=<another checkout> <venv>/bin/python -m bench.malformed_log_lines   # another version

The health server runs in this process with the JSON log of a container (common.logs), written to memory. Each
request comes on its own connection, 50 at a time, with a header line that has no colon (answered 400). Printed:
requests sent, 400s received, the log lines of the refusals, and the bytes they took.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time

from common.logs import configure_logging
from health.server import HealthServer
from worker.state import WorkerState

MALFORMED = b"GET /health HTTP/1.1\r\nHost: bench\r\nNot a header\r\n\r\n"
ANSWER_TIMEOUT_S = 10.0  # for the server to answer a malformed request and close its connection


async def refused(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(MALFORMED)
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                return (await reader.read()).startswith(b"HTTP/1.0 400")
        except TimeoutError:
            raise RuntimeError(
                f"the health server did not answer a malformed request and close in {ANSWER_TIMEOUT_S:g} s"
            ) from None
    finally:
        writer.close()


async def run(requests: int, concurrency: int) -> dict[str, object]:
    log = io.StringIO()
    configure_logging("json", "info", stream=log)
    state = WorkerState(worker_id="bench", provider="verda", version="1.0", max_idle_polls=10, serverless=True)
    health = HealthServer(state, host="127.0.0.1", port=0, heartbeat_timeout_s=30)
    port = await health.start()
    gate = asyncio.Semaphore(concurrency)

    async def one() -> bool:
        async with gate:
            return await refused(port)

    started = time.monotonic()
    try:
        answered = sum(await asyncio.gather(*(one() for _ in range(requests))))
    finally:
        await health.stop()
    lines = [line for line in log.getvalue().splitlines() if "Malformed HTTP" in line]
    return {
        "requests": requests, "answered_400": answered, "in_s": round(time.monotonic() - started, 1),
        "log_lines": len(lines), "log_bytes": sum(len(line) + 1 for line in lines),
        "last_line": json.loads(lines[-1])["event"] if lines else None,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args.requests, args.concurrency))), flush=True)


if __name__ == "__main__":
    main()
