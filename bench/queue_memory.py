"""Memory of `python -m queue_manager` under 50 MB request bodies: RSS before, after and at peak.

    ./dev python -m bench.queue_memory            # the code on sys.path (PYTHONPATH=<checkout> for another)
    ./dev python -m bench.queue_memory --body-mb 1 --result-mb 1   # a quick check that it runs

Runs the production CLI in a child process and reads its /proc status (Linux only). Scenarios:
  unauthenticated  a token is set; three 50 MB complete-job posts without it (they must be refused unread)
  oversized-submit one 50 MB POST /api/jobs whose workflow is a string (a 422 that must not echo it)
  result-50MB      one 50 MB complete-job for an unknown job (a legal size: read, parsed, answered 404)
  20-concurrent    twenty of those at once (each route bounds its own body; what bounds them together?)
  list-results     8 jobs completed with a 48 MB result each, then GET /api/jobs?status=completed&limit=50 (what
                   the scaler asks every tick): does a list answer hold every result in memory at once?
  job-views        one queued job with a 9 MB workflow (10,000 nodes), then 200 GET /api/jobs/{id} at once
                   (participants polling their job): does each view, which shows no workflow, decode it?
  result-views     one job completed with a 48 MB result of a million short strings, then 16 GET /api/jobs/{id} at
                   once (--result-views): is the memory of answers in flight bounded, and does the database thread
                   (what /health and next-job wait on) stall while they are built?
  unread-views     the same job; 20 raw connections (4 KB receive buffers) send that GET and never read the
                   answer (--unread); RSS and /health --unread-s seconds later, then once they have closed
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench._processes import GRACE_S, child

BODY_MB = 50
URL_TIMEOUT_S = 20.0  # for a queue manager started to print its URL
_URL = re.compile(r'url["=:\s]+"?(http://[0-9.]+:[0-9]+)')


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def settled_rss_mb(client: httpx.Client, pid: int) -> tuple[float, float]:
    """rss_mb once the queue manager has had a second to settle and answered a /health since."""
    time.sleep(1.0)
    client.get("/health")
    return rss_mb(pid)


@contextmanager
def running(db: Path, token: str | None, **env: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A queue manager of its own process and its URL, ended on exit (bench._processes.child);
    `env` on top of this shell's, without its QUEUE_MANAGER_* (a worker token without a token, say, and the
    queue manager refuses to start)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_MANAGER")} | env
    env["LOG_FORMAT"] = "json"
    if token:
        env["QUEUE_MANAGER_TOKEN"] = token
    command = [sys.executable, "-m", "queue_manager", "--port", "0", "--db", str(db)]
    with child(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        yield process, url_printed(process)


def url_printed(process: subprocess.Popen[str], timeout_s: float = URL_TIMEOUT_S) -> str:
    """The URL the queue manager prints as it starts; RuntimeError if it exits first or has not after `timeout_s`
    seconds. Its output is read to the end by a thread of its own, so the pipe never fills."""
    found: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        url = None
        for line in process.stdout:  # type: ignore[union-attr]
            if url is None and (match := _URL.search(line)):
                url = match.group(1)
                found.put(url)
        found.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        url = found.get(timeout=timeout_s)
    except queue.Empty:
        raise RuntimeError(f"the queue manager printed no URL in {timeout_s:g} s") from None
    if url is None:
        raise RuntimeError(f"the queue manager exited {process.wait(timeout=GRACE_S)} before printing its URL")
    return url


def post(url: str, path: str, params: dict[str, str], body: bytes) -> str:
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            response = client.post(path, params=params, content=body)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return f"{response.status_code} ({len(response.content)} B answer)"


def scenario(
    name: str, token: str | None, posts: list[tuple[str, dict[str, str], bytes]], *, at_once: bool = False
) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory() as scratch,
        running(Path(scratch) / "q.db", token) as (process, url),
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        client.get("/health")
        before, _ = rss_mb(process.pid)
        with ThreadPoolExecutor(max_workers=len(posts) if at_once else 1) as pool:
            answers = list(pool.map(lambda post_: post(url, *post_), posts))
        statuses = [f"{answers.count(answer)} x {answer}" for answer in sorted(set(answers))]
        after, peak = settled_rss_mb(client, process.pid)
    return {"scenario": name, "before_mb": before, "after_mb": after, "peak_mb": peak, "answers": statuses}


def list_scenario(jobs: int, result_mb: int) -> dict[str, object]:
    """``jobs`` jobs completed with a ``result_mb`` result each, then one list of the completed ones."""
    with (
        tempfile.TemporaryDirectory() as scratch,
        running(Path(scratch) / "q.db", None) as (process, url),
        httpx.Client(base_url=url, timeout=300) as client,
    ):
        report = ('{"result": {"blob": "' + "x" * (result_mb * 1000 * 1000) + '"}}').encode()
        for _ in range(jobs):
            workflow = {"1": {"class_type": "SaveImage", "inputs": {}}}
            client.post("/api/jobs", json={"user_id": "alice", "workflow": workflow}).raise_for_status()
            job = client.get("/api/workers/next-job", params={"worker_id": "bench"}).json()["job"]
            client.post("/api/workers/complete-job", params={"job_id": job["id"]}, content=report)
        time.sleep(1.0)
        before, _ = rss_mb(process.pid)
        answer = client.get("/api/jobs", params={"status": "completed", "limit": 50})
        listed = len(answer.json()) if answer.status_code == 200 else 0
        after, peak = rss_mb(process.pid)
    statuses = [f"{answer.status_code}: {listed} jobs, {len(answer.content) / 1e6:.0f} MB answer"]
    return {"scenario": "list-results", "before_mb": before, "after_mb": after, "peak_mb": peak, "answers": statuses}


def views_scenario(readers: int, workflow_mb: int) -> dict[str, object]:
    """One queued job with a ``workflow_mb`` workflow of 1 kB nodes, then ``readers`` reads of it at once."""
    with (
        tempfile.TemporaryDirectory() as scratch,
        running(Path(scratch) / "q.db", None) as (process, url),
        httpx.Client(base_url=url, timeout=300) as client,
    ):
        node = {"class_type": "CLIPTextEncode", "inputs": {"text": "y" * 900}}
        workflow = {str(n): node for n in range(workflow_mb * 1000)}
        job_id = client.post("/api/jobs", json={"user_id": "alice", "workflow": workflow}).json()["id"]
        before, _ = settled_rss_mb(client, process.pid)

        def view(_: int) -> str:
            with httpx.Client(base_url=url, timeout=300) as reader:
                answer = reader.get(f"/api/jobs/{job_id}")
            return f"{answer.status_code} ({len(answer.content)} B answer)"

        with ThreadPoolExecutor(max_workers=readers) as pool:
            answers = list(pool.map(view, range(readers)))
        after, peak = settled_rss_mb(client, process.pid)
    statuses = [f"{answers.count(answer)} x {answer}" for answer in sorted(set(answers))]
    return {"scenario": "job-views", "before_mb": before, "after_mb": after, "peak_mb": peak, "answers": statuses}


def completed_with_result(client: httpx.Client, result_mb: int) -> str:
    """A job completed with a result of ~``result_mb`` MB of 48-character strings (costly to decode): its id."""
    job_id = client.post("/api/jobs", json={"user_id": "alice", "workflow": {"1": {}}}).json()["id"]
    client.get("/api/workers/next-job", params={"worker_id": "bench"}).raise_for_status()
    strings = [f"{n:048d}" for n in range(result_mb * 1000 * 1000 // 51)]  # under the million values refused
    report = json.dumps({"result": {"outputs": [], "v": strings}}).encode()
    client.post("/api/workers/complete-job", params={"job_id": job_id}, content=report).raise_for_status()
    return job_id


@contextmanager
def serving_a_result(result_mb: int) -> Iterator[tuple[subprocess.Popen[str], str, httpx.Client, str, float]]:
    """A queue manager holding one job completed with a ``result_mb`` result: its process, URL, a client, the
    job's id and the settled RSS before anything reads it."""
    with (
        tempfile.TemporaryDirectory() as scratch,
        running(Path(scratch) / "q.db", None) as (process, url),
        httpx.Client(base_url=url, timeout=300) as client,
    ):
        job_id = completed_with_result(client, result_mb)
        before, _ = settled_rss_mb(client, process.pid)
        yield process, url, client, job_id, before


def result_views_scenario(readers: int, result_mb: int) -> dict[str, object]:
    """``readers`` GETs at once of a job with a ``result_mb`` result; the slowest /health and next-job meanwhile."""
    with serving_a_result(result_mb) as (process, url, client, job_id, before):
        done, slowest, peak = threading.Event(), {"/health": 0.0, "/api/workers/next-job": 0.0}, [before]

        def probe(path: str) -> None:
            with httpx.Client(base_url=url, timeout=300) as prober:
                while not done.is_set():
                    started = time.monotonic()
                    prober.get(path, params={"worker_id": "idle"} if "next-job" in path else None)
                    slowest[path] = max(slowest[path], time.monotonic() - started)
                    time.sleep(0.05)

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(process.pid)[0])
                time.sleep(0.05)

        def view(_: int) -> str:
            with httpx.Client(base_url=url, timeout=300) as reader:
                answer = reader.get(f"/api/jobs/{job_id}")
            return f"{answer.status_code} ({len(answer.content) / 1e6:.0f} MB answer)"

        watchers = [threading.Thread(target=probe, args=(path,)) for path in slowest] + [threading.Thread(target=watch)]
        for thread in watchers:
            thread.start()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=readers) as pool:
            answers = list(pool.map(view, range(readers)))
        took = time.monotonic() - started
        done.set()
        for thread in watchers:
            thread.join()
        after, _ = settled_rss_mb(client, process.pid)
    statuses = [f"{answers.count(answer)} x {answer}" for answer in sorted(set(answers))]
    statuses += [f"all in {took:.1f} s; slowest /health {slowest['/health']:.2f} s, "
                 f"next-job {slowest['/api/workers/next-job']:.2f} s"]
    return {"scenario": "result-views", "before_mb": before, "after_mb": after, "peak_mb": peak[0], "answers": statuses}


def unread_views_scenario(readers: int, result_mb: int, hold_s: float) -> dict[str, object]:
    """``readers`` connections GET a job with a ``result_mb`` result and never read; RSS ``hold_s`` later."""
    with serving_a_result(result_mb) as (process, url, client, job_id, before):
        host, port = url.removeprefix("http://").split(":")
        sockets = []
        for _ in range(readers):
            unread = socket.socket()
            unread.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            unread.connect((host, int(port)))
            unread.sendall(f"GET /api/jobs/{job_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sockets.append(unread)
        time.sleep(hold_s)
        started = time.monotonic()
        client.get("/health")
        health_s = time.monotonic() - started
        held, peak = rss_mb(process.pid)
        for unread in sockets:
            unread.close()
        after, _ = settled_rss_mb(client, process.pid)
    statuses = [f"after {hold_s:g} s: RSS {held:.0f} MB, /health {health_s:.2f} s"]
    return {"scenario": "unread-views", "before_mb": before, "after_mb": after, "peak_mb": peak, "answers": statuses}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--body-mb", type=int, default=BODY_MB, help=f"size of each request body; default {BODY_MB}")
    parser.add_argument("--result-mb", type=int, default=48, help="result of each listed job; default 48")
    parser.add_argument("--views", type=int, default=200, help="reads of the job in job-views; default 200")
    parser.add_argument("--workflow-mb", type=int, default=9, help="its workflow; default 9")
    parser.add_argument("--result-views", type=int, default=16, help="GETs at once in result-views; default 16")
    parser.add_argument("--unread", type=int, default=20, help="unread GETs in unread-views; default 20")
    parser.add_argument("--unread-s", type=float, default=30, help="how long they stay unread; default 30")
    args = parser.parse_args(argv)
    blob = "x" * (args.body_mb * 1000 * 1000)
    report = ('{"result": {"blob": "' + blob + '"}}').encode()
    submit = ('{"user_id": "alice", "workflow": "' + blob + '"}').encode()
    runs = [
        scenario("unauthenticated", "bench-token", [("/api/workers/complete-job", {"job_id": "j"}, report)] * 3),
        scenario("oversized-submit", None, [("/api/jobs", {}, submit)]),
        scenario(f"result-{args.body_mb}MB", None, [("/api/workers/complete-job", {"job_id": "j"}, report)]),
        scenario("20-concurrent", None, [("/api/workers/complete-job", {"job_id": "j"}, report)] * 20, at_once=True),
        list_scenario(jobs=8, result_mb=args.result_mb),
        views_scenario(args.views, args.workflow_mb),
        result_views_scenario(args.result_views, args.result_mb),
        unread_views_scenario(args.unread, args.result_mb, args.unread_s),
    ]
    print(f"{'scenario':<18} {'RSS before':>11} {'RSS after':>10} {'peak':>8}  answers")
    for run in runs:
        print(
            f"{run['scenario']:<18} {run['before_mb']:>8.0f} MB {run['after_mb']:>7.0f} MB {run['peak_mb']:>5.0f} MB"
            f"  {', '.join(run['answers'])}"  # type: ignore[arg-type]
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
