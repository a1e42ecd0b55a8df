"""Worker processes on this machine as a scaler backend, for the demo and the tests.

It copies what a pinned Verda deployment does, as far as it is known (docs/verda-api.md):
- ``apply(n)`` pins n replicas; the platform keeps n running. A worker that exits on its own (a serverless
  worker exits when idle) is restarted in its place at the next ``observe``, as Kubernetes would; Verda does
  not document which it does, and the scaler is safe either way because it never relies on workers exiting.
- A worker that keeps failing (non-zero exits in a row, however long each ran: a worker that cannot reach its
  queue manager exits 1 after SERVERLESS_MAX_UNREACHABLE_S, 10 min) is restarted after a back-off, as Kubernetes'
  CrashLoopBackOff does, and is not counted as ready meanwhile. ``observe`` says so (``crash_loop``): the provider
  is degraded as crash-looping from its first back-off, and in a fleet its replicas go elsewhere
  (scaler/allocator.py). See ``_note_exit`` for what ends a streak.
- On a scale-down the replicas stopped are picked by the phase their worker's /health gives at that moment (each
  asked once, then, on loopback): those still starting first, then idle ones, then those whose phase is not known
  (no answer, draining), busy ones last, whose job would be handed back and start over; the newest first within each,
  as on RunPod (Verda picks without saying how). They get SIGTERM, and SIGKILL if still alive ``stop_timeout_s``
  later, as Verda does after 30 s.
- ``pause`` stops every replica and holds the count at 0 until ``resume``.
- ``aclose`` leaves no process behind: SIGTERM to all, wait, SIGKILL what is left (one stuck in the kernel past
  KILLED_EXIT_WAIT_S is named and left).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import structlog

from common.children import die_with_parent
from common.http_answers import AnswerTooLarge, request_bounded
from common.logs import error_text
from common.settings import QUEUE_TOKEN_ENV, QUEUE_WORKER_TOKEN_ENV, SCALER_CREDENTIALS
from health.probe import health_url
from scaler.policy import PAUSED, Replica
from scaler.providers.base import HEALTH_ANSWER_LIMIT_BYTES, BackendView, CrashLoop, stop_rank
from scaler.providers.owned_folders import OwnedFolder, make_owned_folder, remove_abandoned_folders

log = structlog.get_logger()

WORKER_COMMAND = (sys.executable, "-m", "worker")
HEALTHY = "healthy"
# An idle worker restarts about every 22 s, each run in a new log file: 1000 runs are ~6 hours of one replica.
LOG_FILES_KEPT = 1000
# From a worker's normal start: `python -m worker` refusing its settings exits 2 after 0.7-1 s; a good one polls the
# queue ~1 s after its start (a few seconds more while its ComfyUI comes up), and an idle one exits 0 ~22 s later.
MIN_READY_S = 10.0  # a worker in a new place counts as ready (serving) once it has run this long, as minReadySeconds
# A replacement after one failure counts as ready once it has run this long; after failures in a row, once it has
# run this much longer than the failed run it replaces.
FAILED_START_S = 60.0
# The worker's SERVERLESS_MAX_UNREACHABLE_S default: a worker no poll of which is answered exits 1 this long after.
UNREACHABLE_LIMIT_S = 600.0
RESTART_BACKOFF_S = 10.0  # the wait before the restart after a second failure in a row; doubles on each next
RESTART_BACKOFF_MAX_S = 300.0  # Kubernetes' CrashLoopBackOff: 10 s doubling to 5 min
# A process ends at its SIGKILL unless stuck in the kernel (uninterruptible I/O: a hung NFS mount), which the scaler's
# exit must not wait for.
KILLED_EXIT_WAIT_S = 10.0
PHASE_READ_TIMEOUT_S = 1.0  # a worker's /health answers on loopback in milliseconds; one that does not is unknown


@dataclass
class _LocalReplica:
    id: str
    process: asyncio.subprocess.Process
    started_at: float
    log_file: IO[bytes] | None
    failed_starts: int = 0  # non-zero exits in a row of the replicas it replaces
    ready_after_s: float = MIN_READY_S
    stopping_since: float | None = None

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    def ready(self, now: float) -> bool:
        return not self.exited and now - self.started_at >= self.ready_after_s

    def close_log(self) -> None:
        if self.log_file is not None:
            self.log_file.close()


@dataclass
class _Vacancy:
    """A replica's place from its exit until its replacement starts: at once after an idle exit, after the
    back-off after a failed run."""

    failed_starts: int
    exited_at: float
    restart_at: float
    ready_after_s: float = 0.0  # how long its replacement runs before it counts as ready (``ready_after_s``)

    def due(self, now: float) -> bool:
        return not self.exited_at <= now < self.restart_at  # a clock set back does not hold the restart


def ready_after_s(failed_starts: int, failed_run_s: float, unreachable_s: float) -> float:
    """How long a replacement runs before it counts as ready. An idle exit's at once, as its predecessor did (made
    to wait MIN_READY_S, idle workers restarting every ~22 s were un-ready ~45 % of the time). After one failure,
    once past a failed start. After failures in a row, once it has outlived the failed run by FAILED_START_S, when
    that run was no longer than a worker that reaches no queue manager runs (``unreachable_s``, its
    SERVERLESS_MAX_UNREACHABLE_S, plus a start): those would otherwise count as serving for most of their 10 min,
    and the provider never reach the fleet's start deadline. A longer run had its polls answered: its crash says
    nothing of the queue, and its replacement is ready past a failed start (waiting out hours-long busy runs, a
    fleet's local provider was degraded at the start deadline)."""
    if failed_starts < 2:
        return FAILED_START_S if failed_starts else 0.0
    if failed_run_s > unreachable_s + FAILED_START_S:
        return FAILED_START_S
    return failed_run_s + FAILED_START_S


def unreachable_limit_s(env: Mapping[str, str]) -> float:
    """The workers' SERVERLESS_MAX_UNREACHABLE_S (0: they never give up); the default when unset or unreadable (the
    worker then refuses it at start)."""
    try:
        limit = float(env.get("SERVERLESS_MAX_UNREACHABLE_S") or UNREACHABLE_LIMIT_S)
    except ValueError:
        return UNREACHABLE_LIMIT_S
    return limit if 0 <= limit < float("inf") else UNREACHABLE_LIMIT_S


def worker_environment(environ: Mapping[str, str], queue_url: str, token: str | None) -> dict[str, str]:
    """A local worker's environment: ``environ`` with the queue's URL and the workers' ``token`` as their
    QUEUE_MANAGER_TOKEN, without what only the scaler holds: its cloud accounts and alert webhook, the queue manager's
    QUEUE_MANAGER_WORKER_TOKEN variable (beside no QUEUE_MANAGER_TOKEN a worker refuses to start) and any other
    QUEUE_MANAGER_TOKEN (the participants', when the workers have their own). In any case: settings read
    runpod_api_key as RUNPOD_API_KEY, and a queue_manager_url left beside ours might be the one a worker reads."""
    withheld = SCALER_CREDENTIALS | {QUEUE_TOKEN_ENV, QUEUE_WORKER_TOKEN_ENV, "QUEUE_MANAGER_URL"}
    env = {name: value for name, value in environ.items() if name.upper() not in withheld}
    env["QUEUE_MANAGER_URL"] = queue_url
    if token:
        env[QUEUE_TOKEN_ENV] = token
    return env


def restart_delay_s(failed_starts: int) -> float:
    """The first failure is restarted at once (a worker killed once is not crash-looping); then the back-off."""
    if failed_starts < 2:
        return 0.0
    doublings = min(failed_starts - 2, 32)  # past the cap long before; 2 ** 1024 is no float (OverflowError)
    return min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2**doublings)


class LocalBackend:
    """Runs ``command`` (default ``python -m worker``) once per replica.

    ``worker_env`` is the workers' complete environment (QUEUE_MANAGER_URL, COMFYUI_URL, OUTPUTS_PATH, PATH...);
    ``replica_env(replica_id)`` adds what differs per replica (e.g. its own ComfyUI port). Each replica also gets
    its own WORKER_ID, HEALTH_PORT=0 (several share this machine), a HEALTH_PORT_FILE in a folder of the backend's
    own (where a scale-down finds each worker's /health; removed at ``aclose``, and at a later start when a scaler
    killed outright left it: scaler/providers/owned_folders.py) and, unless given,
    SERVERLESS_MODE=true. With ``log_dir`` each replica writes its output to ``<log_dir>/<id>.log``
    (``<id_prefix>-<N>.log``); each start keeps ``log_files_kept`` of those, the running replicas' and the most
    recently written of the others, and removes the oldest others (an earlier run's too; never a file named
    otherwise). Replica numbers go on after the highest one in ``log_dir`` (from 1 without files or ``log_dir``), so
    a restarted scaler's workers neither replace nor append to the files of the run before (whose last lines may say
    why it ended). Each replica leads
    its own process group, so what it started (the supervisor's ComfyUI) is killed with it. ``clock`` (epoch
    seconds) times the replicas' starts, their runs and the restart back-off.
    """

    def __init__(
        self,
        worker_env: Mapping[str, str],
        *,
        command: Sequence[str] = WORKER_COMMAND,
        replica_env: Callable[[str], Mapping[str, str]] = lambda _: {},
        id_prefix: str = "local-worker",
        clock: Callable[[], float] = time.time,
        stop_timeout_s: float = 30.0,
        log_dir: Path | None = None,
        log_files_kept: int = LOG_FILES_KEPT,
    ) -> None:
        if log_files_kept < 1:
            raise ValueError(f"log_files_kept must be >= 1 (the running replicas' files are always kept), "
                             f"got {log_files_kept}")
        self._env = {"SERVERLESS_MODE": "true", **worker_env, "HEALTH_PORT": "0"}
        self._unreachable_s = unreachable_limit_s(self._env)
        self._command = tuple(command)
        self._replica_env = replica_env
        self._id_prefix = id_prefix
        self._clock = clock
        self._stop_timeout_s = stop_timeout_s
        self._log_dir = log_dir
        self._log_files_kept = log_files_kept
        self._desired = 0
        self._paused = False
        self._live: list[_LocalReplica] = []
        self._vacancies: list[_Vacancy] = []
        self._stopping: list[_LocalReplica] = []
        self._port_files: OwnedFolder | None = None  # made at the first start
        self.starts = 0
        self._numbered_after = 0 if log_dir is None else self._highest_log_number(log_dir)
        # Each replica's pid from its start until a reconcile sees it exit and kills its group (once it has exited,
        # the pid may be another process's): as long as the count, not one per restart. After aclose it holds
        # what ran until then, none of which may be alive.
        self.pids_started: list[int] = []

    def __repr__(self) -> str:
        return (f"LocalBackend(desired={self._desired}, live={len(self._live)}, "
                f"vacancies={len(self._vacancies)}, paused={self._paused})")

    @property
    def pids(self) -> list[int]:
        """Processes this backend still tracks (running or being stopped)."""
        return [r.process.pid for r in self._live + self._stopping]

    async def observe(self) -> BackendView:
        await self._reconcile()
        replicas = tuple(Replica(r.id, r.started_at) for r in self._live)
        now = self._clock()
        ready = sum(r.ready(now) for r in self._live)
        return BackendView(replicas=replicas, status=PAUSED if self._paused else HEALTHY, ready=ready,
                           crash_loop=self._crash_loop(now))

    def _crash_loop(self, now: float) -> CrashLoop | None:
        """The worst place backing off after failed runs in a row, once reconciled (a due restart has started)."""
        held = [v for v in self._vacancies if v.failed_starts >= 2 and not v.due(now)]
        if not held:
            return None
        return CrashLoop(max(v.failed_starts for v in held), min(v.restart_at for v in held))

    async def apply(self, desired: int) -> bool:
        if desired < 0:
            raise ValueError(f"desired replicas must be >= 0, got {desired}")
        changed = desired != self._desired
        self._desired = desired
        await self._reconcile()
        return changed

    async def pause(self) -> None:
        self._paused = True
        await self._reconcile()

    async def resume(self) -> None:
        self._paused = False
        await self._reconcile()

    async def aclose(self) -> None:
        self._paused = True
        for replica in self._live:
            self._terminate(replica)
        self._stopping.extend(self._live)
        self._live.clear()
        self._vacancies.clear()
        waits = [asyncio.ensure_future(replica.process.wait()) for replica in self._stopping]
        if waits:
            _, still_running = await asyncio.wait(waits, timeout=self._stop_timeout_s)
            for replica in self._stopping:
                if not replica.exited:
                    log.warning("local_replica_killed", replica=replica.id, pid=replica.process.pid)
                    _kill_group(replica.process.pid)
            if still_running:
                _, stuck = await asyncio.wait(still_running, timeout=KILLED_EXIT_WAIT_S)
                for wait in stuck:
                    wait.cancel()
                if stuck:
                    log.error("local_replicas_not_ended", pids=[r.process.pid for r in self._stopping if not r.exited],
                              waited_s=KILLED_EXIT_WAIT_S,
                              hint="still running after SIGKILL: stuck in the kernel (a hung NFS mount?); "
                                   "they end when it answers, or with a reboot")
        for replica in self._stopping:
            _kill_group(replica.process.pid)  # whatever the replica left behind in its group
            replica.close_log()
        self._stopping.clear()
        if self._port_files is not None:
            self._port_files.remove()
            self._port_files = None

    def _target(self) -> int:
        return 0 if self._paused else self._desired

    async def _reconcile(self) -> None:
        self._reap()
        target = self._target()
        # A vacancy (a place backing off) counts toward the target; a scale-down gives those up first.
        del self._vacancies[max(0, target - len(self._live)):]
        now = self._clock()
        for vacancy in [v for v in self._vacancies if v.due(now)]:
            self._vacancies.remove(vacancy)
            await self._start(vacancy.failed_starts, vacancy.ready_after_s)
        while len(self._live) + len(self._vacancies) < target:
            await self._start()
        if len(self._live) > target:
            await self._stop_surplus()

    async def _stop_surplus(self) -> None:
        """Stop replicas down to the target, by their worker's phase (``stop_rank``), the newest first within each.
        Stopping them all asks none."""
        phases = await self._phases(list(self._live)) if self._target() else {}
        # What changed while the phases were read (another reconcile) counts: the target and the replicas now.
        newest_first = reversed(self._live)
        ranked = sorted(newest_first, key=lambda r: stop_rank(phases.get(r.id)))
        for replica in ranked[: max(0, len(self._live) - self._target())]:
            self._live.remove(replica)
            self._terminate(replica, phases.get(replica.id))
            self._stopping.append(replica)

    async def _phases(self, replicas: list[_LocalReplica]) -> dict[str, str]:
        """Each replica's phase, as its worker's /health gives it now (all asked at once); none for those that did
        not answer within PHASE_READ_TIMEOUT_S."""
        async with httpx.AsyncClient(trust_env=False) as http:  # the workers are on this machine: never a proxy
            phases = await asyncio.gather(*(_read_phase(http, self._port_file(r.id)) for r in replicas))
        return {replica.id: phase for replica, phase in zip(replicas, phases, strict=True) if phase is not None}

    def _port_file(self, replica_id: str) -> Path:
        assert self._port_files is not None
        return self._port_files.path / f"{replica_id}.port"

    def _reap(self) -> None:
        for replica in [r for r in self._live if r.exited]:
            self._live.remove(replica)
            self._retire(replica)
            self._note_exit(replica)
        now = time.monotonic()
        for replica in list(self._stopping):
            if replica.exited:
                self._stopping.remove(replica)
                self._retire(replica)
            elif replica.stopping_since is not None and now - replica.stopping_since > self._stop_timeout_s:
                log.warning("local_replica_killed", replica=replica.id, pid=replica.process.pid)
                _kill_group(replica.process.pid)

    def _note_exit(self, replica: _LocalReplica) -> None:
        """An idle exit (0) is restarted at once; a non-zero exit is a failure, however long the run, backs off
        when it follows another, and is a warning, as any failure is.

        What the backend knows of a run is its exit code and its length, nothing of the jobs it served (the queue
        manager does not track workers). Exit 0 is the worker's word that it ran well: a serverless worker exits 0
        when idle (its polls were answered), at its job limit, or when stopped; it ends a streak. Length alone is no
        evidence: a worker that cannot reach its queue manager exits 1 after 10 min. A streak also ends when a
        replica outlived the failed run it replaced by FAILED_START_S (it was counted ready on that evidence): its
        own failure is then the first of a new streak."""
        now = self._clock()
        exit_code = replica.process.returncode
        ran_s = round(now - replica.started_at, 1)  # seen at this reconcile: at most a tick late
        if exit_code == 0:
            log.info("local_replica_exited", replica=replica.id, exit_code=exit_code, ran_s=ran_s)
            self._vacancies.append(_Vacancy(0, now, now))
            return
        outlived_the_streak = replica.failed_starts >= 2 and ran_s >= replica.ready_after_s
        failed_starts = 1 if outlived_the_streak else replica.failed_starts + 1
        delay_s = restart_delay_s(failed_starts)
        log.warning("local_replica_exited", replica=replica.id, exit_code=exit_code, ran_s=ran_s,
                    failed_starts=failed_starts, restart_in_s=delay_s, output=self._output_of(replica.id))
        self._vacancies.append(
            _Vacancy(failed_starts, now, now + delay_s, ready_after_s(failed_starts, ran_s, self._unreachable_s))
        )

    def _output_of(self, replica_id: str) -> str:
        return "the scaler's stderr" if self._log_dir is None else str(self._log_path(replica_id))

    def _log_path(self, replica_id: str) -> Path:
        assert self._log_dir is not None
        return self._log_dir / f"{replica_id}.log"

    def _retire(self, replica: _LocalReplica) -> None:
        _kill_group(replica.process.pid)  # a supervisor's ComfyUI must not outlive it
        replica.close_log()
        self._port_file(replica.id).unlink(missing_ok=True)  # a killed worker's: its health server did not remove it
        self.pids_started.remove(replica.process.pid)

    async def _start(self, failed_starts: int = 0, ready_after_s: float = MIN_READY_S) -> None:
        """A replica in a place (live), or the place backing off as after a failed run when its process cannot be
        started (command missing, fork limit): started again at every tick, each left an empty log file that
        rotated out the earlier run's."""
        self.starts += 1
        replica_id = f"{self._id_prefix}-{self._numbered_after + self.starts}"
        if self._port_files is None:
            self._port_files = self._make_port_folder()
        log_file = None
        try:
            if self._log_dir is not None:
                self._log_dir.mkdir(parents=True, exist_ok=True)
                log_file = self._log_path(replica_id).open("wb")
            process = await asyncio.create_subprocess_exec(
                *self._command,
                env={**self._env, **self._replica_env(replica_id), "WORKER_ID": replica_id,
                     "HEALTH_PORT_FILE": str(self._port_file(replica_id))},
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                # A scaler killed outright (OOM killer, kill -9) must not leave its workers running: restarted, it
                # would start as many again beside them. SIGTERM: the worker hands its job back, as on a scale-down.
                preexec_fn=die_with_parent(os.getpid(), signal.SIGTERM),
                stdout=log_file,
                stderr=log_file,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            if log_file is not None:
                log_file.close()
                self._log_path(replica_id).unlink(missing_ok=True)
            self._start_failed(replica_id, failed_starts + 1, exc)
            return
        self.pids_started.append(process.pid)
        log.info("local_replica_started", replica=replica_id, pid=process.pid)
        self._live.append(_LocalReplica(replica_id, process, self._clock(), log_file, failed_starts, ready_after_s))
        if self._log_dir is not None:
            self._remove_old_logs(self._log_dir, running={r.id for r in [*self._live, *self._stopping]})

    def _start_failed(self, replica_id: str, failed_starts: int, error: BaseException) -> None:
        now = self._clock()
        delay_s = restart_delay_s(failed_starts)
        log.warning("local_replica_start_failed", replica=replica_id, command=self._command[0],
                    error=error_text(error), failed_starts=failed_starts, restart_in_s=delay_s)
        self._vacancies.append(
            _Vacancy(failed_starts, now, now + delay_s, ready_after_s(failed_starts, 0.0, self._unreachable_s))
        )

    def _make_port_folder(self) -> OwnedFolder:
        """This backend's folder of port files, held as long as it runs; the ones scalers killed outright left
        (aclose removes its own) are removed first."""
        prefix = f"{self._id_prefix}-health-ports-"
        if removed := remove_abandoned_folders(prefix):
            log.info("local_abandoned_port_folders_removed", count=removed, folder=tempfile.gettempdir(),
                     pattern=f"{prefix}*")
        return make_owned_folder(prefix)

    def _own_log_number(self, name: str) -> int | None:
        number = re.fullmatch(rf"{re.escape(self._id_prefix)}-(\d+)\.log", name)
        return int(number[1]) if number else None

    def _highest_log_number(self, log_dir: Path) -> int:
        with contextlib.suppress(FileNotFoundError), os.scandir(log_dir) as entries:
            return max((n for entry in entries if (n := self._own_log_number(entry.name)) is not None), default=0)
        return 0

    def _remove_old_logs(self, log_dir: Path, running: set[str]) -> None:
        exited = []
        with os.scandir(log_dir) as entries:
            for entry in entries:
                number = self._own_log_number(entry.name)
                if (number is not None and entry.name.removesuffix(".log") not in running
                        and entry.is_file(follow_symlinks=False)):
                    with contextlib.suppress(FileNotFoundError):
                        exited.append((entry.stat(follow_symlinks=False).st_mtime_ns, number, entry.path))
        for *_, path in sorted(exited)[: max(0, len(exited) + len(running) - self._log_files_kept)]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _terminate(self, replica: _LocalReplica, phase: str | None = None) -> None:
        if replica.stopping_since is None:
            replica.stopping_since = time.monotonic()
        if not replica.exited:
            log.info("local_replica_stopping", replica=replica.id, pid=replica.process.pid, phase=phase)
            with contextlib.suppress(ProcessLookupError):
                replica.process.terminate()


async def _read_phase(http: httpx.AsyncClient, port_file: Path) -> str | None:
    """The phase (starting, idle, busy, draining) the worker's /health gives, found through the port file its health
    server writes; None without a file (not listening yet, or gone), an answer within PHASE_READ_TIMEOUT_S or a
    phase in it."""
    try:
        url = health_url({"HEALTH_PORT_FILE": str(port_file), "HEALTH_PORT": "0"})  # no file: ValueError, no port
        response = await request_bounded(http, "GET", url, peer="local worker /health",
                                         limit_bytes=HEALTH_ANSWER_LIMIT_BYTES, deadline_s=PHASE_READ_TIMEOUT_S)
        body = response.json()
    except (OSError, ValueError, RecursionError, httpx.HTTPError, AnswerTooLarge):
        return None
    phase = body.get("phase") if isinstance(body, dict) else None  # a 503 (unhealthy) still says where it was
    return phase if isinstance(phase, str) else None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
