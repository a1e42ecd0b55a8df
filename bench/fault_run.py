"""Fault-injection load run: jobs through real replicas (supervisor + ComfyUI simulator each) and the queue
manager's own process, while workers are SIGKILLed and SIGTERMed, ComfyUI is killed mid-job and the queue
manager is restarted and SIGKILLed (once at the same moment as a worker's SIGTERM). Not a test; a reduced
version runs in CI (tests/faults/test_fault_run.py).

    ./dev python -m bench.fault_run --jobs 1000 --replicas 4      (from the repository root)
    ./dev python -m bench.fault_run --jobs 400 --cycles 4 --faults replica_freeze    (one further fault, 4 times)

At the end, from the queue's SQLite file and its log: every job terminal exactly once (no job lost, no report
landed twice), every output's sha256 matching the file, and how many jobs failed because of a fault (the goal:
0; a job handed back and run again is a retry, not a failure). A job resubmitted as a copy (the comfy-multi way
of handing back) counts through its last copy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._processes import GRACE_S, end
from common.children import die_with_parent
from demo.replicas import SUPERVISOR_COMMAND, SimulatedReplicas, free_loopback_port, worker_env
from demo.workload import load_workflow
from queue_manager.store import JobRecord, JobStore

TERMINAL = {"completed", "failed", "cancelled"}
START_TIMEOUT_S = 20.0  # for the queue manager's /health to answer once started
# Each fault, in order, fires when this share of the jobs has ended; the cycle repeats `cycles` times.
FAULT_CYCLE = (
    "worker_sigkill",
    "comfyui_kill",
    "worker_sigterm",
    "queue_restart",
    "queue_sigkill",
    "queue_sigkill_with_worker_sigterm",
)
# Not in the default cycle (`--faults` picks them): each is real in production, and each costs more time.
MORE_FAULTS = (
    "replica_freeze",  # the whole container stopped (SIGSTOP) longer than the lease, then thawed
    "comfyui_hang",  # ComfyUI stopped for good (a hung GPU driver) under a busy worker
    "delivery_sigkill",  # a replica SIGKILLed while a file of its job is open in OUTPUTS_PATH/.partial/
    "queue_sigkill_in_burst",  # the queue manager stopped while reports pile up, resumed and SIGKILLed at once
)
FREEZE_LEASES = 2.0  # a frozen replica is thawed after this many leases: its job has been handed out again
BURST_HOLD_S = 3.0  # the queue manager stopped this long before the SIGKILL: the workers' reports wait for it
THAW_WATCH_S = 5.0  # and watched this long after: the thawed worker's heartbeat or report must be refused
DELIVERY_WATCH_S = 15.0  # a delivery_sigkill looks this long for a delivery in progress before it is skipped


@dataclass
class RunConfig:
    jobs: int = 1000
    replicas: int = 4
    users: int = 20
    node_seconds: float = 0.02
    lease_timeout_s: float = 5.0
    cycles: int = 2
    faults: tuple[str, ...] = FAULT_CYCLE
    timeout_s: float = 900.0
    keep: Path | None = None  # keep the scratch folder (logs, database, outputs) here


@dataclass
class Replica:
    id: str
    process: asyncio.subprocess.Process


@dataclass
class Pool:
    """Keeps `size` replicas running, as the platform would: a replica that exits is replaced."""

    env: dict[str, str]
    replicas: SimulatedReplicas
    log_dir: Path
    size: int
    live: list[Replica] = field(default_factory=list)
    started: int = 0
    pids: list[int] = field(default_factory=list)
    stuck: set[str] = field(default_factory=set)  # frozen (until thawed) or its ComfyUI hung

    async def keep_up(self) -> None:
        self.live = [r for r in self.live if r.process.returncode is None]
        while len(self.live) < self.size:
            self.started += 1
            replica_id = f"fault-worker-{self.started}"
            log_file = (self.log_dir / f"{replica_id}.log").open("ab")
            process = await asyncio.create_subprocess_exec(
                *SUPERVISOR_COMMAND,
                env={**self.env, **self.replicas.env_for(replica_id), "WORKER_ID": replica_id,
                     "HEALTH_PORT_FILE": str(self.log_dir / f"{replica_id}.port")},  # HEALTH_PORT=0: needs one
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
            )  # fmt: skip
            log_file.close()
            self.pids.append(process.pid)
            self.live.append(Replica(replica_id, process))

    def pick(self, busy_worker_ids: set[str]) -> Replica | None:
        """A busy replica if there is one; never one a fault left frozen or hung (it would take every fault)."""
        running = [r for r in self.live if r.process.returncode is None and r.id not in self.stuck]
        return ([r for r in running if r.id in busy_worker_ids] or running or [None])[0]

    async def close(self) -> None:
        for replica in self.live:
            with contextlib.suppress(ProcessLookupError):
                replica.process.terminate()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    await asyncio.gather(*(r.process.wait() for r in self.live))
        finally:
            for pid in self.pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


class QueueProcess:
    """`python -m queue_manager` on a fixed port and database, restartable; its log is appended to one file."""

    def __init__(self, root: Path, port: int, lease_timeout_s: float) -> None:
        self.db = root / "queue.db"
        self.log = root / "queue.log"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ, "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", "LEASE_TIMEOUT_S": str(lease_timeout_s)
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until it logs its start and its /health answers 200: RuntimeError if it exits first or has not after
        `timeout_s` seconds. Its own log line first: the port was free when picked, and another program may take it
        before this one binds it and answer /health in its place (then a SIGTERM kills this one while it is still
        importing, before it takes the signal: exit -15, as a soak-close test saw once in CI under load)."""
        logged_before = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "queue_manager", "--port", str(self.port), "--db", str(self.db),
                "--max-queue-depth", "0", env=self.env, stdout=log_file, stderr=log_file,
                preexec_fn=die_with_parent(os.getpid()),  # a bench killed (SIGTERM, SIGKILL) takes it along
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.url) as http:
            while (left := deadline - time.monotonic()) > 0:
                if self.process.returncode is not None:
                    raise RuntimeError(f"the queue manager exited {self.process.returncode}: {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if self._logged_since(logged_before, b'"queue_manager_started"') and (
                        await http.get("/health", timeout=min(1.0, left))
                    ).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the queue manager did not come up in {timeout_s:g} s: {self.log_tail()}")

    def _logged_since(self, offset: int, text: bytes) -> bool:
        with self.log.open("rb") as log:
            log.seek(offset)
            return text in log.read()

    def log_tail(self, size: int = 2000) -> str:
        with self.log.open("rb") as log:
            log.seek(max(0, self.log.stat().st_size - size))
            return log.read().decode(errors="replace")

    async def stop(self, signum: int = signal.SIGTERM, grace_s: float = GRACE_S) -> None:
        """`signum`, then SIGKILL if it is still running after `grace_s` seconds (frozen, or deaf to `signum`)."""
        if self.process is not None:
            await end(self.process, signum, grace_s)


def comfyui_pids(supervisor_pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{supervisor_pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children += [int(pid) for pid in task.read_text().split()]
    return children


def signal_replica(replica: Replica, signum: int, comfyui: list[int] | None = None) -> None:
    """`signum` to the whole container: the supervisor's group (the worker) and its ComfyUI, in a session of its own."""
    comfyui = comfyui_pids(replica.process.pid) if comfyui is None else comfyui
    for group in (replica.process.pid, *comfyui):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signum)


def open_files(pid: int) -> list[str]:
    targets = []
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                targets.append(os.readlink(fd.path))
    return targets


def processes_using(folder: Path) -> set[int]:
    marker = str(folder).encode()
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if marker in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
    found.discard(os.getpid())
    return found


class FaultRun:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.root = Path(tempfile.mkdtemp(prefix="fault-run-"))
        self.outputs = self.root / "outputs"
        self.queue = QueueProcess(self.root, free_loopback_port(), config.lease_timeout_s)
        env = worker_env(self.queue.url, self.outputs, idle_polls=1_000_000, poll_interval_s=0.05)
        env.update({"LOG_LEVEL": "info", "LEASE_HEARTBEAT_S": "1", "REPORT_RETRY_BUDGET_S": "120", "HEALTH_PORT": "0"})
        (self.root / "logs").mkdir()
        self.pool = Pool(env, SimulatedReplicas(self.root, config.node_seconds), self.root / "logs", config.replicas)
        self.faults_done: list[dict[str, Any]] = []
        self.thaws: list[asyncio.Task[None]] = []

    async def run(self) -> dict[str, Any]:
        """The run and its summary; the scratch folder removed (copied to --keep first) however the run ends."""
        try:
            return await self._run()
        finally:
            try:
                if self.config.keep:
                    shutil.copytree(
                        self.root, self.config.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("models")
                    )
            finally:
                shutil.rmtree(self.root, ignore_errors=True)

    async def _run(self) -> dict[str, Any]:
        started = time.monotonic()
        drained_at = None
        try:
            await self.queue.start()
            await self.pool.keep_up()
            submitted = await self.submit_all()
            plan = [
                ((index + 1) / (len(self.config.faults) * self.config.cycles + 1), fault)
                for index, fault in enumerate(self.config.faults * self.config.cycles)
            ]
            while time.monotonic() - started < self.config.timeout_s:
                await self.pool.keep_up()
                ended = await self.ended_jobs()
                if ended is not None:
                    while plan and ended >= plan[0][0] * self.config.jobs:
                        await self.inject(plan.pop(0)[1])
                    if not plan and all(thaw.done() for thaw in self.thaws) and await self.all_terminal():
                        drained_at = time.monotonic()
                        break
                await asyncio.sleep(0.2)
        finally:
            await self.close()
        summary = self.verify(submitted)
        summary.update(
            time_to_drain_s=None if drained_at is None else round(drained_at - started, 1),
            faults=[f["fault"] for f in self.faults_done],
            faults_skipped=[f["fault"] for f in self.faults_done if f.get("skipped")],
            replica_starts=self.pool.started,
            config={k: str(v) for k, v in vars(self.config).items()},
        )
        return summary

    async def close(self) -> None:
        """Every process the run started ended, even when a step fails or the close is cancelled (a second Ctrl-C)."""
        try:
            for thaw in self.thaws:  # a frozen replica thawed first: it takes its SIGTERM
                thaw.cancel()
            await asyncio.gather(*self.thaws, return_exceptions=True)
            await self.pool.close()
        finally:
            try:
                await self.queue.stop()
            finally:
                for pid in processes_using(self.root):  # a SIGKILLed supervisor's ComfyUI, in its own session
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    async def submit_all(self) -> list[str]:
        workflow = load_workflow("quick")
        ids = []
        async with httpx.AsyncClient(base_url=self.queue.url, timeout=10) as http:
            for index in range(self.config.jobs):
                body = {
                    "user_id": f"user-{index % self.config.users:02d}",
                    "workflow": workflow,
                    "priority": index % 4,
                    "metadata": {"fault_run_index": index},
                }
                response = await http.post("/api/jobs", json=body)
                response.raise_for_status()
                ids.append(response.json()["id"])
        return ids

    async def ended_jobs(self) -> int | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            async with httpx.AsyncClient(base_url=self.queue.url, timeout=2) as http:
                status = (await http.get("/api/queue/status")).json()
                return status["completed_jobs"] + status["failed_jobs"]
        return None

    async def all_terminal(self) -> bool:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            async with httpx.AsyncClient(base_url=self.queue.url, timeout=2) as http:
                status = (await http.get("/api/queue/status")).json()
                return status["pending_jobs"] == 0 and status["running_jobs"] == 0
        return False

    async def busy_workers(self) -> set[str]:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            async with httpx.AsyncClient(base_url=self.queue.url, timeout=2) as http:
                running = (await http.get("/api/jobs", params={"status": "running", "limit": 1000})).json()
                return {job["worker_id"] for job in running}
        return set()

    async def inject(self, fault: str) -> None:
        record: dict[str, Any] = {"fault": fault, "at": time.monotonic()}
        self.faults_done.append(record)
        if fault == "queue_sigkill_in_burst":
            assert self.queue.process is not None
            self.queue.process.send_signal(signal.SIGSTOP)
            await asyncio.sleep(BURST_HOLD_S)
            self.queue.process.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.05)  # the held reports arriving at once
            await self.queue.stop(signal.SIGKILL)
            await asyncio.sleep(1.0)
            await self.queue.start()
            return
        if fault.startswith("queue_"):
            victim = self.pool.pick(await self.busy_workers()) if fault.endswith("worker_sigterm") else None
            if victim is not None:
                victim.process.send_signal(signal.SIGTERM)
            await self.queue.stop(signal.SIGTERM if fault == "queue_restart" else signal.SIGKILL)
            await asyncio.sleep(1.0)
            await self.queue.start()
            return
        victim = await self.delivering() if fault == "delivery_sigkill" else self.pool.pick(await self.busy_workers())
        if victim is None:
            record["skipped"] = True
            return
        record["replica"] = victim.id
        if fault in ("worker_sigkill", "delivery_sigkill"):  # the whole container dies: the worker and its ComfyUI
            signal_replica(victim, signal.SIGKILL)
        elif fault == "worker_sigterm":
            victim.process.send_signal(signal.SIGTERM)
        elif fault == "replica_freeze":
            self.pool.stuck.add(victim.id)
            self.thaws.append(asyncio.create_task(self.frozen(victim, comfyui_pids(victim.process.pid))))
        elif fault in ("comfyui_kill", "comfyui_hang"):
            pids = comfyui_pids(victim.process.pid)
            record["skipped"] = not pids
            if fault == "comfyui_hang":
                self.pool.stuck.add(victim.id)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL if fault == "comfyui_kill" else signal.SIGSTOP)

    async def frozen(self, victim: Replica, comfyui: list[int]) -> None:
        """The replica stopped for FREEZE_LEASES leases, thawed, and watched a while: what its worker does then."""
        signal_replica(victim, signal.SIGSTOP, comfyui)
        try:
            await asyncio.sleep(FREEZE_LEASES * self.config.lease_timeout_s)
        finally:
            signal_replica(victim, signal.SIGCONT, comfyui)
        await asyncio.sleep(THAW_WATCH_S)
        self.pool.stuck.discard(victim.id)

    async def delivering(self) -> Replica | None:
        """A live replica with a file open in OUTPUTS_PATH/.partial/ (a delivery under way), looked for up to
        DELIVERY_WATCH_S seconds."""
        staging = f"{self.outputs / '.partial'}/"
        deadline = time.monotonic() + DELIVERY_WATCH_S
        while time.monotonic() < deadline:
            for replica in self.pool.live:
                if replica.process.returncode is None and any(
                    target.startswith(staging) for target in open_files(replica.process.pid)
                ):
                    return replica
            await asyncio.sleep(0.001)
        return None

    def verify(self, submitted: list[str]) -> dict[str, Any]:
        store = JobStore(self.queue.db)
        try:
            jobs = {job.id: job for job in store.every()}
        finally:
            store.close()
        copies = {job.metadata["requeued_from"]: job.id for job in jobs.values() if "requeued_from" in job.metadata}
        finals: dict[str, JobRecord | None] = {}
        for job_id in submitted:
            current = job_id
            while current in copies:
                current = copies[current]
            finals[job_id] = jobs.get(current)
        landed = self.landed_reports()
        outcome = Counter(job.status.value if job else "lost" for job in finals.values())
        doubles = sorted(job_id for job_id, count in landed.items() if count > 1)
        completed = [job for job in finals.values() if job and job.status.value == "completed"]
        mismatched = [job.id for job in completed if not self.outputs_match(job)]
        failed = [job for job in finals.values() if job and job.status.value == "failed"]
        return {
            "jobs": len(submitted),
            "completed": outcome["completed"],
            "failed": outcome["failed"],
            "not_terminal": sum(1 for job in finals.values() if job and job.status.value not in TERMINAL),
            "lost": outcome["lost"],
            "double_reports": len(doubles),
            "outputs_mismatched": len(mismatched),
            "retries": sum(job.attempt - 1 for job in jobs.values()) + len(copies),
            "handed_back_by_lease": sum(
                1 for job in jobs.values() for entry in job.history if "stopped heartbeating" in entry["reason"]
            ),
            "resubmitted_copies": len(copies),
            "failure_reasons": dict(Counter((job.error or "")[:90] for job in failed).most_common(5)),
        }

    def landed_reports(self) -> Counter[str]:
        """Reports that changed a job, per job, from the queue's log (across its restarts)."""
        counts: Counter[str] = Counter()
        for line in self.queue.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") in ("job_completed", "job_failed"):
                    counts[event["job_id"]] += 1
        return counts

    def outputs_match(self, job: JobRecord) -> bool:
        files = (job.result or {}).get("outputs") or []
        return bool(files) and all(
            hashlib.sha256((self.outputs / f["path"]).read_bytes()).hexdigest() == f["sha256"] for f in files
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=RunConfig.jobs)
    parser.add_argument("--replicas", type=int, default=RunConfig.replicas)
    parser.add_argument("--cycles", type=int, default=RunConfig.cycles, help="times the fault sequence repeats")
    parser.add_argument(
        "--faults", type=lambda text: tuple(text.split(",")), default=FAULT_CYCLE,
        help=f"the sequence, comma-separated (default: {','.join(FAULT_CYCLE)}); more: {','.join(MORE_FAULTS)}",
    )  # fmt: skip
    parser.add_argument("--lease-timeout", type=float, default=RunConfig.lease_timeout_s)
    parser.add_argument("--node-seconds", type=float, default=RunConfig.node_seconds)
    parser.add_argument("--keep", type=Path, default=None, help="copy logs, database and outputs here")
    args = parser.parse_args(argv)
    if unknown := set(args.faults) - set(FAULT_CYCLE + MORE_FAULTS):
        parser.error(f"--faults: unknown {', '.join(sorted(unknown))}")
    config = RunConfig(
        jobs=args.jobs, replicas=args.replicas, cycles=args.cycles, faults=args.faults,
        lease_timeout_s=args.lease_timeout, node_seconds=args.node_seconds, keep=args.keep,
    )  # fmt: skip
    summary = asyncio.run(FaultRun(config).run())
    print(json.dumps(summary, indent=2))
    ok = summary["lost"] == summary["not_terminal"] == summary["double_reports"] == summary["failed"] == 0
    return 0 if ok and summary["outputs_mismatched"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
