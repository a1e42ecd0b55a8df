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

from queue_manager.app import QueueApi, QueueSettings, build_app
from queue_manager.faults import FaultInjector
from queue_manager.models import QueueMode
from queue_manager.reaper import JobReaper
from queue_manager.reports import ReportLog
from queue_manager.store import JobStore

log = structlog.get_logger()

_SHUTDOWN_TIMEOUT_S = 5.0

T = TypeVar("T")


def _version() -> str:
    try:
        return metadata.version("comfyui-serverless-worker")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class QueueManagerServer:
    """Serves the comfy-multi Queue Manager contract from SQLite.

    `db_path=None` uses a private temporary database removed on stop; give a path to keep jobs across
    restarts. Construction does no I/O; `start()` opens the database and binds the port.
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db_path = db_path
        self.max_queue_depth = max_queue_depth
        self.job_timeout_s = job_timeout_s
        self.reaper_interval_s = reaper_interval_s
        self.mode = QueueMode(mode)
        self.clock = clock
        self._token = token
        self.faults = FaultInjector()
        self.reports = ReportLog()
        self.url: str | None = None
        self._store: JobStore | None = None
        self._reaper: JobReaper | None = None
        self._db_executor: ThreadPoolExecutor | None = None
        self._runner: web.AppRunner | None = None
        self._stop_reaper = asyncio.Event()
        self._reaper_task: asyncio.Task[None] | None = None

    @property
    def store(self) -> JobStore:
        """The job store, for tests: `qm.store.submit(...)`, `.get(id)`, `.list(...)`. Valid after start()."""
        if self._store is None:
            raise RuntimeError("QueueManagerServer is not started")
        return self._store

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Open the store, serve HTTP and start the reaper. Returns the base URL (port 0 picks a free one)."""
        self._db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-db")
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._db_executor, lambda: JobStore(self.db_path, clock=self.clock))
        self._reaper = JobReaper(
            self._store, job_timeout_s=self.job_timeout_s, interval_s=self.reaper_interval_s, clock=self.clock
        )
        settings = QueueSettings(
            mode=self.mode, max_queue_depth=self.max_queue_depth, token=self._token, version=_version()
        )
        api = QueueApi(self._store, settings, db_executor=self._db_executor, clock=self.clock, started_at=self.clock())
        app = build_app(api, faults=self.faults, reports=self.reports, token=self._token, clock=self.clock)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound_port}"
        self._stop_reaper.clear()
        self._reaper_task = asyncio.create_task(self._reaper.run(self._stop_reaper, self._run_in_db))
        log.info(
            "queue_manager_started",
            url=self.url,
            db=str(self._store.path),
            mode=self.mode.value,
            max_queue_depth=self.max_queue_depth,
            job_timeout_s=self.job_timeout_s,
            auth=self._token is not None,
        )
        return self.url

    async def stop(self) -> None:
        """Stop the reaper, finish in-flight requests (bounded), then close the database."""
        self._stop_reaper.set()
        if self._reaper_task is not None:
            await self._reaper_task
            self._reaper_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._store is not None:
            await self._run_in_db(self._store.close)
            self._store = None
        if self._db_executor is not None:
            self._db_executor.shutdown(wait=True)
            self._db_executor = None
        if self.url is not None:
            log.info("queue_manager_stopped", url=self.url)
            self.url = None

    async def reap(self) -> list[str]:
        """Run one reaper pass now (tests advance the injected clock, then call this)."""
        if self._reaper is None:
            raise RuntimeError("QueueManagerServer is not started")
        return await self._run_in_db(self._reaper.reap)

    async def _run_in_db(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_executor, call)

    async def __aenter__(self) -> QueueManagerServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
