"""Soak: the long-running processes under hours' worth of churn, hostile clients and hard kills, sampled from /proc.

The queue manager runs as `python -m queue_manager` (its own process, restartable, lease on); each worker as
`python -m worker` with its health server on a port of its own, each beside a ComfyUI stand-in of its own, run in
this process so its websockets can be dropped, its prompts failed and the stand-in crashed. Worker 0 is never
killed: it is the long-lived replica whose growth is measured. The others are SIGKILLed or SIGTERMed and started
again (as the platform does). The queue manager is restarted (SIGTERM, SIGKILL) in the first half of the run only,
so the second half measures one process. Throughout:

- jobs submitted (a backlog kept): quick ones, slow ones (a 2 s node), some cancelled while pending or running,
  some failed by ComfyUI (an injected execution error), some refused by ComfyUI (an unknown node);
- websockets dropped, a ComfyUI stand-in crashed and restarted;
- hostile clients against the queue manager and every health server: malformed JSON, NaN, oversized bodies, a
  body announced and never sent, heads that never end (slowloris), bursts of connections opened and dropped.

Every --sample-s seconds, for each process: RSS, open file descriptors, threads; the queue's database and WAL
size, the bytes under OUTPUTS_PATH and its `.partial/`, and the log bytes. At the end: every job terminal, none
reported twice (from the queue's log), and the figures.

    ./dev python -m bench.soak                       # about 3 minutes
    ./dev python -m bench.soak --minutes 20 --workers 3
    ./dev python -m bench.soak --worker-source /path/to/other/checkout   (its worker; the rest from here)
    ./dev python -m bench.soak --fixed-worker-ids    (a restarted worker keeps its WORKER_ID, as under systemd)

Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from bench._processes import end
from bench.fault_run import QueueProcess
from common.children import die_with_parent
from common.timespans import DAY_S
from demo.replicas import free_loopback_port, worker_env
from standins.comfyui import ComfyUISimulator


def quick(colour: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": colour}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "soak"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def slow(colour: int) -> dict[str, Any]:
    """A result and a preview, then a node of SLOW_NODE_S and another result: long enough to be cancelled."""
    return {
        **quick(colour),
        "4": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "soak-slow"}},
    }


SLOW_NODE_S = 2.0
WORKER_GRACE_S = 30.0  # its SHUTDOWN_GRACE_S (2) and PLATFORM_KILL_DELAY_S (10) with room to spare


REPO = Path(__file__).resolve().parents[1]
UNKNOWN_NODE = {"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {}}}


def proc_figures(pid: int) -> dict[str, float] | None:
    try:
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    if "VmRSS" not in status:  # exited, not yet reaped: a zombie has no memory lines
        return None
    return {"rss_mib": int(status["VmRSS"].split()[0]) / 1024, "fds": fds, "threads": int(status["Threads"])}


def tree_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            total += path.lstat().st_size
    return total


@dataclass
class Worker:
    index: int
    comfy: ComfyUISimulator
    env: dict[str, str]
    log: Path
    health_port: int
    fixed_id: bool = False
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    async def start(self) -> None:
        self.starts += 1
        worker_id = f"soak-{self.index}" if self.fixed_id else f"soak-{self.index}-{self.starts}"
        with self.log.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", env={**self.env, "WORKER_ID": worker_id},
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=self.env["PYTHONPATH"],
                preexec_fn=die_with_parent(os.getpid()),  # the soak killed (SIGTERM, SIGKILL) takes it along
            )  # fmt: skip

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass
class Samples:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def first_and_last(self, name: str, since: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]] | None:
        mine = [row for row in self.rows if row["t"] >= since and row.get(name)]
        return (mine[0], mine[-1]) if mine else None


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="soak-"))
        self.outputs = self.root / "outputs"
        self.queue = QueueProcess(self.root, free_loopback_port(), args.lease_timeout)
        self.queue.env["FINISHED_JOB_RETENTION_S"] = str(args.retention_s)
        self.workers: list[Worker] = []
        self.submitted: list[str] = []
        self.cancels = Counter[str]()
        self.deleted: set[str] = set()
        self.faults = Counter[str]()
        self.hostile_sent = Counter[str]()
        self.samples = Samples()
        self.rng = random.Random(args.seed)
        self.stop_faults = asyncio.Event()
        self.started = time.monotonic()

    # --- set-up ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.queue.start()
        for index in range(self.args.workers):
            folder = self.root / f"comfy-{index}"
            comfy = ComfyUISimulator(
                folder / "output", folder / "temp", cache_outputs=False, history_lag_s=0.0, records_kept=100,
                default_node_seconds=self.args.node_seconds, node_seconds={"ImageBlur": SLOW_NODE_S},
            )  # fmt: skip
            await comfy.start()
            env = worker_env(self.queue.url, self.outputs, idle_polls=1, poll_interval_s=0.05)
            health_port = free_loopback_port()
            env.update({
                "SERVERLESS_MODE": "false", "COMFYUI_URL": comfy.url, "COMFYUI_OUTPUT_DIR": str(comfy.output_dir),
                "COMFYUI_TEMP_DIR": str(comfy.temp_dir), "HEALTH_PORT": str(health_port), "HEALTH_HOST": "127.0.0.1",
                "LEASE_HEARTBEAT_S": "1", "SHUTDOWN_GRACE_S": "2", "PLATFORM_KILL_DELAY_S": "10",
                "COMFYUI_UNRESPONSIVE_TIMEOUT_S": "20", "HTTP_TIMEOUT_S": "10", "LOG_LEVEL": "info",
                "PYTHONPATH": str(self.args.worker_source),
            })  # fmt: skip
            log_path = self.root / f"worker-{index}.log"
            worker = Worker(index, comfy, env, log_path, health_port, fixed_id=self.args.fixed_worker_ids)
            self.workers.append(worker)  # its ComfyUI stand-in stopped by the close even if the worker fails to start
            await worker.start()

    async def close(self) -> None:
        """Every worker (SIGTERM, SIGKILL after 15 s), ComfyUI stand-in and the queue manager ended, even when a
        step fails or the close is cancelled (a second Ctrl-C): the first failure is raised once all are."""
        for worker in self.workers:
            if worker.alive():
                worker.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await asyncio.gather(*(w.process.wait() for w in self.workers if w.process is not None))
        finally:
            for worker in self.workers:
                if worker.alive():
                    worker.process.kill()  # type: ignore[union-attr]
            try:
                stopped = await asyncio.gather(*(w.comfy.stop() for w in self.workers), return_exceptions=True)
            finally:
                await self.queue.stop()
        for result in stopped:
            if isinstance(result, BaseException):
                raise result

    # --- the churn ---------------------------------------------------------------------------

    async def submit(self, http: httpx.AsyncClient) -> None:
        """Keeps a backlog of about 4 jobs per worker until --jobs were submitted."""
        while len(self.submitted) < self.args.jobs:
            status = (await http.get("/api/queue/status")).json()
            room = 4 * self.args.workers - status["pending_jobs"]
            for _ in range(max(0, min(room, self.args.jobs - len(self.submitted)))):
                roll = self.rng.random()
                colour = self.rng.randrange(1 << 24)
                workflow = UNKNOWN_NODE if roll < 0.03 else slow(colour) if roll < 0.08 else quick(colour)
                body = {"user_id": f"user-{self.rng.randrange(20)}", "workflow": workflow, "priority": 0}
                answer = await http.post("/api/jobs", json=body)
                if answer.status_code == 201:
                    self.submitted.append(answer.json()["id"])
            await asyncio.sleep(0.1)

    async def cancel(self, http: httpx.AsyncClient) -> None:
        while len(self.submitted) < self.args.jobs:
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))
            for status in ("pending", "running"):
                listed = (await http.get("/api/jobs", params={"status": status, "limit": 20})).json()
                if listed and self.rng.random() < 0.5:
                    job = self.rng.choice(listed)
                    answer = await http.delete(f"/api/jobs/{job['id']}")
                    self.cancels[f"{status}:{answer.status_code}"] += 1
                    # The peer deletes a cancelled pending job outright, and a job listed running may have been
                    # handed back to pending before the cancel: judged by the listing, it read as lost.
                    if answer.status_code == 204 and (await http.get(f"/api/jobs/{job['id']}")).status_code == 404:
                        self.deleted.add(job["id"])

    async def comfyui_faults(self) -> None:
        while len(self.submitted) < self.args.jobs:
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))
            worker = self.rng.choice(self.workers)
            roll = self.rng.random()
            if roll < 0.45:
                await worker.comfy.drop_websockets()
                self.faults["websocket_dropped"] += 1
            elif roll < 0.9:
                worker.comfy.inject_error("soak: a node raised", class_type="SaveImage")
                self.faults["execution_error"] += 1
            elif roll < 0.93 and worker.index != 0:
                await worker.comfy.crash()
                await asyncio.sleep(1.0)
                await worker.comfy.start(port=worker.comfy.port)
                self.faults["comfyui_crashed"] += 1

    async def process_faults(self) -> None:
        half = self.args.minutes * 30
        while len(self.submitted) < self.args.jobs:
            await asyncio.sleep(self.rng.uniform(4, 10))
            roll = self.rng.random()
            if roll < 0.15 and time.monotonic() - self.started < half:
                kind = self.rng.choice([signal.SIGTERM, signal.SIGKILL])
                await self.queue.stop(kind)
                await asyncio.sleep(0.5)
                await self.queue.start()
                self.faults[f"queue_{kind.name}"] += 1
                continue
            victims = [worker for worker in self.workers[1:] if worker.alive()]
            if not victims:
                continue
            await self.end_worker(self.rng.choice(victims), signal.SIGKILL if roll < 0.6 else signal.SIGTERM)

    async def end_worker(self, victim: Worker, kind: signal.Signals, grace_s: float = WORKER_GRACE_S) -> None:
        """`kind` to the worker; one still running after `grace_s` seconds is SIGKILLed and counted."""
        assert victim.process is not None
        await end(victim.process, kind, grace_s)
        self.faults[f"worker_{kind.name}"] += 1
        if kind != signal.SIGKILL and victim.process.returncode == -signal.SIGKILL:
            self.faults[f"worker_{kind.name}_outlived_{grace_s:g}s_killed"] += 1

    async def keep_workers_up(self) -> None:
        while len(self.submitted) < self.args.jobs or not self.stop_faults.is_set():
            for worker in self.workers:
                if not worker.alive():
                    await worker.start()
            await asyncio.sleep(0.5)

    # --- hostile clients ---------------------------------------------------------------------

    async def raw(self, port: int, payload: bytes, hold_s: float = 0.0, read: bool = True) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(payload)
                await writer.drain()
                if hold_s:
                    await asyncio.sleep(hold_s)
                if read:
                    async with asyncio.timeout(5):
                        await reader.read(65536)
            finally:
                writer.transport.abort()

    async def hostile_round(self, port: int, is_queue: bool) -> None:
        path = "/api/jobs" if is_queue else "/health"
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        moves = {
            "malformed_json": (head + "Content-Length: 9\r\n\r\n{not json").encode(),
            "nan": (head + "Content-Length: 41\r\n\r\n" + '{"user_id": NaN, "workflow": {"1": NaN}}\n').encode(),
            "announced_not_sent": (head + "Content-Length: 100000000\r\n\r\n{").encode(),
            "bad_utf8": (head + "Content-Length: 4\r\n\r\n").encode() + b"\xff\xfe\xfd\xfc",
            "garbage_line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),
            "huge_header": b"GET /health HTTP/1.1\r\nX-A: " + b"a" * 100_000 + b"\r\n\r\n",
            "bad_query": b"GET /api/jobs?limit=-1&status=%ff HTTP/1.1\r\nHost: x\r\n\r\n",
        }
        name = self.rng.choice(sorted(moves))
        await self.raw(port, moves[name])
        self.hostile_sent[name] += 1
        if self.rng.random() < 0.3:  # slowloris: a head that never ends, held a while
            await asyncio.gather(*(
                self.raw(port, b"GET /health HTTP/1.1\r\nX-Slow: 1\r\n", hold_s=self.rng.uniform(1, 4), read=False)
                for _ in range(20)
            ))  # fmt: skip
            self.hostile_sent["slowloris_x20"] += 1
        if self.rng.random() < 0.3:  # a burst of connections dropped at once
            await asyncio.gather(*(self.raw(port, b"", read=False) for _ in range(100)))
            self.hostile_sent["burst_x100"] += 1
        if is_queue and self.rng.random() < 0.2:  # a legal-looking oversized submit
            body = b'{"user_id": "x", "workflow": "' + b"y" * (17 << 20) + b'"}'
            await self.raw(port, (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
            self.hostile_sent["oversized_17mib"] += 1

    async def hostile(self) -> None:
        while len(self.submitted) < self.args.jobs:
            await asyncio.sleep(self.rng.uniform(0.2, 0.8))
            if self.rng.random() < 0.5:
                await self.hostile_round(self.queue.port, is_queue=True)
            else:
                await self.hostile_round(self.rng.choice(self.workers).health_port, is_queue=False)

    # --- sampling ----------------------------------------------------------------------------

    async def comfy_history_entries(self) -> list[int | None]:
        """Entries each ComfyUI stand-in keeps in its history (each holds its prompt's whole workflow)."""
        entries: list[int | None] = []
        async with httpx.AsyncClient(timeout=5) as http:
            for worker in self.workers:
                try:
                    entries.append(len((await http.get(f"{worker.comfy.url}/history")).json()))
                except (httpx.HTTPError, ValueError):
                    entries.append(None)
        return entries

    def sample(self, ended: int, history_entries: list[int | None]) -> None:
        row: dict[str, Any] = {"t": round(time.monotonic() - self.started, 1), "ended": ended}
        if self.queue.process is not None:
            row["queue"] = proc_figures(self.queue.process.pid)
        for worker in self.workers:
            if worker.process is not None:
                row[f"worker-{worker.index}"] = proc_figures(worker.process.pid)
        row["bench"] = proc_figures(os.getpid())
        db = self.queue.db
        row["db_mib"] = db.stat().st_size / 2**20 if db.exists() else 0
        wal = db.with_name(db.name + "-wal")
        row["wal_mib"] = wal.stat().st_size / 2**20 if wal.exists() else 0
        row["outputs_mib"] = tree_bytes(self.outputs) / 2**20 if self.outputs.exists() else 0
        partial = self.outputs / ".partial"
        row["partial_entries"] = len(list(partial.iterdir())) if partial.exists() else 0
        row["comfy_files"] = [
            sum(1 for folder in (w.comfy.output_dir, w.comfy.temp_dir) for p in folder.rglob("*") if p.is_file())
            for w in self.workers
        ]  # fmt: skip
        row["comfy_history"] = history_entries
        row["log_mib"] = sum(p.stat().st_size for p in self.root.glob("*.log")) / 2**20
        self.samples.rows.append(row)

    async def sampler(self) -> None:
        async with httpx.AsyncClient(base_url=self.queue.url, timeout=5) as http:
            while not self.stop_faults.is_set():
                ended = None
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    status = (await http.get("/api/queue/status")).json()
                    ended = status["completed_jobs"] + status["failed_jobs"]
                self.sample(ended or 0, await self.comfy_history_entries())
                if self.args.verbose:
                    print(json.dumps(self.samples.rows[-1]), flush=True)
                await asyncio.sleep(self.args.sample_s)

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        try:
            await self.start()
            deadline = self.started + self.args.minutes * 60
            async with httpx.AsyncClient(base_url=self.queue.url, timeout=10) as http:
                async with asyncio.TaskGroup() as tasks:  # one that fails ends the others and fails the soak with it
                    tasks.create_task(self.sampler())
                    tasks.create_task(self.keep_workers_up())
                    cancels = self.retrying(self.cancel, http)
                    churn = [
                        tasks.create_task(coro)
                        for coro in (self.comfyui_faults(), self.process_faults(), self.hostile(), cancels)
                    ]
                    submitter = tasks.create_task(self.retrying(self.submit, http))
                    await asyncio.wait({submitter}, timeout=max(0.0, deadline - time.monotonic()))
                    self.args.jobs = len(self.submitted)  # ends the churn loops
                    submitter.cancel()
                    await asyncio.wait([*churn, submitter])
                    churn_end = time.monotonic()
                    drained = await self.drain(http)
                    self.stop_faults.set()  # ends the sampler and the keeper
                status = (await http.get("/api/queue/status")).json()
                self.sample(status["completed_jobs"] + status["failed_jobs"], await self.comfy_history_entries())
                health = await self.health_at_end(http)
        finally:
            await self.close()
        return self.summary(churn_end, drained, health)

    async def health_at_end(self, http: httpx.AsyncClient) -> int | str:
        """Worker 0's /health status, or why it did not answer (the figure the soak is for, not a crash)."""
        try:
            return (await http.get(f"{self.workers[0].health_url}/health")).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    async def retrying(self, step: Any, http: httpx.AsyncClient) -> None:
        """Runs `step` again after the queue manager failed it (it is restarted and killed during the run)."""
        while len(self.submitted) < self.args.jobs:
            try:
                await step(http)
            except (httpx.HTTPError, ValueError, KeyError):
                await asyncio.sleep(0.5)

    async def drain(self, http: httpx.AsyncClient) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < self.args.drain_s:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                status = (await http.get("/api/queue/status")).json()
                if status["pending_jobs"] == 0 and status["running_jobs"] == 0:
                    return round(time.monotonic() - started, 1)
            for worker in self.workers:
                if not worker.alive():
                    await worker.start()
            await asyncio.sleep(0.5)
        return None

    def summary(self, churn_end: float, drained: float | None, health: int | str) -> dict[str, Any]:
        with contextlib.closing(sqlite3.connect(self.queue.db)) as db:
            jobs = dict(db.execute("SELECT id, status FROM jobs").fetchall())
        outcome = Counter(
            jobs.get(job_id, "deleted by a cancel" if job_id in self.deleted else "lost") for job_id in self.submitted
        )
        landed: Counter[str] = Counter()
        for line in self.queue.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") in ("job_completed", "job_failed"):
                    landed[event["job_id"]] += 1
        churn_s = churn_end - self.started
        figures: dict[str, Any] = {}
        half = self.args.minutes * 30
        # Worker 0 and the bench live throughout (from their first sample once warm); the queue manager from
        # its last restart; the other workers are restarted all the time: their peak only.
        for name in ["queue", "worker-0", "bench"]:
            pair = self.samples.first_and_last(name, since=half + 5 if name == "queue" else self.args.sample_s)
            if pair:
                (a, b) = pair
                figures[name] = {
                    "from_t": a["t"],
                    "to_t": b["t"],
                    "jobs_ended_between": b["ended"] - a["ended"],
                    **{k: f"{a[name][k]:.1f} -> {b[name][k]:.1f}" for k in ("rss_mib", "fds", "threads")},
                }
        for worker in self.workers[1:]:
            name = f"worker-{worker.index}"
            rows = [row[name] for row in self.samples.rows if row.get(name)]
            figures[name] = {k: f"peak {max(r[k] for r in rows):.1f}" for k in ("rss_mib", "fds", "threads")}
        first, last = self.samples.rows[0], self.samples.rows[-1]
        log_bytes = sum(p.stat().st_size for p in self.root.glob("*.log"))
        return {
            "jobs": len(self.submitted),
            "churn_s": round(churn_s, 1),
            "jobs_per_s": round(len(self.submitted) / churn_s, 2),
            "drain_s": drained,
            "outcome": dict(outcome),
            "not_terminal": sum(n for status, n in outcome.items() if status in ("pending", "running", "lost")),
            "reports_landed_twice": sum(1 for n in landed.values() if n > 1),
            "worker_0_health_at_end": health,
            "processes": figures,
            "db_mib": f"{first['db_mib']:.1f} -> {last['db_mib']:.1f}",
            "wal_mib": f"{first['wal_mib']:.1f} -> {last['wal_mib']:.1f}",
            "outputs_mib": round(last["outputs_mib"], 1),
            "partial_entries_at_end": last["partial_entries"],
            "comfyui_files_at_end": last["comfy_files"],
            "comfyui_history_entries_at_end": last["comfy_history"],
            "log_bytes_per_job": round(log_bytes / max(1, len(self.submitted))),
            "worker_starts": sum(w.starts for w in self.workers),
            "faults": dict(self.faults),
            "cancels": dict(self.cancels),
            "hostile": dict(self.hostile_sent),
            "scratch": str(self.root),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="churn time (default 3); then the drain")
    parser.add_argument("--jobs", type=int, default=100_000, help="stop submitting after this many")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--node-seconds", type=float, default=0.0)
    parser.add_argument("--lease-timeout", type=float, default=5.0)
    parser.add_argument("--retention-s", type=float, default=DAY_S, help="FINISHED_JOB_RETENTION_S of the queue")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--drain-s", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker-source", type=Path, default=REPO, help="checkout whose worker runs")
    parser.add_argument("--fixed-worker-ids", action="store_true",
                        help="a restarted worker keeps its WORKER_ID (default: a new one at every start)")
    parser.add_argument("--verbose", action="store_true", help="print every sample")
    args = parser.parse_args(argv)
    args.worker_source = args.worker_source.resolve()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    summary = asyncio.run(Soak(args).run())
    print(json.dumps(summary, indent=2))
    drained = summary["drain_s"] is not None  # 0.0: the queue was empty when the churn ended
    healthy = summary["worker_0_health_at_end"] == 200
    return 0 if summary["not_terminal"] == summary["reports_landed_twice"] == 0 and drained and healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
