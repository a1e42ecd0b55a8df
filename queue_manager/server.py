"""QueueManagerServer: the embedded queue manager's lifecycle (store, HTTP site, reaper), usable from tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import structlog
from aiohttp import web

from common.heap_trim import TRIM_EVERY_S, HeapTrimmer, malloc_trim
from common.limits import QUEUE_HEADS
from common.timespans import HOUR_S, WEEK_S
from common.urls import host_port
from common.waiting_connections import WaitingConnections
from queue_manager.app import QueueApi, QueueSettings, TestHooks, build_app
from queue_manager.faults import FaultInjector
from queue_manager.models import QueueMode
from queue_manager.orphan_outputs import OrphanSweeper
from queue_manager.participants import ParticipantsFile
from queue_manager.reaper import JobReaper
from queue_manager.reports import ReportLog
from queue_manager.store import JobStore

log = structlog.get_logger()

_SHUTDOWN_TIMEOUT_S = 5.0
DEFAULT_LEASE_TIMEOUT_S = 60.0
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_FINISHED_JOB_RETENTION_S = WEEK_S
DEFAULT_ROUND_ROBIN_WINDOW_S = HOUR_S

T = TypeVar("T")


def token_pair_problem(token: str | None, worker_token: str | None) -> str | None:
    """Why this participants' token and worker token cannot go together, or None."""
    if worker_token and not token:
        return ("QUEUE_MANAGER_WORKER_TOKEN (--worker-token) is set without QUEUE_MANAGER_TOKEN (--token): every route "
                "but /api/workers/ would be open to anyone; set QUEUE_MANAGER_TOKEN (the participants' token) too, "
                "or neither")
    if worker_token and worker_token == token:
        return ("QUEUE_MANAGER_TOKEN (--token) and QUEUE_MANAGER_WORKER_TOKEN (--worker-token) are the same: "
                "participants would hold the workers' token; give the workers a different one")
    return None


def participants_problem(token: str | None, participants_file: str | Path | None) -> str | None:
    """Why a participants file cannot be used with this operator's token, or None."""
    if participants_file is not None and not token:
        return ("QUEUE_MANAGER_PARTICIPANTS_FILE (--participants-file) is set without QUEUE_MANAGER_TOKEN (--token): "
                "with no token every route would be open to anyone; set QUEUE_MANAGER_TOKEN (the operator's token) "
                "too, or neither")
    return None


def _version() -> str:
    try:
        return metadata.version("comfyui-serverless-worker")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class QueueManagerServer:
    """Serves the comfy-multi Queue Manager contract from SQLite.

    `db_path=None` uses a private temporary database removed on stop; give a path to keep jobs across
    restarts. Construction does no I/O; `start()` opens the database and binds the port.
    Finished jobs are deleted `finished_job_retention_s` after they finished (0 = kept for good).
    `max_pending_per_user` (0 = none) refuses a user's submission past that many of their jobs pending;
    `round_robin` counts the jobs handed out in the last `round_robin_window_s` (0 = every job kept).
    `outputs_dir`: where the workers' OUTPUTS_PATH is mounted, to serve completed jobs' result files
    (GET /api/jobs/{id}/outputs/{path}); None answers that route 404, saying it is off. A job the retention deletes
    has its folder there deleted too; a folder whose job is gone, untouched for the retention, goes in the orphan
    sweep (shortly after start, then daily).
    `extensions=False` answers exactly as comfy-multi does (no attempts, heartbeat, hand back, lease or fenced
    reports): the worker's comfy-multi fallback is tested against that.
    Every `heap_trim_interval_s` the C heap's free pages go back to the system with `trim_heap` (common.heap_trim).
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        max_queue_depth: int = 100,
        job_timeout_s: float = 3600,
        reaper_interval_s: float = 60,
        mode: QueueMode | str = QueueMode.FIFO,
        token: str | None = None,
        worker_token: str | None = None,
        participants_file: str | Path | None = None,
        outputs_dir: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        steady_clock: Callable[[], float] | None = None,
        lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        finished_job_retention_s: float = DEFAULT_FINISHED_JOB_RETENTION_S,
        max_pending_per_user: int = 0,
        round_robin_window_s: float = DEFAULT_ROUND_ROBIN_WINDOW_S,
        test_hooks: bool = False,
        extensions: bool = True,
        heap_trim_interval_s: float = TRIM_EVERY_S,
        trim_heap: Callable[[], object] = malloc_trim,
    ) -> None:
        self.db_path = db_path
        self.max_queue_depth = max_queue_depth
        self.job_timeout_s = job_timeout_s
        self.reaper_interval_s = reaper_interval_s
        self.lease_timeout_s = lease_timeout_s if extensions else 0
        self.extensions = extensions
        self.max_attempts = max_attempts
        self.finished_job_retention_s = finished_job_retention_s
        self.max_pending_per_user = max_pending_per_user
        self.round_robin_window_s = round_robin_window_s
        self.mode = QueueMode(mode)
        self.clock = clock
        # What the lease and the uptime tell clock steps by. A test's hand-moved clock is its own, unless it passes one.
        self.steady_clock = steady_clock or (time.monotonic if clock is time.time else clock)
        if problem := token_pair_problem(token, worker_token):
            raise ValueError(problem)
        if problem := participants_problem(token, participants_file):
            raise ValueError(problem)
        self._token = token
        self._worker_token = worker_token or None
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else None
        self._participants = ParticipantsFile(Path(participants_file)) if participants_file is not None else None
        self._test_hooks = TestHooks(FaultInjector(), ReportLog()) if test_hooks else None
        self.url: str | None = None
        self._store: JobStore | None = None
        self._reaper: JobReaper | None = None
        self._db_executor: ThreadPoolExecutor | None = None
        self._body_executor: ThreadPoolExecutor | None = None
        self._runner: web.AppRunner | None = None
        self._stop_reaper = asyncio.Event()
        self._reaper_task: asyncio.Task[None] | None = None
        self._orphan_sweeper: OrphanSweeper | None = None
        self._sweeper_task: asyncio.Task[None] | None = None
        self._heap_trimmer = HeapTrimmer("queue_manager", every_s=heap_trim_interval_s, trim=trim_heap)
        self._stop_trimming = asyncio.Event()
        self._trimming_task: asyncio.Task[None] | None = None

    @property
    def faults(self) -> FaultInjector:
        """Planned misbehaviour (tests only: `QueueManagerServer(test_hooks=True)`)."""
        return self._hooks().faults

    @property
    def reports(self) -> ReportLog:
        """Every complete/fail call received (tests only: `QueueManagerServer(test_hooks=True)`)."""
        return self._hooks().reports

    def _hooks(self) -> TestHooks:
        if self._test_hooks is None:
            raise RuntimeError("test hooks are off; construct QueueManagerServer(test_hooks=True)")
        return self._test_hooks

    def _open_store(self) -> JobStore:
        return JobStore(self.db_path, clock=self.clock, round_robin_window_s=self.round_robin_window_s)

    @property
    def store(self) -> JobStore:
        """The job store, for tests: `qm.store.submit(...)`, `.get(id)`, `.list(...)`. Valid after start()."""
        if self._store is None:
            raise RuntimeError("QueueManagerServer is not started")
        return self._store

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Open the store, serve HTTP and start the reaper. Returns the base URL (port 0 picks a free one).
        ParticipantsFileError, before anything else, when the participants file cannot be used."""
        participants = self._participants.load() if self._participants is not None else None
        self._db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-db")
        self._body_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-body")
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._db_executor, self._open_store)
        # Time the queue was down is nobody's silence: every running lease is extended by it.
        renewed = await loop.run_in_executor(self._db_executor, self._store.renew_leases_for_downtime)
        self._reaper = JobReaper(
            self._store,
            job_timeout_s=self.job_timeout_s,
            interval_s=self.reaper_interval_s,
            clock=self.clock,
            steady_clock=self.steady_clock,
            lease_timeout_s=self.lease_timeout_s,
            max_attempts=self.max_attempts,
            finished_job_retention_s=self.finished_job_retention_s,
            outputs_dir=self.outputs_dir.resolve() if self.outputs_dir is not None else None,
        )
        # Before serving, not an interval later: a queue manager restarting more often than that never handed back
        # an expired lease.
        await self._reaper.logged_pass(self._run_in_db)
        settings = QueueSettings(
            mode=self.mode,
            max_queue_depth=self.max_queue_depth,
            max_pending_per_user=self.max_pending_per_user,
            token=self._token,
            version=_version(),
            max_attempts=self.max_attempts,
            lease_timeout_s=self.lease_timeout_s,
            extensions=self.extensions,
            outputs_dir=self.outputs_dir.resolve() if self.outputs_dir is not None else None,
        )
        api = QueueApi(
            self._store,
            settings,
            db_executor=self._db_executor,
            body_executor=self._body_executor,
            clock=self.clock,
            steady_clock=self.steady_clock,
        )
        waiting = WaitingConnections("queue_manager", QUEUE_HEADS)
        app = build_app(api, token=self._token, worker_token=self._worker_token, participants=self._participants,
                        clock=self.clock, test_hooks=self._test_hooks, waiting=waiting)
        self._runner = await waiting.start_runner(app, _SHUTDOWN_TIMEOUT_S)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.url = f"http://{host_port(host, bound_port)}"
        self._stop_reaper.clear()
        self._reaper_task = asyncio.create_task(self._reaper.run(self._stop_reaper, self._run_in_db))
        if settings.outputs_dir is not None and self.finished_job_retention_s > 0:
            self._orphan_sweeper = OrphanSweeper(self._store, settings.outputs_dir, clock=self.clock,
                                                 retention_s=self.finished_job_retention_s, run_in_db=self._run_in_db)
            self._sweeper_task = asyncio.create_task(
                self._orphan_sweeper.run(self._stop_reaper, first_after_s=self.reaper_interval_s)
            )
        self._stop_trimming.clear()
        self._trimming_task = asyncio.create_task(self._heap_trimmer.run(self._stop_trimming))
        log.info(
            "queue_manager_started",
            url=self.url,
            db=str(self._store.path),
            mode=self.mode.value,
            max_queue_depth=self.max_queue_depth,
            max_pending_per_user=self.max_pending_per_user,
            round_robin_window_s=self.round_robin_window_s,
            job_timeout_s=self.job_timeout_s,
            lease_timeout_s=self.lease_timeout_s,
            max_attempts=self.max_attempts,
            finished_job_retention_s=self.finished_job_retention_s,
            running_jobs_leases_renewed=renewed,
            finished_jobs_numbered=self._store.numbered_on_open,
            auth=self._token is not None,
            worker_token=self._worker_token is not None,
            participants=len(participants) if participants is not None else 0,
            participants_file=str(self._participants.path) if self._participants is not None else None,
            outputs_dir=str(settings.outputs_dir) if settings.outputs_dir is not None else None,
            test_hooks=self._test_hooks is not None,
        )
        return self.url

    async def stop(self) -> None:
        """Stop the reaper, finish in-flight requests (bounded), then close the database."""
        self._stop_reaper.set()
        if self._reaper_task is not None:
            await self._reaper_task
            self._reaper_task = None
        if self._sweeper_task is not None:
            await self._sweeper_task
            self._sweeper_task = None
        self._orphan_sweeper = None
        self._stop_trimming.set()
        if self._trimming_task is not None:
            await self._trimming_task
            self._trimming_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._store is not None:
            await self._run_in_db(self._store.close)
            self._store = None
        if self._db_executor is not None:
            self._db_executor.shutdown(wait=True)
            self._db_executor = None
        if self._body_executor is not None:
            self._body_executor.shutdown(wait=True)
            self._body_executor = None
        if self.url is not None:
            log.info("queue_manager_stopped", url=self.url)
            self.url = None

    async def reap(self) -> list[str]:
        """Run one job-timeout pass now (tests advance the injected clock, then call this)."""
        if self._reaper is None:
            raise RuntimeError("QueueManagerServer is not started")
        return await self._run_in_db(self._reaper.reap)

    async def expire_leases(self) -> list[str]:
        """Run one lease pass now: hand back jobs whose worker has been silent for lease_timeout_s."""
        if self._reaper is None:
            raise RuntimeError("QueueManagerServer is not started")
        return await self._run_in_db(self._reaper.expire_leases)

    async def purge_finished(self) -> int:
        """Run one retention pass now: delete a batch of jobs that finished more than the retention ago, then their
        folders in outputs_dir."""
        if self._reaper is None:
            raise RuntimeError("QueueManagerServer is not started")
        purged = await self._run_in_db(self._reaper.purge_finished)
        await self._reaper.prune_outputs()
        return purged

    async def sweep_orphan_outputs(self) -> int:
        """Run one orphan sweep now: delete the folders in outputs_dir whose job is gone, untouched for longer than the
        retention. 0 without outputs_dir or with the retention off (nothing is swept then)."""
        if self._store is None:
            raise RuntimeError("QueueManagerServer is not started")
        return await self._orphan_sweeper.sweep() if self._orphan_sweeper is not None else 0

    async def _run_in_db(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_executor, call)

    async def __aenter__(self) -> QueueManagerServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
