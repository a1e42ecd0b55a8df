"""Memory of `python -m queue_manager` while clients download a job's large output at once: RSS before, sampled
during, after, and the peak.

    ./dev python -m bench.output_downloads               # 20 clients, a 200 MB file
    ./dev python -m bench.output_downloads --clients 5 --file-mb 50
    ./dev python -m bench.output_downloads --no-sendfile   # aiohttp's fallback: the file read and sent in chunks

Runs the production CLI in a child process with QUEUE_MANAGER_OUTPUTS_DIR set, completes one job whose result lists
one file of --file-mb, then has --clients threads fetch GET /api/jobs/{id}/outputs/{path} at once, each reading the
answer as it streams and keeping none of it. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.queue_memory import rss_mb, running, settled_rss_mb

MB = 1000 * 1000


def completed_job(client: httpx.Client, outputs: Path, file_mb: int) -> str:
    """A job completed as a worker completes it, its one output a file of file_mb on the volume: its URL."""
    client.post("/api/jobs", json={"user_id": "alice", "workflow": {"1": {}}}).raise_for_status()
    job = client.get("/api/workers/next-job", params={"worker_id": "bench"}).json()["job"]
    path = f"alice/{job['id']}/ComfyUI_00001_.mp4"
    (outputs / path).parent.mkdir(parents=True)
    with (outputs / path).open("wb") as out:
        for _ in range(file_mb):
            out.write(os.urandom(MB))
    result = {"outputs": [{"node_id": "9", "kind": "videos", "path": path, "bytes": file_mb * MB, "sha256": ""}]}
    client.post("/api/workers/complete-job", params={"job_id": job["id"]}, json={"result": result}).raise_for_status()
    return f"/api/jobs/{job['id']}/outputs/{quote(path)}"


def download(url: str, path: str) -> int:
    received = 0
    with httpx.Client(base_url=url, timeout=300) as client, client.stream("GET", path) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_bytes(1 << 20):
            received += len(chunk)
    return received


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--file-mb", type=int, default=200)
    parser.add_argument("--no-sendfile", action="store_true", help="aiohttp's fallback: read and sent in chunks")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        outputs = Path(scratch) / "outputs"
        outputs.mkdir()
        sendfile = {"AIOHTTP_NOSENDFILE": "1"} if args.no_sendfile else {}
        env = {"QUEUE_MANAGER_OUTPUTS_DIR": str(outputs), **sendfile}
        with (
            running(Path(scratch) / "q.db", None, **env) as (process, url),
            httpx.Client(base_url=url, timeout=60) as client,
        ):
            path = completed_job(client, outputs, args.file_mb)
            client.get("/health")
            before, _ = rss_mb(process.pid)
            samples: list[float] = []
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.05):
                    samples.append(rss_mb(process.pid)[0])

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            try:
                with ThreadPoolExecutor(max_workers=args.clients) as pool:
                    received = list(pool.map(lambda _: download(url, path), range(args.clients)))
                elapsed = time.monotonic() - started
            finally:  # a failed download too: the queue manager is ended next, its /proc status gone
                done.set()
                sampler.join()
            after, peak = settled_rss_mb(client, process.pid)
    whole = sum(1 for count in received if count == args.file_mb * MB)
    print(f"{args.clients} clients x {args.file_mb} MB: {whole}/{args.clients} received whole, "
          f"{sum(received) / MB:.0f} MB in {elapsed:.1f} s ({sum(received) / MB / elapsed:.0f} MB/s)")
    print(f"queue manager RSS: before {before:.0f} MB, during {min(samples, default=before):.0f}-"
          f"{max(samples, default=before):.0f} MB ({len(samples)} samples), after {after:.0f} MB, peak {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
