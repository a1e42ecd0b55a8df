"""`comfy-serverless demo`: the whole system on loopback, from a burst of submissions back to zero replicas."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from common.logs import register_secret
from common.processes import pid_running
from demo.progress import Progress
from demo.providers import PRICES, start_fleet, worker_processes
from demo.replicas import RealComfyUIReplicas, SimulatedReplicas, worker_env
from demo.report import (
    TERMINAL,
    ReplicaLedger,
    ReportNotWritten,
    build_report,
    final_jobs,
    fleet_cost,
    provider_prices,
    remove_report,
    write_report,
)
from demo.results import fetch_results
from demo.workload import SubmissionFailed, submit_all, workshop_burst
from queue_manager.server import QueueManagerServer
from scaler.fleet import FleetBackend
from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig
from scaler.providers.base import BackendView
from scaler.providers.local import LocalBackend
from scaler.providers.owned_folders import open_own_plain_file
from scaler.queue_status import QueueStatusReader

log = structlog.get_logger()
T = TypeVar("T")


# A demo replica (supervisor, simulator, worker on this machine) takes its first job about 2 s after it is started.
DEMO_REPLICA_BOOT_S = 3.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # set the demo's stop while the replicas run
SCRATCH_PREFIX, PID_FILE = "comfy-demo-", "demo.pid"  # a scratch folder names the run it belongs to
PID_FILE_MAX_BYTES = 32


@dataclass(frozen=True)
class DemoOptions:
    jobs: int = 100
    users: int = 20
    bad_jobs: int = 2
    max_replicas: int = 5
    comfyui_url: str | None = None
    node_seconds: float = 0.5
    spread_s: float = 10.0
    price_per_hour: float = 2.30
    output_dir: Path = Path("demo-output")
    db: Path | None = None
    scaler_interval_s: float = 1.0
    idle_to_zero_s: float = 5.0
    target_wait_s: float = 20.0
    worker_poll_interval_s: float = 0.5
    timeout_s: float = 900.0
    live: bool = True
    providers: tuple[str, ...] = ()  # several providers with fallback (demo/providers.py); empty: local only
    fail: str | None = None  # a provider that is unreachable from the start


def demo_scaling(options: DemoOptions, *, fleet: bool = False) -> ScalingConfig:
    """The production policy with its windows shrunk from minutes to seconds, so a demo ends in minutes; the wait
    target and a replica's start too: at the production 180 s the demo's 2-s jobs all fit one replica's queue,
    and the other replicas went as soon as the jobs' length was known (100 jobs on 1 replica, p95 wait 174 s).
    With several providers the fleet prices each one (the policy only counts)."""
    return ScalingConfig(
        max_replicas=options.max_replicas,
        stabilization_window_s=3 * options.scaler_interval_s,
        scale_down_cooldown_s=options.scaler_interval_s,
        idle_to_zero_s=options.idle_to_zero_s,
        target_wait_s=options.target_wait_s,
        replica_boot_s=DEMO_REPLICA_BOOT_S,
        billing_aware=False,
        price_per_replica_hour=0.0 if fleet else options.price_per_hour,
    )


def _worker_idle_polls(options: DemoOptions) -> int:
    """Workers outlast the scaler's idle window: the scaler, not an idle exit, decides when replicas go."""
    return math.ceil((options.idle_to_zero_s + 5 * options.scaler_interval_s) / options.worker_poll_interval_s)


async def run_demo(options: DemoOptions) -> dict[str, Any]:
    """The demo's report; its scratch folder and its Ctrl-C handling go however it ends."""
    scratch = _new_scratch()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _run_demo(options, scratch, stop)
    finally:
        _remove_stop_handlers(loop)
        shutil.rmtree(scratch, ignore_errors=True)


class ScratchNotCreated(ReportNotWritten):
    """No scratch folder (a full disk, a temporary folder that cannot be written): the demo does not start, and
    the CLI says why in one line, exit 1, as for the report it cannot remove."""


def _new_scratch() -> Path:
    """This run's scratch folder, with the pid file that names its run."""
    try:
        temp = Path(tempfile.gettempdir())  # the first of TMPDIR, /tmp, …, the current folder that takes a file
    except OSError as error:
        raise ScratchNotCreated(f"cannot create a scratch folder: {error.strerror}") from None
    _sweep_scratch_of_killed_runs(temp)
    try:
        scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    except OSError as error:
        raise ScratchNotCreated(f"cannot create a scratch folder in {temp}: {error.strerror}") from None
    try:
        (scratch / PID_FILE).write_text(str(os.getpid()))
    except OSError as error:
        shutil.rmtree(scratch, ignore_errors=True)
        raise ScratchNotCreated(f"cannot write {scratch / PID_FILE}: {error.strerror}") from None
    return scratch


def _sweep_scratch_of_killed_runs(temp: Path) -> None:
    """Scratch folders of earlier runs killed outright (SIGKILL: no `finally` ran), each known by the pid in it;
    one without that file, or whose process is alive, is left alone."""
    for folder in temp.glob(f"{SCRATCH_PREFIX}*"):
        pid = _pid_of_run(folder)
        if pid is not None and pid > 0 and not pid_running(pid):
            log.info("Demo scratch folder of a killed run removed", folder=str(folder), pid=pid)
            shutil.rmtree(folder, ignore_errors=True)


def _pid_of_run(folder: Path) -> int | None:
    """The pid in a scratch folder of this user's; None for another user's (the temporary folder is shared), a link,
    or a pid file that is no plain file (a FIFO held the read for good) or holds no pid."""
    if (descriptor := open_own_plain_file(folder, PID_FILE)) is None:
        return None
    try:
        return int(os.read(descriptor, PID_FILE_MAX_BYTES))
    except (OSError, ValueError):
        return None
    finally:
        os.close(descriptor)


def _remove_stop_handlers(loop: asyncio.AbstractEventLoop) -> None:
    """Once the report is written, a Ctrl-C interrupts again; a second call does nothing."""
    for sig in _STOP_SIGNALS:
        loop.remove_signal_handler(sig)


async def _run_demo(options: DemoOptions, scratch: Path, stop: asyncio.Event) -> dict[str, Any]:
    output_dir = options.output_dir.resolve()
    outputs, ledger_file = output_dir / "outputs", output_dir / "ledger.json"
    outputs.mkdir(parents=True, exist_ok=True)
    remove_report(output_dir / "report.json")
    replicas = (
        RealComfyUIReplicas(options.comfyui_url) if options.comfyui_url
        else SimulatedReplicas(scratch, options.node_seconds)
    )
    loop = asyncio.get_running_loop()

    # As a workshop runs: participants submit with their token; the workers and the scaler hold the worker token.
    participants_token, workers_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    register_secret(participants_token)
    register_secret(workers_token)
    async with QueueManagerServer(
        options.db or scratch / "queue.db", max_queue_depth=max(100, options.jobs),
        token=participants_token, worker_token=workers_token, outputs_dir=outputs,
    ) as qm:
        env = worker_env(qm.url, outputs, idle_polls=_worker_idle_polls(options),
                         poll_interval_s=options.worker_poll_interval_s, token=workers_token)

        def workers(name: str = "local") -> LocalBackend:
            return worker_processes(env, replicas.command, replicas.env_for, output_dir / "logs", name)

        ledger = ReplicaLedger()
        started = time.monotonic()
        fleet_stack = contextlib.AsyncExitStack()
        try:
            if options.providers:
                backend, processes = await start_fleet(
                    fleet_stack, options.providers, options.fail, options.max_replicas, workers,
                    interval_s=options.scaler_interval_s, ledger_file=ledger_file,
                )
            else:
                backend = workers()
                processes = {"local": backend}
            fleet_stack.push_async_callback(backend.aclose)  # the replicas stopped first, then the fake APIs
            async with QueueStatusReader(qm.url, token=workers_token) as queue_reader:
                scaling = demo_scaling(options, fleet=bool(options.providers))
                scaler = ScalerLoop(scaling, backend, queue_reader, interval_s=options.scaler_interval_s)
                scaler_task = asyncio.create_task(scaler.run(stop))
                submissions = workshop_burst(options.jobs, options.users, options.bad_jobs, spread_s=options.spread_s)
                submitted: list[str] = []
                submit_task = asyncio.create_task(
                    submit_all(qm.url, submissions, started=loop.time(), token=participants_token, ids=submitted)
                )
                prices = provider_prices(PRICES) if options.providers else None
                progress = Progress(options.price_per_hour, live=options.live, price_of=prices)
                watch = _watch_fleet(scaler) if options.providers else backend.observe
                with progress:
                    stopped, replicas_left = await _until_done(qm, watch, processes, ledger, progress, submit_task,
                                                               stop, started, options)
                stop.set()
                await scaler_task
        finally:
            stop.set()
            await fleet_stack.aclose()
        pids_started = [pid for local in processes.values() for pid in local.pids_started]
        survivors = sorted({pid for pid in pids_started if _alive(pid)} | _processes_using(scratch))
        span_s = time.monotonic() - started
        jobs = list(qm.store.every())
        # As the participants would: their token, the queue manager's route, the files their results list.
        results = await _unless_interrupted(fetch_results(
            qm.url, list(final_jobs(jobs, submitted).values()), outputs, token=participants_token
        ))
        if results is None:
            stopped = stopped or "interrupted (Ctrl-C or SIGTERM) while the results were fetched"
            results = {"files": 0, "fetched": 0, "failed": 0, "first_failure": None}
        report = build_report(
            jobs, submitted, ledger, span_s=span_s,
            price_per_hour=options.price_per_hour, replica_starts=sum(p.starts for p in processes.values()),
            outputs=str(outputs), results=results, replicas_at_end=replicas_left,
        )
        not_saved = []
        if isinstance(backend, FleetBackend):
            report["providers"] = fleet_report(backend, processes)
            report["cost_usd"] = fleet_cost(ledger, report["providers"], report["cost_usd"])
            not_saved += _ledger_not_saved(backend, ledger_file)
    report["orphan_processes"] = survivors
    report["stopped"] = stopped
    report["not_saved"] = not_saved
    report["ok"] = report["ok"] and not survivors and not stopped and len(submitted) == options.jobs and not not_saved
    try:
        write_report(output_dir / "report.json", report)
    except ReportNotWritten as exc:  # a full disk: the report is still printed, NOT OK, naming the file
        report["not_saved"].append(str(exc))
        report["ok"] = False
    return report


def _ledger_not_saved(fleet: FleetBackend, path: Path) -> list[str]:
    """The fleet's ledger, the run's money record, saved once more as the run ends: the fleet logs a save that
    fails and goes on (a scaler must), which the demo must not call OK."""
    try:
        fleet.ledger.save(path)
    except OSError as error:
        return [f"cannot write {path}: {error.strerror}"]
    return []


async def _unless_interrupted(work: Coroutine[Any, Any, T]) -> T | None:
    """`work`'s result, or None when a Ctrl-C (or SIGTERM) comes first: the replicas are stopped by then, and the
    report is still written. A later one, until the report is written, is ignored."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(work)
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():  # the demo itself is cancelled, not interrupted by a signal
            raise
        return None


def _watch_fleet(scaler: ScalerLoop):
    """The fleet is read by the scaler's own ticks; the demo only looks at what the last one saw."""

    async def last_view() -> BackendView:
        return scaler.last_view or BackendView(replicas=(), status="unknown")

    return last_view


def fleet_report(fleet: FleetBackend, processes: dict[str, LocalBackend]) -> dict[str, Any]:
    """Per provider: replica starts, billed cost by its own rule, and every move with its reason."""
    summary = fleet.status_report(time.time())
    return {
        "providers": {
            name: {**row, "replica_starts": processes[name].starts} for name, row in summary["providers"].items()
        },
        "spend": summary["spend"],
        "moves": list(fleet.move_log),
    }


async def _until_done(
    qm, observe, processes, ledger, progress, submit_task, stop, started, options
) -> tuple[str | None, int]:
    """Watch until every job is submitted and terminal and the replicas are back to zero: None; or why it stopped
    before (Ctrl-C, timeout, a submission the queue manager refused). And the replicas the scaler left running, as
    last seen before the demo stops them itself."""
    stopped, running = None, 0
    while not stop.is_set():
        now = time.monotonic()
        view = await observe()
        running = len(view.replicas)
        ledger.observe([r.id for r in view.replicas], now)
        counts = {status.value: count for status, count in qm.store.counts().items()}
        starts = sum(p.starts for p in processes.values())
        progress.update(counts, len(view.replicas), starts, now - started, ledger)
        if submit_task.done():
            if isinstance(failure := submit_task.exception(), SubmissionFailed):
                log.error("Demo submission failed", reason=str(failure))
                stopped = f"submission failed: {failure}"
                break
            submit_task.result()  # raises what else stopped the submissions
            all_terminal = all(job.status.value in TERMINAL for job in qm.store.every(with_workflow=False))
            if all_terminal and not view.replicas:
                break
        if now - started > options.timeout_s:
            log.error("Demo timed out", timeout_s=options.timeout_s)
            stopped = f"timed out after --timeout-s {options.timeout_s:g} s"
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    if stop.is_set():
        stopped = "interrupted (Ctrl-C or SIGTERM)"
    submit_task.cancel()
    return stopped, running


def _processes_using(scratch: Path) -> set[int]:
    """The replicas' ComfyUIs and what they started: each runs in a session of its own, out of reach of its
    replica's process group, with its replica's SCRATCH_DIR, in this folder, in its environment. Not a program
    that only names the folder (`ls` of it, a shell in it)."""
    marker = f"SCRATCH_DIR={scratch}{os.sep}".encode()
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if any(entry.startswith(marker) for entry in environ.read_bytes().split(b"\0")):
                found.add(int(environ.parent.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def _alive(pgid: int) -> bool:
    """Is any process of this replica's process group (the replica and what it started) still running?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
