"""The worker: startup -> poll loop -> shutdown. Signals only set flags; this loop does the work.

Each job goes claim -> validate -> execute -> deliver -> report, and ends with exactly one report: completed,
failed (the job's own fault), or handed back (our infrastructure lost it: ComfyUI died, the replica is
stopping, a fatal GPU error). After SIGTERM every wait comes from one deadline (worker/deadline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import structlog

from common.handbacks import HandBackCause
from common.urls import redact_url
from worker import __version__
from worker.comfyui import (
    MIN_QUESTION_S,
    WORKER_ID_KEY,
    ComfyUIClient,
    ComfyUIUnavailable,
    EventSocket,
    PromptRefusedWorker,
    PromptRejected,
    PromptsNotStopped,
    ReplyTooLarge,
    UploadRefused,
    UploadRefusedWorker,
    ViewRefusedWorker,
)
from worker.config import WorkerSettings
from worker.deadline import ShutdownDeadline
from worker.execution import Outcome, PromptRun, RunTimings
from worker.housekeeping import ComfyUIHousekeeping
from worker.jobs import (
    InvalidJob,
    Job,
    UnreportableJob,
    attempt_of,
    job_id_of,
    lease_timeout_of,
    parse_job,
    validate_workflow,
)
from worker.lease import JobLease
from worker.outputs import (
    DELIVERY_STALL_S,
    REMOVAL_BUDGET_S,
    ComfyUILostDuringDelivery,
    DeliveredFile,
    OutputDelivery,
    OutputDeliveryError,
    OutputLimits,
    OutputsDiskFailed,
    OutputsFolderRefused,
)
from worker.queue_client import CredentialsRefused, PollError, QueueClient, ReportRejected
from worker.reports import Report, Reporter
from worker.run_record import RecordsUnreadable, RunRecord
from worker.seen_keys import SeenKeys
from worker.state import Phase, WorkerState

log = structlog.get_logger()

STARTUP_PROBE_INTERVAL_S = 0.5
MAX_POLL_BACKOFF_S = 30.0
ABORT_EXPLAIN_WAIT_S = 1.0  # a lost ComfyUI may be a dead process the supervisor is about to report
# A cancelled job (a stop, the lease lost) waits this long at most for its delivery to end: a thread inside a write
# to a hung volume cannot be stopped, and the job is handed back without waiting for it.
CANCELLED_DELIVERY_WAIT_S = 2.0
# Between jobs ComfyUI is idle and answers in milliseconds on loopback: a hung one costs a job at most this.
HOUSEKEEPING_WAIT_S = 2 * MIN_QUESTION_S
# A serverless worker whose token the queue manager refuses this many polls in a row exits: a wrong token never
# heals, and the replica would bill for ever (about 6 s of refusals at the default poll interval). Not one: a
# proxy's refusal during a deploy is a blip.
MAX_REFUSED_POLLS = 3
# Jobs (id and attempt) this worker took, the latest first out: one handed out again is skipped, not run twice.
TAKEN_MEMORY = 1_000
EXIT_FATAL = 1
EXIT_CONFIGURATION = 2

T = TypeVar("T")


class StoppedWaiting(Exception):
    """A stop came while the worker waited on something it may leave (a poll, a probe of ComfyUI, the warm-up)."""


class Worker:
    def __init__(
        self, settings: WorkerSettings, state: WorkerState | None = None, *, timings: RunTimings | None = None
    ) -> None:
        self.settings = settings
        self.state = state or WorkerState(
            worker_id=settings.worker_id,
            provider=settings.inference_provider,
            version=__version__,
            max_idle_polls=settings.serverless_max_idle_polls,
            serverless=settings.serverless_mode,
        )
        token = settings.queue_manager_token.get_secret_value() if settings.queue_manager_token else None
        self.queue = QueueClient(
            settings.queue_base_url,
            settings.worker_id,
            token=token,
            timeout_s=settings.http_timeout_s,
            report_budget_s=settings.report_retry_budget_s,
        )
        self.comfy = ComfyUIClient(
            settings.comfyui_base_url, timeout_s=settings.http_timeout_s, worker_id=settings.worker_id
        )
        self.events = EventSocket(self.comfy)
        self.delivery = OutputDelivery(
            settings.outputs_path, self.comfy, settings.comfyui_output_dir,
            OutputLimits(files=settings.max_job_output_files, bytes=settings.max_job_output_mb << 20),
        )
        self.housekeeping = ComfyUIHousekeeping(
            self.comfy, output_dir=settings.comfyui_output_dir, temp_dir=settings.comfyui_temp_dir,
            outputs_root=settings.outputs_path, max_files=settings.max_job_output_files,
            input_dir=settings.comfyui_input_dir,
        )
        self.record = RunRecord(self.comfy, settings.worker_id)
        self._record_writer: asyncio.Task[None] | None = None
        self.deadline = ShutdownDeadline(settings.platform_kill_delay_s)
        self.reporter = Reporter(self.queue, self.state, self.deadline, max_job_attempts=settings.max_job_attempts)
        self.lease = JobLease(self.queue, settings.lease_heartbeat_s)
        self.timings = timings or RunTimings()
        self._beat_interval_s = min(1.0, settings.heartbeat_timeout_s / 4)
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._abort_reason: str | None = None
        self._aborted = asyncio.Event()
        self._lease_lost: str | None = None
        self._taken = SeenKeys(TAKEN_MEMORY)
        # Why the worker exits when no fatal fault says it (a refused token, ComfyUI never up): "Worker shutdown
        # complete" carries it, as ComfyWorkerRestarting's runbook reads it there.
        self._exit_reason: str | None = None
        self._comfyui_lost: str | None = None  # what the running job saw of ComfyUI going away
        self._comfyui_answered_at = -math.inf
        self._execution: asyncio.Task[Report] | None = None
        self._execution_cancelled = asyncio.Event()
        self._left_behind: set[asyncio.Task[Report]] = set()  # executions still inside a delivery's thread
        self._prompt_run: PromptRun | None = None
        self._prompt_over: Outcome | None = None  # the job's prompt, once ComfyUI is done with it
        # When ComfyUI went silent, if a run that lost it knows: COMFYUI_UNRESPONSIVE_TIMEOUT_S counts from then.
        self._silent_since: float | None = None
        # Prompts a killed run of this worker, or an earlier attempt of a job, left running: interrupted, and
        # tidied once over (_tidy_comfyui).
        self._left_running: set[str] = set()

    # -- flags, safe to call from a signal handler or another task ------------------------------------------
    def request_shutdown(self) -> None:
        """First call: stop polling, start the shutdown deadline and drain within the grace period.
        Second call: skip the grace. /ready says not ready at once, even while a poll keeps its grace."""
        if self._stop.is_set():
            self._force.set()
        self.deadline.start()
        self._stop.set()
        self.state.mark_not_ready("stopping: shutting down")

    def _mark_ready(self) -> None:
        """Ready for jobs, unless a stop came meanwhile: then /ready goes on saying that it is stopping."""
        if not self._stop.is_set():
            self.state.mark_ready()

    def abort(self, reason: str) -> None:
        """ComfyUI is gone: the running job is handed back with `reason` now, and run() returns 1."""
        self._abort_reason = reason
        self.state.mark_fatal(reason)
        self._aborted.set()
        self._stop.set()
        self._force.set()

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def run(self) -> int:
        code = await self.startup()
        if code is None:
            code = await self.main_loop()
        await self.shutdown()
        return code

    async def startup(self) -> int | None:
        """None when ready to poll; otherwise the exit code."""
        s = self.settings
        log.info(
            "Worker started", worker_id=s.worker_id, version=__version__, provider=s.inference_provider,
            serverless=s.serverless_mode, max_idle_polls=s.serverless_max_idle_polls,
            job_limit=s.serverless_job_limit, max_unreachable_s=s.serverless_max_unreachable_s,
            queue_manager=redact_url(s.queue_base_url),
            comfyui=redact_url(s.comfyui_base_url), outputs_path=str(s.outputs_path),
            shutdown_grace_s=s.shutdown_grace_s, platform_kill_delay_s=s.platform_kill_delay_s,
        )
        self.state.set_phase(Phase.STARTING)
        await self._sweep_staging_if_due()
        try:
            stats = await self._unless_stopped(
                self.comfy.wait_until_up(
                    s.comfyui_startup_timeout_s, interval_s=STARTUP_PROBE_INTERVAL_S,
                    on_waiting=self._log_waiting_for_comfyui,
                )
            )
        except ComfyUIUnavailable as exc:
            log.error("ComfyUI never came up; exiting", error=str(exc), timeout_s=s.comfyui_startup_timeout_s)
            self._exit_reason = f"ComfyUI never came up within {s.comfyui_startup_timeout_s:g} s: {exc}"
            self.state.mark_not_ready(self._exit_reason)
            return 1
        except StoppedWaiting:
            return self._exit_code()
        system = stats.get("system") if isinstance(stats, dict) else None
        version = system.get("comfyui_version") if isinstance(system, dict) else None
        self.state.set_comfyui(True, version)
        self._comfyui_answered_at = time.monotonic()
        log.info("ComfyUI is up", comfyui_version=self.state.comfyui_version)
        if (code := await self._refuse_a_live_twin()) is not None:
            return code
        # A worker killed mid-job (a bare comfy-worker; in the image ComfyUI dies with it) left its prompt running:
        # every job of this run would queue behind it, and its result goes to no one. Its history entries and
        # files would stay in ComfyUI for good.
        await self._stop_prompts_of_an_earlier_run()
        self.housekeeping.check_cache(system.get("argv") if isinstance(system, dict) else None)
        await self.housekeeping.tidy_earlier_run(s.worker_id, self._housekeeping_wait_s)
        if s.warmup_workflow is not None and not await self.warm_up():
            return self._exit_code() if self._stop.is_set() else await self._stay_unready()
        self._mark_ready()
        self.state.set_phase(Phase.IDLE)
        return None

    async def _refuse_a_live_twin(self) -> int | None:
        """None when no other live worker has this WORKER_ID on this ComfyUI (worker/run_record.py);
        otherwise the exit code: its prompts would be stopped and tidied as a killed run's, failing its jobs."""
        s = self.settings
        try:
            async with self.state.beating(self._beat_interval_s):
                twin = await self._unless_stopped(self.record.twin(self._housekeeping_wait_s))
        except StoppedWaiting:
            return self._exit_code()
        except (RecordsUnreadable, ComfyUIUnavailable, ReplyTooLarge) as exc:
            log.warning("Could not tell whether another live worker has this WORKER_ID on this ComfyUI: its prompts "
                        "would be taken for an earlier run's", worker_id=s.worker_id, error=str(exc))  # fmt: skip
            twin = None
        if twin is None:
            self._record_writer = asyncio.create_task(self.record.keep_writing(self._housekeeping_wait_s))
            return None
        log.error("Another live worker has this WORKER_ID on this ComfyUI; exiting", worker_id=s.worker_id,
                  record=twin, fix="give each worker its own WORKER_ID (unset, it is new at every start)")
        self._exit_reason = (f"another live worker has WORKER_ID {s.worker_id!r} on this ComfyUI: give each worker "
                             "its own")  # fmt: skip
        self.state.mark_not_ready(self._exit_reason)
        return EXIT_CONFIGURATION

    async def _stop_prompts_of_an_earlier_run(self) -> None:
        try:
            running, pending = await self.comfy.stop_prompts_of(WORKER_ID_KEY, self.settings.worker_id)
        except (ComfyUIUnavailable, ReplyTooLarge) as exc:  # the first job finds out, and says so
            log.warning("Could not look for prompts an earlier run of this worker left in ComfyUI", error=str(exc))
            if isinstance(exc, PromptsNotStopped):  # the others were stopped, and end: to be tidied
                self._left_running |= exc.running
            return
        if running or pending:
            log.warning("Stopped prompts an earlier run of this worker left in ComfyUI",
                        running=sorted(running), pending=sorted(pending))
        self._left_running |= running

    def _log_waiting_for_comfyui(self, waited_s: float, error: str) -> None:
        """A wrong COMFYUI_URL, or a ComfyUI still loading, used to be silence for up to COMFYUI_STARTUP_TIMEOUT_S."""
        log.info(
            "Waiting for ComfyUI to answer", comfyui=redact_url(self.settings.comfyui_base_url),
            waited_s=round(waited_s), timeout_s=self.settings.comfyui_startup_timeout_s, error=error,
        )

    async def warm_up(self) -> bool:
        path = self.settings.warmup_workflow
        self.state.mark_not_ready("warming up")
        log.info("Running warm-up workflow", path=str(path))
        try:
            workflow = validate_workflow(json.loads(path.read_text()))
            run = self._prompt_run = self._new_run()
            outcome = await self._unless_stopped(run.run(workflow))
            problem = None if outcome.ok else outcome.message
            if outcome.status != "lost" and not outcome.replica_fault:
                await self._tidy_comfyui(outcome)
        except StoppedWaiting:
            log.info("Stopped during the warm-up")
            if self._abort_reason is None:  # ComfyUI is alive: stop the prompt (it only loads models)
                await self._interrupt()
            return False
        except (OSError, ValueError, RecursionError, InvalidJob, PromptRejected, ComfyUIUnavailable) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        finally:
            if self._prompt_run is not None:
                self.housekeeping.prompt_over(self._prompt_run)
            self._prompt_run = None
        if problem:
            log.error("Warm-up failed; the worker stays not ready", path=str(path), error=problem)
            self._exit_reason = f"warm-up failed: {problem}"
            self.state.mark_not_ready(self._exit_reason)
            return False
        log.info("Warm-up finished", seconds=round(outcome.execution_s, 3))
        return True

    async def _stay_unready(self) -> int:
        """A failed warm-up: in serverless mode release the GPU at once; otherwise wait to be stopped."""
        if not self.settings.serverless_mode:
            await self._stop.wait()
        return 1

    async def main_loop(self) -> int:
        s = self.settings
        backoff = s.poll_interval_s
        refused = 0
        # Polls failing in a row: since the first one's start, and how many. Failed polls are not idle ones (a queue
        # manager restarting must not end every worker), so only SERVERLESS_MAX_UNREACHABLE_S ends this wait.
        unanswered_since: float | None = None
        unanswered_polls = 0
        while not self._stop.is_set():
            if s.serverless_mode and 0 < s.serverless_job_limit <= self.state.jobs_finished:
                log.info("Serverless job limit reached", jobs_finished=self.state.jobs_finished)
                break
            if not await self._comfyui_answering():
                break
            await self._sweep_staging_if_due()
            poll_started = time.monotonic()
            try:
                async with self.state.beating(self._beat_interval_s):  # a slow queue is not a wedged loop
                    raw = await self._unless_stopped(self.queue.next_job(), grace_s=self._grace_left_s)
            except StoppedWaiting:
                log.warning("Stopping without the queue manager's answer to the poll")
                break
            except PollError as exc:
                self.state.poll_failed(_poll_failure(exc))
                refused = refused + 1 if isinstance(exc, CredentialsRefused) else 0
                if s.serverless_mode and refused >= MAX_REFUSED_POLLS:
                    log.error("Queue manager refused this worker's credentials; exiting", error=str(exc),
                              refused_polls=refused)
                    self._exit_reason = str(exc)
                    return EXIT_CONFIGURATION
                unanswered_since = poll_started if unanswered_since is None else unanswered_since
                unanswered_polls += 1
                left_s = self._unanswered_left_s(unanswered_since)
                if left_s <= 0:
                    return self._give_up_on_the_queue(unanswered_since, unanswered_polls, exc)
                wait_s = min(backoff, left_s)  # the last poll at the bound, not up to MAX_POLL_BACKOFF_S after it
                log.warning("Poll failed; backing off", error=str(exc), retry_in_s=round(wait_s, 2))
                await self._sleep(wait_s)
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_S)
                continue
            backoff = s.poll_interval_s
            refused = 0
            unanswered_since, unanswered_polls = None, 0
            self.state.poll_answered()
            if raw is not None and self._taken_before(raw):
                raw = None  # nothing for this worker to do: an idle poll
            if raw is None:
                self.state.idle_poll()
                if s.serverless_mode and 0 < s.serverless_max_idle_polls <= self.state.consecutive_idle_polls:
                    log.info("Serverless idle timeout reached", idle_polls=self.state.consecutive_idle_polls)
                    break
                await self._sleep(s.poll_interval_s)
                continue
            await self.process(raw)
            await self.housekeeping.delete_freed_by_restart()  # after the report: its user waits for that
            if self.state.fatal_reason is not None:
                log.error("Fatal error: taking no new job; exiting so the platform replaces this replica",
                          reason=self.state.fatal_reason)
                break
            if not self._stop.is_set():
                self.state.set_phase(Phase.IDLE)
        return self._exit_code()

    def _unanswered_left_s(self, since: float) -> float:
        """What is left of SERVERLESS_MAX_UNREACHABLE_S for polls failing since ``since``; infinite in always-on
        mode or with 0 (never give up)."""
        s = self.settings
        if not s.serverless_mode or s.serverless_max_unreachable_s == 0:
            return math.inf
        return since + s.serverless_max_unreachable_s - time.monotonic()

    def _give_up_on_the_queue(self, since: float, polls: int, exc: PollError) -> int:
        """No poll answered for SERVERLESS_MAX_UNREACHABLE_S: a wrong QUEUE_MANAGER_URL or a firewall never heals,
        and the replica would bill for ever while the scaler, reading the queue its own way, adds more."""
        s = self.settings
        url = redact_url(s.queue_base_url)
        tried_s = round(time.monotonic() - since, 1)
        log.error(
            "Queue manager unreachable; exiting", queue_manager_url=url, tried_s=tried_s, failed_polls=polls,
            max_unreachable_s=s.serverless_max_unreachable_s, error=str(exc),
            fix="check QUEUE_MANAGER_URL (the queue manager's base URL, without /api) and that this replica can "
            "reach it; SERVERLESS_MAX_UNREACHABLE_S is how long the worker tries",
        )  # fmt: skip
        self._exit_reason = (f"no poll of the queue manager at QUEUE_MANAGER_URL {url} answered for {tried_s:g} s "
                             f"(SERVERLESS_MAX_UNREACHABLE_S {s.serverless_max_unreachable_s:g}): {exc}")
        return EXIT_FATAL

    async def _sweep_staging_if_due(self) -> None:
        """At start and hourly between jobs: remove deliveries left by workers killed mid-way (worker/outputs.py)."""
        if self.delivery.sweep_due():
            await self._remove_in_thread(self.delivery.remove_abandoned)

    async def _remove_in_thread(self, remove: Callable[..., T], *args: object) -> T:
        """A removal from OUTPUTS_PATH given REMOVAL_BUDGET_S (it starts no entry after it, nor after a stop): slow
        on a network volume is not wedged, and a volume hung inside one entry still is, HEARTBEAT_TIMEOUT_S after
        the budget."""
        budget_s = REMOVAL_BUDGET_S
        async with self.state.beating(self._beat_interval_s, for_at_most_s=budget_s):
            # Event.is_set only reads a flag: the thread may ask it, though only the event loop sets it.
            return await asyncio.to_thread(remove, *args, budget_s=budget_s, stopping=self._stop.is_set)

    async def _comfyui_answering(self) -> bool:
        """Never pop a job ComfyUI cannot run. False: it did not come back in time, or the worker is stopping."""
        if time.monotonic() - self._comfyui_answered_at < self.settings.poll_interval_s:
            return True
        silent_since = time.monotonic() if self._silent_since is None else self._silent_since
        give_up_at = silent_since + self.settings.comfyui_unresponsive_timeout_s
        try:  # never longer than the worker would wait for a silent ComfyUI in all: bounded, so beating
            async with self.state.beating(self._beat_interval_s):
                await self._unless_stopped(self.comfy.probe(give_up_at))
        except ComfyUIUnavailable as exc:
            return await self._wait_for_comfyui(str(exc), since=silent_since)
        except StoppedWaiting:
            return False
        self._comfyui_answered()
        self._silent_since = None
        return True

    def _comfyui_answered(self) -> None:
        """Also after a lost job: ComfyUI may answer again before anything waits for it (restarted outside the
        supervisor, a stall that passed), and comfyui_up must not stay 0 on a replica that renders."""
        self._comfyui_answered_at = time.monotonic()
        if not self.state.comfyui_up:
            self.state.set_comfyui(True)

    async def _wait_for_comfyui(self, error: str, since: float) -> bool:
        """ComfyUI was up and stopped answering (hung, or restarting outside the supervisor): wait for it up to
        COMFYUI_UNRESPONSIVE_TIMEOUT_S from ``since`` (its last answer to a lost run, else the first unanswered
        probe), then go fatal, so the replica is
        replaced instead of idling, billed, in front of a ComfyUI that answers no one."""
        timeout_s = self.settings.comfyui_unresponsive_timeout_s
        self.state.set_comfyui(False)
        self.state.mark_not_ready(f"ComfyUI not answering: {error}")
        log.warning("ComfyUI is not answering; taking no job until it does", error=error, timeout_s=timeout_s)
        try:
            async with self.state.beating(self._beat_interval_s):
                await self._unless_stopped(self.comfy.wait_until_up(
                    max(0.0, since + timeout_s - time.monotonic()), interval_s=STARTUP_PROBE_INTERVAL_S
                ))
        except ComfyUIUnavailable as exc:
            # Not "not up after 0 s": the wait's budget is what was left of the timeout once the job was lost.
            log.error("ComfyUI did not come back; exiting", error=str(exc), timeout_s=timeout_s,
                      silent_s=round(time.monotonic() - since, 1))
            self.state.mark_fatal(f"ComfyUI stopped answering and did not come back within {timeout_s:g} s")
            return False
        except StoppedWaiting:
            return False
        log.info("ComfyUI is answering again")
        self.state.set_comfyui(True)
        self._mark_ready()
        self._comfyui_answered_at = time.monotonic()
        self._silent_since = None
        return True

    async def shutdown(self) -> None:
        self.state.set_phase(Phase.STOPPED)
        self.state.mark_not_ready("stopped")
        await self.events.close()
        if self._record_writer is not None:
            self._record_writer.cancel()
        if self.state.comfyui_up:  # one that stopped answering would hold the exit: its record goes stale instead
            with contextlib.suppress(TimeoutError):
                async with self.deadline.bounded():
                    await self.record.remove(self._housekeeping_wait_s)
        await self.queue.aclose()
        await self.comfy.aclose()
        log.info(
            "Worker shutdown complete", jobs_completed=self.state.jobs_completed, jobs_failed=self.state.jobs_failed,
            jobs_handed_back=self.state.jobs_handed_back, uptime_s=round(self.state.uptime_s(), 1),
            reason=self.state.fatal_reason or self._exit_reason,
        )

    def _exit_code(self) -> int:
        return 1 if self._abort_reason or self.state.fatal_reason else 0

    async def _sleep(self, seconds: float) -> None:
        """Between polls; beating, so a poll interval or back-off longer than HEARTBEAT_TIMEOUT_S is no wedge."""
        with contextlib.suppress(TimeoutError):
            async with self.state.beating(self._beat_interval_s):
                await asyncio.wait_for(self._stop.wait(), seconds)

    def _taken_before(self, raw: Any) -> bool:
        """Whether this worker took this job (id and attempt) already: a queue manager handing it out again (comfy-multi
        has no attempts) had it run on ComfyUI again, only for its second report to be refused."""
        try:
            key = (job_id_of(raw), attempt_of(raw))
        except UnreportableJob:
            return False  # _handle says why it is skipped
        if self._taken.add(key):
            return False
        log.warning("Job handed out again after this worker took it; skipping it", job_id=key[0], attempt=key[1])
        return True

    # -- one job ------------------------------------------------------------------------------------------
    async def process(self, raw: Any) -> None:
        """Handle one popped job to its single report, draining it within the grace period on shutdown."""
        handler = asyncio.create_task(self._handle(raw))
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({handler, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():
                await self._drain(handler)
            await handler
        finally:
            stopping.cancel()

    async def _drain(self, handler: asyncio.Task[None]) -> None:
        if not self._force.is_set():
            # The grace counts from the signal and never runs past the deadline: what is left after it is
            # for handing the job back, reporting and stopping ComfyUI.
            grace_left_s = self._grace_left_s()
            self.state.set_phase(Phase.DRAINING)
            self.state.mark_not_ready("draining: shutting down")
            log.info("Shutdown requested; letting the running job finish", grace_s=round(grace_left_s, 2),
                     deadline_in_s=round(self.deadline.remaining(), 2))
            forced = asyncio.create_task(self._force.wait())
            await asyncio.wait({handler, forced}, timeout=grace_left_s, return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
        if not handler.done():
            self._cancel_execution()

    def _grace_left_s(self) -> float:
        """What is left of SHUTDOWN_GRACE_S since the signal; the rest of the deadline is for handing the job back,
        reporting and stopping ComfyUI."""
        s = self.settings
        return max(0.0, self.deadline.remaining() - (s.platform_kill_delay_s - s.shutdown_grace_s))

    async def _unless_stopped(self, work: Coroutine[Any, Any, T], grace_s: Callable[[], float] = lambda: 0.0) -> T:
        """work's result, unless a stop comes first and work does not end within grace_s() of it: then work is
        cancelled and StoppedWaiting raised. A hung peer must not hold a stopping worker past the platform's kill.
        A poll keeps its grace even after a second signal or an abort: its answer may carry a job, which is
        handed back then, not lost until its lease runs out."""
        task = asyncio.create_task(work)
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                grace = grace_s()
                await asyncio.wait({task}, timeout=grace if math.isfinite(grace) else None)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            raise StoppedWaiting
        return task.result()

    async def _handle(self, raw: Any) -> None:
        try:
            job_id = job_id_of(raw)
        except UnreportableJob as exc:
            log.error("Received a job that cannot be reported back; skipping it", error=str(exc))
            return
        attempt = attempt_of(raw)
        user_id = raw.get("user_id")
        structlog.contextvars.bind_contextvars(
            job_id=job_id, user_id=user_id if isinstance(user_id, str) else None, attempt=attempt
        )
        self._lease_lost = None
        self._comfyui_lost = None
        self._prompt_over = None
        lease = asyncio.create_task(
            self.lease.keep(job_id, attempt, on_lost=self._lose_lease, lease_timeout_s=lease_timeout_of(raw))
        )
        try:
            self.state.job_started(job_id)
            picked_up = time.monotonic()
            log.info(f"Processing job {job_id}")
            try:
                job = parse_job(raw)
            except InvalidJob as exc:
                report: Report | None = Report(job_id, attempt, error=f"Invalid job: {exc}", workflow_fault=True)
            else:
                report = await self._run_job(job, picked_up)
            if report is None:
                self.state.job_finished("abandoned")
                if self._prompt_over is not None:  # interrupted with ComfyUI answering: nothing of ours broke
                    await self._tidy_comfyui(self._prompt_over)
                return
            self.lease.hold_for_report(job_id, attempt)
            async with self.state.beating(self._beat_interval_s):
                outcome = await asyncio.shield(self.reporter.send(report))
            if report.completed and outcome in ("refused", "rejected"):
                outcome = await self._after_refused_completion(report, outcome)
            elif outcome == "refused":
                outcome = await self._after_refused_report(report)
            lease.cancel()  # reported: a heartbeat now would be refused, and logged as a stale worker's
            # Undelivered counts as the report that was attempted; refused means the job is no longer ours.
            finished = {"undelivered": report.kind, "refused": "abandoned", "rejected": "abandoned"}
            self.state.job_finished(finished.get(outcome, outcome), workflow_fault=report.workflow_fault)
            if self._prompt_over is not None and report.handback is None:  # handed back: ComfyUI may be the fault
                await self._tidy_comfyui(self._prompt_over)
        finally:
            lease.cancel()
            self._prompt_over = None  # its history outputs: up to MAX_COMFYUI_MESSAGE_BYTES, held until the next job
            structlog.contextvars.unbind_contextvars("job_id", "user_id", "prompt_id", "attempt")

    async def _after_refused_completion(self, report: Report, refusal: str) -> str:
        """A complete-job refused for good (404, 409, 4xx): the files are no one's result, unless the refusal
        answered a retry of a report that had landed. Kept when the manager was merely unreachable. A result
        the manager rejected (too large, say) fails the job, which is still this worker's, with the reason."""
        try:
            async with self.deadline.bounded():
                landed = await self.queue.job_result_is(report.job_id, (report.result or {}).get("prompt_id"))
        except (TimeoutError, httpx.HTTPError, ReportRejected, ValueError):
            return "refused"
        if landed is None:
            return "refused"
        if landed:
            log.info(f"Job {report.job_id} completed", outputs=len((report.result or {}).get("outputs", [])),
                     note="an earlier try of the report had landed")
            return "completed"
        files = [DeliveredFile(**f) for f in (report.result or {}).get("outputs", [])]
        left = await self._remove_in_thread(self.delivery.remove, files)
        log.warning("Removed the outputs of a completion the queue manager refused", files=len(files) - left,
                    left_in_place=left)
        if refusal == "rejected":
            why = f"Output delivery failed: the queue manager refused the result ({self.reporter.last_rejection})"
            async with self.state.beating(self._beat_interval_s):
                return await asyncio.shield(self.reporter.send(Report(report.job_id, report.attempt, error=why)))
        return "refused"

    async def _after_refused_report(self, report: Report) -> str:
        """A fail-job or hand back refused for good (404, 409): the refusal may answer a retry of that very report,
        which an earlier try had landed (its answer lost: a queue manager restart, a proxy's 502). Then the job
        ended as this worker said, and is counted so."""
        try:
            async with self.deadline.bounded():
                if report.handback is None:
                    failed = await self.queue.job_failed_with(report.job_id, report.error or "")
                    landed = "failed" if failed else None
                elif report.attempt is not None:
                    landed = await self.queue.handed_back_by(report.job_id, report.attempt, report.handback,
                                                             report.cause)
                else:  # comfy-multi: its copy was submitted, or not; nothing to look up
                    landed = None
        except (TimeoutError, httpx.HTTPError, ReportRejected, ValueError):
            return "refused"
        if landed == "failed":
            log.warning(f"Job {report.job_id} failed", error=report.stored_text,
                        note="an earlier try of the report had landed")
        elif landed == "handed_back":
            log.info(f"Job {report.job_id} handed back", reason=report.stored_text, cause=report.cause.value,
                     note="an earlier try of the report had landed")
        return landed or "refused"

    def _lose_lease(self, why: str) -> None:
        if self._execution is None:  # being reported: the 409 may answer our own report landing; its answer tells
            return
        self._lease_lost = why
        log.warning("The queue manager took the job back; abandoning it without a report", error=why)
        self._cancel_execution()

    def _cancel_execution(self) -> None:
        if self._execution is not None:
            self._execution.cancel()
            self._execution_cancelled.set()

    async def _run_job(self, job: Job, picked_up: float) -> Report | None:
        if self._stop.is_set():  # popped while stopping: hand it straight back
            return await self._stopped(job)
        made_folders = self.housekeeping.missing_input_folders(job.images)
        self._execution_cancelled.clear()
        execution = self._execution = asyncio.create_task(self._execute(job, picked_up))
        try:
            if not await self._settled(execution):
                self._leave_behind(execution)
                return await self._stopped(job)
            return execution.result()
        except asyncio.CancelledError:
            if not execution.cancelled():
                raise
            return await self._stopped(job)
        except Exception as exc:  # a bug, or an answer no check foresaw: the job still ends, the worker goes on
            log.exception("Unexpected error while running the job; handing it back")
            reason = f"worker {self.settings.worker_id} hit an unexpected error: {type(exc).__name__}: {exc}"
            return Report(job.id, job.attempt, handback=reason, job=job)
        finally:
            self._execution = None
            if self._prompt_run is not None:  # its prompt is over (interrupted above if the job was stopped)
                await self.housekeeping.delete_uploads(self._prompt_run.uploaded, made_folders)
                self.housekeeping.prompt_over(self._prompt_run)
            self._prompt_run = None

    async def _settled(self, execution: asyncio.Task[Report]) -> bool:
        """Whether ``execution`` ended: by itself, or within CANCELLED_DELIVERY_WAIT_S of being cancelled."""
        cancelled = asyncio.create_task(self._execution_cancelled.wait())
        try:
            await asyncio.wait({execution, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            if not execution.done():
                await asyncio.wait({execution}, timeout=CANCELLED_DELIVERY_WAIT_S)
        except asyncio.CancelledError:
            execution.cancel()
            raise
        finally:
            cancelled.cancel()
        return execution.done()

    @property
    def left_behind(self) -> bool:
        """Whether a job's delivery, handed back without waiting for it, is still inside a thread's write."""
        return bool(self._left_behind)

    def withdraw_left_behind(self) -> None:
        """Remove what a delivery left behind published once its job was handed back, waiting
        CANCELLED_DELIVERY_WAIT_S at most (a volume hung inside the removal): the process exits next."""
        withdrawal = threading.Thread(target=self.delivery.withdraw_unclaimed, name="withdraw-outputs", daemon=True)
        withdrawal.start()
        withdrawal.join(CANCELLED_DELIVERY_WAIT_S)

    def _leave_behind(self, execution: asyncio.Task[Report]) -> None:
        """Let a cancelled execution end in its own time: once its thread returns, it removes its staging folder."""
        log.warning("The job's delivery did not stop: a write to OUTPUTS_PATH has not returned (a hung volume?); "
                    "handing the job back without waiting for it", waited_s=CANCELLED_DELIVERY_WAIT_S,
                    outputs_path=str(self.delivery.outputs_root))
        self._left_behind.add(execution)
        execution.add_done_callback(self._left_behind.discard)
        execution.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def _execute(self, job: Job, picked_up: float) -> Report:
        picked_up_at = datetime.now(UTC).isoformat()
        await self._remove_in_thread(self.delivery.remove_earlier_attempts, job.user_id, job.id, job.attempt)
        run = self._prompt_run = self._new_run(on_prompt_id=self._on_prompt_id, job_id=job.id)
        if job.attempt is not None and job.attempt > 1:
            async with self.state.beating(self._beat_interval_s):
                self._left_running |= await run.stop_earlier_attempts()
        if unsavable := await self.housekeeping.unsavable_image(job.images):
            return Report(job.id, job.attempt, error=f"Invalid job: {unsavable}", workflow_fault=True)
        try:
            outcome = await run.run(job.workflow, job.images)
        except (PromptRejected, UploadRefused) as exc:
            return Report(job.id, job.attempt, error=str(exc), workflow_fault=True)
        except ComfyUIUnavailable as exc:
            if await self._refuses_the_worker(exc):
                reason = f"Submitting the workflow failed on worker {self.settings.worker_id}: {exc}"
                return Report(job.id, job.attempt, handback=reason, job=job)
            reason = await self._explain_lost_comfyui(f"ComfyUI unavailable while submitting the workflow: {exc}")
            return Report(job.id, job.attempt, handback=reason, job=job)

        metrics = self.state.metrics
        if outcome.comfyui_queue_s is not None:
            metrics.observe_phase("wait", outcome.comfyui_queue_s)
        metrics.observe_phase("execution", outcome.execution_s)
        if outcome.replica_fault:
            reason = f"{outcome.replica_fault} on worker {self.settings.worker_id}: {outcome.message}"
            # /health and /status carry no user data: ComfyUI's message names the job's files, its node ids.
            self.state.mark_fatal(f"{outcome.replica_fault} on worker {self.settings.worker_id}: ComfyUI raised "
                                  f"{outcome.raised}")  # logged as it goes
            return Report(job.id, job.attempt, handback=reason, job=job)
        if outcome.status == "lost":
            reason = await self._explain_lost_comfyui(outcome.message, silent_since=run.heard_at)
            return Report(job.id, job.attempt, handback=reason, job=job)
        self._prompt_over = outcome
        if outcome.comfyui_stuck:  # every later prompt would wait behind it and time out in turn
            why = (f"the worker could not interrupt it at the job deadline ({outcome.interrupt_failed})"
                   if outcome.interrupt_failed else "which did not stop when interrupted at the job deadline")
            self.state.mark_fatal(
                f"ComfyUI is still running prompt {outcome.prompt_id}, {why}; only a restart of ComfyUI frees it"
            )
        if not outcome.ok:  # a node's error is the workflow's; a timeout or someone's interrupt is not
            return Report(job.id, job.attempt, error=outcome.message, workflow_fault=outcome.status == "error")
        self._comfyui_answered()

        delivery_started = time.monotonic()
        try:
            async with self.state.beating(self._beat_interval_s, progressed_at=lambda: self.delivery.progressed_at,
                                          stall_s=DELIVERY_STALL_S):
                files = await self.delivery.deliver(
                    outcome.outputs, job.user_id, job.id, attempt=job.attempt, written_since=outcome.written_since
                )
        except ComfyUILostDuringDelivery as exc:
            if exc.__cause__ is not None and await self._refuses_the_worker(exc.__cause__):
                reason = f"Output delivery failed on worker {self.settings.worker_id}: {exc}"
                return Report(job.id, job.attempt, handback=reason, job=job)
            reason = await self._explain_lost_comfyui(f"Output delivery failed: {exc}")
            return Report(job.id, job.attempt, handback=reason, job=job)
        except OutputsDiskFailed as exc:
            reason = (f"Output delivery failed on worker {self.settings.worker_id}: the outputs disk (OUTPUTS_PATH "
                      f"{self.delivery.outputs_root}) refused a write: {exc}")
            self.state.mark_fatal(reason)  # every job would fail here the same way: let the platform replace us
            return Report(job.id, job.attempt, handback=reason, job=job)
        except OutputsFolderRefused as exc:  # of some users' folders only, maybe: the worker goes on
            reason = f"Output delivery failed on worker {self.settings.worker_id}: {exc}"
            return Report(job.id, job.attempt, handback=reason, job=job)
        except OutputDeliveryError as exc:
            return Report(job.id, job.attempt, error=f"Output delivery failed: {exc}")
        delivery_s = time.monotonic() - delivery_started
        metrics.observe_phase("delivery", delivery_s)
        log.info("Outputs delivered", files=len(files), delivery_s=round(delivery_s, 4))
        return Report(job.id, job.attempt, result={
            "prompt_id": outcome.prompt_id,
            "outputs": [f.as_dict() for f in files],
            "outputs_root": str(self.settings.outputs_path),
            "timings": {
                "picked_up_at": picked_up_at,
                "comfyui_queue_s": _round(outcome.comfyui_queue_s),
                "execution_s": _round(outcome.execution_s),
                "delivery_s": _round(delivery_s),
                "total_s": _round(time.monotonic() - picked_up),
            },
            "worker_id": self.settings.worker_id,
            "provider": self.settings.inference_provider,
            "comfyui_version": self.state.comfyui_version,
            "worker_version": __version__,
            "warnings": outcome.warnings,
        })

    async def _refuses_the_worker(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a 401 or 403 from something in front of ComfyUI that refuses the same question with
        nothing of a job's in it too: then every job would be handed back the same way, and the replica goes fatal
        for the platform to replace it (its reason names no file, workflow or image: user data)."""
        questions = {
            ViewRefusedWorker: ("GET /view", "file", self.comfy.view_refuses_worker),
            PromptRefusedWorker: ("POST /prompt", "workflow", self.comfy.prompt_refuses_worker),
            UploadRefusedWorker: ("POST /upload/image", "image", self.comfy.upload_refuses_worker),
        }
        for kind, (what, whatever, ask) in questions.items():
            if isinstance(exc, kind) and (status := await ask()):
                self.state.mark_fatal(f"something in front of ComfyUI refuses worker {self.settings.worker_id} "
                                      f"{what} (HTTP {status}) whatever the {whatever}; check COMFYUI_URL and its "
                                      "proxy")  # fmt: skip
                return True
        return False

    async def _explain_lost_comfyui(self, message: str, *, silent_since: float | None = None) -> str:
        """The supervisor's reason (the process died, with its exit code) beats what the socket saw. A stop
        that cuts this wait short still hands the job back as the fault it is (see _stopped). ``silent_since``:
        when ComfyUI last answered the run, if it went silent (not when a transfer broke mid-stream)."""
        self._comfyui_lost = message
        self.state.set_comfyui(False)
        self._comfyui_answered_at = -math.inf
        self._silent_since = silent_since
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._aborted.wait(), ABORT_EXPLAIN_WAIT_S)
        return self._abort_reason or message

    async def _tidy_comfyui(self, prompt: Outcome) -> None:
        """Once the job is reported (its user waits for the report, not for this): delete the prompt's history
        entry and files in ComfyUI (worker/housekeeping.py). A ComfyUI that does not answer costs at most
        HOUSEKEEPING_WAIT_S and is asked again before the next job is taken."""
        try:
            async with self.deadline.bounded(), self.state.beating(self._beat_interval_s):
                if self._left_running:  # over by now (ComfyUI ran them before this prompt), or still holding it
                    left, self._left_running = self._left_running, set()
                    self._left_running |= await self.housekeeping.tidy_once_over(left, self._housekeeping_wait_s)
                if self.delivery.found_look_alikes:  # files of results' names ComfyUI did not write: not ours
                    self.housekeeping.keep_output_folder()
                self.housekeeping.check_folders(prompt.outputs, prompt.cached_nodes)
                answered = await self.housekeeping.tidy(
                    prompt.prompt_id, prompt.outputs, succeeded=prompt.ok, sent_at=prompt.written_since,
                    replays=self.delivery.take_replays(), timeout_s=self._housekeeping_wait_s,
                )  # fmt: skip
        except TimeoutError:
            log.warning("Stopping before ComfyUI's history entry of the prompt was deleted", prompt_id=prompt.prompt_id)
            return
        if answered:
            self._comfyui_answered()
        else:
            self._comfyui_answered_at = -math.inf

    @property
    def _housekeeping_wait_s(self) -> float:
        return min(self.settings.http_timeout_s, HOUSEKEEPING_WAIT_S)

    def _new_run(self, on_prompt_id: Callable[[str], None] = lambda _: None, job_id: str | None = None) -> PromptRun:
        s = self.settings
        own_folders = [folder for folder in (s.comfyui_output_dir, s.comfyui_temp_dir) if folder is not None]
        return PromptRun(
            self.comfy, self.events, timeout_s=s.job_timeout_s, timings=self.timings,
            heartbeat=self.state.beat, beating=lambda: self.state.beating(self._beat_interval_s),
            on_prompt_id=on_prompt_id, on_queued=self.housekeeping.prompt_queued,
            on_uploaded=self.housekeeping.image_uploaded, job_id=job_id, own_folders=own_folders,
        )

    def _on_prompt_id(self, prompt_id: str) -> None:
        self.state.current_prompt_id = prompt_id
        structlog.contextvars.bind_contextvars(prompt_id=prompt_id)

    async def _stopped(self, job: Job) -> Report | None:
        """The job could not finish on this worker: interrupt it (unless ComfyUI is the cause), then hand it
        back; nothing at all when the queue manager already took it back.

        A shutdown hand back (which never uses up the job's attempts) only for a stop with ComfyUI healthy;
        when ComfyUI died, hung or the interrupt failed, the job may be the cause: a fault."""
        fault = self._abort_reason or self._comfyui_lost
        if fault is None:
            unanswered = await self._interrupt()
            # The supervisor's reason for a dead ComfyUI may have come while the interrupt was failing.
            fault = self._abort_reason or unanswered
        if self._lease_lost is not None:
            if fault is None and self._prompt_run is not None:
                with contextlib.suppress(TimeoutError):
                    async with self.deadline.bounded():
                        self._prompt_over = await self._prompt_run.ended_after_interrupt()
            return None
        if fault:
            return Report(job.id, job.attempt, handback=fault, job=job)
        stopped = f"worker {self.settings.worker_id} was stopped (shutdown signal) before the job finished"
        if not self.settings.requeue_on_shutdown:
            return Report(job.id, job.attempt,
                          error=f"{stopped}; it was not resubmitted (REQUEUE_ON_SHUTDOWN=false)")
        return Report(job.id, job.attempt, handback=stopped, cause=HandBackCause.SHUTDOWN, job=job)

    async def _interrupt(self) -> str | None:
        """Stop the prompt in ComfyUI, within half of what is left before the kill (the hand back needs the
        rest). None when ComfyUI answered; otherwise why it did not."""
        if self._prompt_run is None:
            return None
        budget_s = min(self.settings.http_timeout_s, self.deadline.remaining() / 2)
        try:
            error = await asyncio.wait_for(self._prompt_run.interrupt(), budget_s)
        except TimeoutError:
            log.warning("ComfyUI did not acknowledge the interrupt in time", waited_s=round(budget_s, 2))
            error = f"no answer within {budget_s:.1f} s"
        if error is None:
            return None
        return f"worker {self.settings.worker_id} could not interrupt the prompt when it was stopped: {error}"


def _poll_failure(exc: PollError) -> str:
    """/ready's reason: what failed, never the URL or the setting (the log's "Poll failed" line names those)."""
    what = "refuses this worker's credentials" if isinstance(exc, CredentialsRefused) else "could not be polled"
    return f"queue manager {what}: no job until a poll is answered (the log's \"Poll failed\" lines say why)"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
