"""Benchmark: `comfy-scaler` against broken peers: its peak RSS when the queue manager floods its answer, and how
long a tick and `status` last and how long it takes to exit after SIGTERM when Verda and the queue manager
accept connections and never answer.

The peers are loopback servers in this process; the scaler runs as `python -m scaler.cli` from --scaler-source
(default: this checkout; give another checkout, e.g. one of main before the fix, to compare) with the production
defaults (SCALER_INTERVAL_S=15, the clients' own timeouts and retries). Peak RSS is the kernel's ru_maxrss for
the children (the flooded one runs first). Not a test; with silent peers on the old code it takes minutes.

    ./dev python -m bench.scaler_broken_peers   (from the repository root)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHUNK = b"[" + b"0," * 32767 + b"0]"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, read what comes, never answer."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


def flooding(total_bytes: int) -> Handler:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A 200 without a Content-Length, the body JSON-looking bytes until total_bytes or the client leaves."""
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
            sent = 0
            while sent < total_bytes:
                writer.write(CHUNK)
                await writer.drain()
                sent += len(CHUNK)
        writer.close()

    return answer


def scaler_env(queue_url: str, verda_url: str, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SCALER_", "VERDA_", "QUEUE_MANAGER"))}
    return {**keep, "QUEUE_MANAGER_URL": queue_url, "VERDA_API_URL": verda_url, "VERDA_CLIENT_ID": "bench",
            "VERDA_CLIENT_SECRET": "bench-secret", "SCALER_PRICE_PER_REPLICA_HOUR": "2.3", "SCALER_METRICS_PORT": "0",
            "LOG_FORMAT": "json", **extra}


@contextlib.asynccontextmanager
async def scaler(
    source: Path, command: list[str], env: dict[str, str], stdout: int = asyncio.subprocess.PIPE
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m scaler.cli <command>` from `source`, its stderr piped, killed on exit if it is still running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scaler.cli", *command, cwd=source, env=env, stdout=stdout, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def status_seconds(source: Path, env: dict[str, str], timeout_s: float) -> float:
    """`comfy-scaler status --json`: the seconds it took. It must print its report (exit 0, or 1 for the peers it
    could not read) within timeout_s: anything else fails the bench rather than timing a scaler that never ran."""
    started = time.monotonic()
    async with scaler(source, ["status", "--json"], env) as process:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    if process.returncode not in (0, 1) or not stdout.startswith(b"{"):
        raise RuntimeError(f"comfy-scaler status exited {process.returncode} without its report: "
                           f"{stderr[-2000:].decode(errors='replace')}")  # fmt: skip
    return time.monotonic() - started


async def flooded_rss(source: Path, flood_mb: int, timeout_s: float) -> tuple[float, float]:
    """`comfy-scaler status --json` (local backend) against a queue manager flooding its status answer:
    (seconds it took, the children's peak RSS in MiB)."""
    async with serving(flooding(flood_mb * 1024 * 1024)) as url:
        took = await status_seconds(source, scaler_env(url, url, SCALER_BACKEND="local"), timeout_s)
    return took, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


async def silent_status(source: Path, timeout_s: float) -> float:
    """`comfy-scaler status --json` against silent peers, the price looked up in Verda's price list: seconds."""
    async with serving(silent) as url:
        env = scaler_env(url, url)
        del env["SCALER_PRICE_PER_REPLICA_HOUR"]
        return await status_seconds(source, env, timeout_s)


async def silent_run(source: Path, sigterm_after_s: float, timeout_s: float) -> tuple[list[float], float]:
    """`comfy-scaler run` against silent peers, SIGTERM after sigterm_after_s: the seconds (since the start) of
    each decision logged, and the seconds from SIGTERM to the exit (which must be 0 within timeout_s)."""
    async with (
        serving(silent) as url,
        scaler(source, ["run"], scaler_env(url, url), stdout=asyncio.subprocess.DEVNULL) as process,
    ):
        started = time.monotonic()
        decisions: list[float] = []
        others: collections.deque[bytes] = collections.deque(maxlen=20)
        malformed: list[bytes] = []

        async def watch() -> None:
            assert process.stderr is not None
            async for line in process.stderr:
                try:
                    event = json.loads(line) if line.startswith(b"{") else {}
                except ValueError:
                    malformed.append(line)
                    continue
                if isinstance(event, dict) and event.get("event") == "Scaling decision":
                    decisions.append(round(time.monotonic() - started, 1))
                else:
                    others.append(line)

        watcher, exited = asyncio.create_task(watch()), asyncio.create_task(process.wait())
        await asyncio.wait([exited], timeout=sigterm_after_s)
        if exited.done():
            raise RuntimeError(f"comfy-scaler run exited {process.returncode} before SIGTERM: "
                               f"{b''.join(others).decode(errors='replace')}")  # fmt: skip
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(exited, timeout_s)
        exit_s = time.monotonic() - signalled
        await asyncio.wait_for(watcher, timeout_s)
        if malformed:
            raise RuntimeError(f"comfy-scaler run logged a line that is not JSON: {malformed[0][:200]!r}")
        if process.returncode != 0:
            raise RuntimeError(f"comfy-scaler run exited {process.returncode} after SIGTERM: "
                               f"{b''.join(others).decode(errors='replace')}")  # fmt: skip
    return decisions, exit_s


async def measure(args: argparse.Namespace) -> None:
    took, rss = await flooded_rss(args.scaler_source, args.flood_mb, args.scaler_timeout)
    print(f"flooded queue status ({args.flood_mb} MB): status took {took:.1f} s, peak RSS {rss:.0f} MiB")
    took = await silent_status(args.scaler_source, args.scaler_timeout)
    print(f"silent peers: status (price looked up) took {took:.1f} s")
    decisions, exit_s = await silent_run(args.scaler_source, args.sigterm_after, args.scaler_timeout)
    print(f"silent peers: decisions at {decisions} s; SIGTERM at {args.sigterm_after:g} s, exit {exit_s:.1f} s later")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scaler-source", type=Path, default=REPO, help="checkout whose scaler is measured")
    parser.add_argument("--flood-mb", type=int, default=256, help="size of the flooded queue status answer")
    parser.add_argument("--sigterm-after", type=float, default=35.0, help="seconds into the run SIGTERM is sent")
    parser.add_argument("--scaler-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="a scaler command still running this long fails the bench; default 600")  # fmt: skip
    asyncio.run(measure(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
