"""`comfy-scaler`: run | once | status | stop | resume | simulate | deploy. A thin layer over ScalerSettings.

Exit codes: 0 done, 1 an input or the platform could not be read or written, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from common.children import keep_environment_private
from common.limits import allow_many_connections
from common.logs import configure_logging, error_text, register_secret, scrub, scrub_all
from common.settings import warn_misspelt_variables
from common.stop_signals import take_stop_signals
from common.text import escape_controls
from common.urls import redact_url, secret_url_secrets, url_secrets
from scaler.allocator import ProviderSpec
from scaler.config import ConfigError, ScalerSettings, budget_conflicts, load_kill_switch_settings, load_settings
from scaler.fleet import FleetBackend
from scaler.health_record import (
    BackendHealth,
    HealthReading,
    RecordedBackend,
    degraded_fields,
    read_health,
    reading_fields,
)
from scaler.ledger import BillingRule, SavedFileUnreadable
from scaler.loop import FAILED as APPLY_FAILED
from scaler.loop import RELEASE_QUEUE_UNREACHABLE, ScalerLoop, load_policy_state, saved_health, tick_deadline
from scaler.metrics import MetricsServer, ProviderMetrics, ScalerMetrics
from scaler.policy import Decision, PolicyState, Reason, ScalingConfig, decide
from scaler.providers import Backend, VerdaBackend
from scaler.providers.verda.client import CREDENTIALS_HINT, VerdaAPIError
from scaler.queue_status import QueueStatusReader
from scaler.wiring import (
    KILL_CONFIRM_TIMEOUT_S,
    STOP_STEPS,
    ProviderSetupError,
    allocator_config,
    boot_clock,
    build_fleet,
    fleet_policy_config,
    look_up_price,
    make_provider,
    member_timeout,
    pin_and_pause,
    release_stop_file,
    stop_all,
    tokens_ahead,
)

log = structlog.get_logger()
T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # 128 + SIGTERM
INTERRUPTED = {  # what an operator who pressed Ctrl-C needs to know
    "stop": "Replicas may still be running and billed: run `comfy-scaler stop` again and let it finish (it is "
    "bounded), or stop them in the provider's console.",
    "resume": "The providers may or may not be resumed: run `comfy-scaler resume` again.",
}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DELEGATED = ("simulate", "deploy")
VERDA_STOP_GRACE_S = 30.0  # Verda's SIGTERM-to-SIGKILL grace on a scale-down
# A running fleet saves its provider health every tick: a record older than this many ticks is not trusted.
HEALTH_RECORD_STALE_TICKS = 3
PROVIDER_KIND = {"local": "workers on this machine", "verda": "Verda containers", "runpod": "RunPod pods"}
LOCAL_ONLY_IN_RUN = {  # what each command would do with the local backend, whose workers live inside `run`
    "once": "the local backend's workers live inside `comfy-scaler run`, so one decision cannot be applied from "
    "another process: `comfy-scaler status` shows the decision, `comfy-scaler run` applies it",
    "stop": "the local backend's workers live inside `comfy-scaler run`; stop that process (Ctrl-C) to stop them",
    "resume": "the local backend is never paused: `comfy-scaler run` starts its workers as the queue needs them",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-scaler",
        description="Scale the ComfyUI workers from the queue manager's depth. Settings come from the "
        "environment (docs/scaler.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="decide and apply every SCALER_INTERVAL_S until SIGTERM/SIGINT")
    once = commands.add_parser("once", help="make one decision and apply it (for cron; set SCALER_STATE_FILE)")
    for sub in (run, once):
        sub.add_argument("--dry-run", action="store_true", help="decide and log, never write to the platform")
    status = commands.add_parser("status", help="queue, deployment, replicas and the decision it would make")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    stop = commands.add_parser("stop", help="kill switch: pin the replica count to 0 and pause the deployment")
    stop.add_argument(
        "--all", action="store_true",
        help="every provider (SCALER_PROVIDERS, else SCALER_BACKEND): pin to 0, pause, confirm nothing runs; "
        "exit 1 naming any provider not stopped",
    )
    commands.add_parser("resume", help="resume the deployment; the scaler sets the count at its next tick")
    commands.add_parser("simulate", help="compare policies on workloads (comfy-scaler simulate --help)")
    commands.add_parser("deploy", help="create or update the Verda deployment (comfy-scaler deploy --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    ignored = None
    try:
        if args.command == "stop":
            settings, ignored = load_kill_switch_settings()
        else:
            settings = load_settings()
    except ConfigError as exc:
        print(escape_controls(str(exc), keep_lines=True), file=sys.stderr)  # it may quote a variable's value
        return EXIT_USAGE
    configure_logging(settings.log_format, settings.log_level)
    # A peer's JSON may carry a lone surrogate (an escaped \\ud800) into what is printed (`status` quotes its
    # errors); no UTF-8 stream can write one, and the command ended in a traceback. Written escaped instead.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    warn_misspelt_variables(ScalerSettings)
    keep_environment_private()  # a local worker, started without the credentials, must not read them at /proc
    if ignored:
        print(f"{ignored}\nstop: going on: the kill switch reads none of those; fix them before `run` or `resume`.",
              file=sys.stderr)
    for secret in (settings.queue_manager_token, settings.queue_manager_worker_token, settings.verda_client_secret,
                   settings.runpod_api_key):
        if secret is not None:
            register_secret(secret.get_secret_value())
    if settings.alert_webhook_url is not None:
        for credential in secret_url_secrets(settings.alert_webhook_url.get_secret_value()):
            register_secret(credential)
    for credential in url_secrets(settings.queue_base_url):
        register_secret(credential)
    if settings.provider_names and args.command == "once":
        print("once: a fleet (SCALER_PROVIDERS) keeps provider health between ticks: use `comfy-scaler run`",
              file=sys.stderr)
        return EXIT_USAGE
    if args.command == "stop" and (args.all or settings.provider_names):
        command = _stop_all
    elif settings.backend == "local" and not settings.provider_names and args.command in ("once", "stop", "resume"):
        print(f"{args.command}: {LOCAL_ONLY_IN_RUN[args.command]}", file=sys.stderr)
        return EXIT_USAGE
    else:
        command = {"run": _run, "once": _once, "status": _status, "stop": _stop, "resume": _resume}[args.command]
    # `run` stops cleanly on SIGTERM itself; the others say what may be left undone. Only the main thread may
    # set a handler (an in-process caller may run main() in another).
    previous = None
    if command is not _run and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return asyncio.run(command(settings, args))
    except (ProviderSetupError, SavedFileUnreadable) as exc:  # a price list's error among them
        print(f"{args.command}: {escape_controls(str(exc), keep_lines=True)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:  # Ctrl-C, or a SIGTERM (Terminated), while a provider is slow to answer
        print(f"{args.command}: interrupted. {INTERRUPTED.get(args.command, '')}".rstrip(), file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a `timeout`, a process manager) during a command that does not stop by itself. A
    KeyboardInterrupt, as asyncio lets only those (and SystemExit) out of a callback it is running."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def _delegate(command: str, rest: list[str]) -> int:
    if command == "simulate":
        from scaler.simulator.cli import simulate_main

        return simulate_main(rest)
    from scaler.deploy.command import main as deploy_main

    return deploy_main(rest)


# --- wiring -----------------------------------------------------------------------------------------------


def make_backend(settings: ScalerSettings) -> Backend:
    return make_provider(settings, settings.backend)


def make_queue_reader(settings: ScalerSettings) -> QueueStatusReader:
    token = settings.queue_manager_token.get_secret_value() if settings.queue_manager_token else None
    return QueueStatusReader(settings.queue_base_url, token=token)


@asynccontextmanager
async def _opened(
    settings: ScalerSettings, *, metrics: ScalerMetrics | None = None, dry_run: bool = False,
    with_alerts: bool = False, single: Backend | None = None, record_stale_after_s: float | None = None,
) -> AsyncIterator[tuple[Backend, QueueStatusReader]]:
    """The queue reader and the backend (a fleet, else ``single`` when given, else the one SCALER_BACKEND names);
    ``record_stale_after_s``: a fleet's `local` workers as the running scaler recorded them (build_fleet)."""
    async with AsyncExitStack() as stack:
        queue = make_queue_reader(settings)
        stack.push_async_callback(queue.aclose)
        if settings.provider_names:
            provider_metrics = ProviderMetrics(metrics.registry) if metrics is not None else None
            backend: Backend = await build_fleet(
                settings, metrics=provider_metrics, dry_run=dry_run, with_alerts=with_alerts,
                record_stale_after_s=record_stale_after_s,
            )
            stack.push_async_callback(backend.aclose)
            # A fleet's provider call gets a quarter of the tick: the first read's token is asked for now.
            await tokens_ahead(backend, member_timeout(settings.interval_s, settings.tick_deadline_s))
        else:
            backend = single or make_backend(settings)
            stack.push_async_callback(backend.aclose)
        yield backend, queue


@dataclass(frozen=True)
class Pricing:
    config: ScalingConfig
    source: str  # "setting" | "verda" | "default" | "per provider"
    error: str | None = None


async def resolve_pricing(settings: ScalerSettings, backend: Backend) -> Pricing:
    """The policy's config with its price: the setting, else Verda's /container-types, else the default.
    A fleet prices each provider itself (the policy only counts)."""
    if isinstance(backend, FleetBackend):
        return Pricing(fleet_policy_config(settings), "per provider")
    if settings.price_per_replica_hour is not None:
        return Pricing(settings.scaling_config(), "setting")
    if not isinstance(backend, VerdaBackend):
        return Pricing(settings.scaling_config(), "default")
    try:
        price = await look_up_price(settings, backend.price_per_hour)
    except Exception as exc:  # the API's errors, and answers of a shape nobody expected (a dict for a list)
        # Scrubbed before the cut: a secret across it would keep its first part.
        return Pricing(settings.scaling_config(), "default", error=error_text(exc))
    return Pricing(settings.scaling_config(price), "verda")


def refuse_budget_conflicts(settings: ScalerSettings, backend: Backend, pricing: Pricing) -> bool:
    """True, having said why on stderr, when the budgets cannot pay for SCALER_MIN_REPLICAS at the price now
    known (a fleet: its cheapest provider's)."""
    if isinstance(backend, FleetBackend):
        # A provider that may hold no replica (one taken out of SCALER_PROVIDERS, being drained) pays for none.
        price = min((m.spec.price_per_hour for m in backend.members.values() if m.spec.max_replicas > 0),
                    default=0.0)
    else:
        price = pricing.config.price_per_replica_hour
    conflicts = budget_conflicts(settings, price)
    if conflicts:
        log.error("budget_below_min_replicas", price_per_replica_hour=price, problems=conflicts)
        print("Invalid scaler configuration:\n" + "\n".join(f"  {line}" for line in conflicts), file=sys.stderr)
    return bool(conflicts)


async def _usable_pricing(settings: ScalerSettings, backend: Backend) -> Pricing | int:
    """The pricing ``run`` and ``once`` decide with; or their exit code, having said why, when the price is not
    known or the budgets cannot pay for SCALER_MIN_REPLICAS at it."""
    pricing = await resolve_pricing(settings, backend)
    if pricing.error:
        log.error("price_lookup_failed", error=pricing.error, hint="set SCALER_PRICE_PER_REPLICA_HOUR")
        return EXIT_FAILED
    if refuse_budget_conflicts(settings, backend, pricing):
        return EXIT_USAGE
    _warn_if_spend_forgotten(settings)
    _warn_if_settings_unread(settings)
    return pricing


def _warn_if_spend_forgotten(settings: ScalerSettings) -> None:
    """The daily budget reads the spend of the last 24 h; kept in memory only, a restart forgets it and the
    budget is spent again (a $20 budget, restarted after $13.42: $24.92 within two hours)."""
    if settings.provider_names:
        kept_in, where = settings.ledger_file, "SCALER_LEDGER_FILE"
    else:
        kept_in, where = settings.state_file, "SCALER_STATE_FILE"
    if settings.max_spend_per_day is not None and kept_in is None:
        log.warning("budget_spend_not_kept", setting=where,
                    hint=f"SCALER_MAX_SPEND_PER_DAY counts the last 24 h of spend: set {where}, or a restart forgets "
                    "the day's spend and the budget can be spent again")


def _warn_if_settings_unread(settings: ScalerSettings) -> None:
    """A setting the rule in use does not read did nothing, unsaid: SCALER_IDLE_TO_ZERO_S=1800 set to keep a replica
    warm, it went at its billing boundary all the same."""
    if settings.target_wait_s is None:
        hint = ("the in-flight rule (SCALER_TARGET_WAIT_S=none) does not read it: only wait-target planning does "
                "(set SCALER_TARGET_WAIT_S, with SCALER_JOBS_PER_REPLICA=1); to keep replicas warm with the in-flight "
                "rule set SCALER_MIN_REPLICAS")
    else:
        hint = ("the wait-target planner does not read it: a replica the queue does not need leaves at its billing "
                "boundary (or up to SCALER_EARLY_RELEASE_S before it, at once if not billing-aware); to keep replicas "
                "warm set SCALER_MIN_REPLICAS or SCALER_TIMETABLE, or set SCALER_TARGET_WAIT_S=none for the in-flight "
                "rule, which reads it")
    for name in settings.unread_settings():
        log.warning("setting_ignored", setting=name, target_wait_s=settings.target_wait_s, hint=hint)


def _platform_error(exc: Exception) -> str:
    """What went wrong, for stderr: without a secret the provider may have echoed back (print is not scrubbed),
    nor a control character the terminal would obey."""
    if isinstance(exc, VerdaAPIError) and exc.status == 403:  # a 401 says so itself
        return escape_controls(scrub(f"{exc} {CREDENTIALS_HINT}"))
    if isinstance(exc, VerdaAPIError) and exc.status == 404:
        return escape_controls(scrub(f"{exc} (check VERDA_DEPLOYMENT_NAME)"))
    return escape_controls(scrub(f"{type(exc).__name__}: {exc}"))


def _load_state(settings: ScalerSettings, *, dry_run: bool) -> PolicyState:
    billing = BillingRule(interval_s=settings.billing_interval_s, anchor=settings.billing_anchor)
    if not settings.state_file:
        return PolicyState()
    return load_policy_state(settings.state_file, billing, read_only=dry_run)


# --- commands ---------------------------------------------------------------------------------------------


async def _run(settings: ScalerSettings, args: argparse.Namespace) -> int:
    allow_many_connections()  # the metrics server lets as many wait as the worker's health server does
    metrics = ScalerMetrics()
    server = MetricsServer(metrics, host=settings.metrics_host, port=settings.metrics_port)
    # Set first: a SIGTERM while the price is looked up ends the run as one at a tick does (before, it killed it).
    # Only the main thread may set a handler (an in-process caller may run main() in another).
    stop = asyncio.Event()
    event_loop = asyncio.get_running_loop()
    signals = STOP_SIGNALS if threading.current_thread() is threading.main_thread() else ()
    if signals:
        take_stop_signals(stop.set, signals)
    try:
        async with _opened(settings, metrics=metrics, dry_run=args.dry_run, with_alerts=True) as (backend, queue):
            return await _run_loop(settings, args, backend, queue, metrics, server, stop)
    finally:
        for sig in signals:
            event_loop.remove_signal_handler(sig)


async def _run_loop(
    settings: ScalerSettings,
    args: argparse.Namespace,
    backend: Backend,
    queue: QueueStatusReader,
    metrics: ScalerMetrics,
    server: MetricsServer,
    stop: asyncio.Event,
) -> int:
    pricing = await _unless_stopped(stop, _usable_pricing(settings, backend))
    if pricing is None:
        log.info("scaler_stopped", desired=None, hint="stopped while the price was looked up, before the first tick")
        return EXIT_OK
    if isinstance(pricing, int):
        return pricing
    config = pricing.config
    if config.billing_aware and config.scale_down_lead_s < VERDA_STOP_GRACE_S + settings.interval_s:
        log.warning(
            "scale_down_lead_too_short",
            scale_down_lead_s=config.scale_down_lead_s,
            hint=f"a billing-aware scale-down can miss the boundary: make SCALER_SCALE_DOWN_LEAD_S >= "
            f"{VERDA_STOP_GRACE_S:.0f} + SCALER_INTERVAL_S",
        )
    loop = _scaler_loop(settings, config, backend, queue, dry_run=args.dry_run, metrics=metrics)
    if isinstance(backend, FleetBackend) and backend.alerts is not None:
        backend.alerts.start()
    if settings.metrics_port:
        try:
            await server.start()
        # The port is taken, the host is not one of this machine's addresses, or no host name at all (UnicodeError:
        # "a..b", a label over 63 characters).
        except (OSError, UnicodeError) as exc:
            log.error("metrics_server_failed", host=settings.metrics_host, port=settings.metrics_port,
                      error=f"{type(exc).__name__}: {exc}",
                      hint="check SCALER_METRICS_HOST and SCALER_METRICS_PORT (SCALER_METRICS_PORT=0: no metrics)")
            return EXIT_FAILED
    try:
        await loop.run(stop)
    finally:
        await server.stop()
    if isinstance(backend, FleetBackend):
        backend.record_stopped()  # its `local` workers are stopped on the way out (LocalBackend.aclose)
    elif settings.backend == "local":
        loop.record_stopped()
    return EXIT_OK


async def _unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result; None, ``work`` cancelled, when ``stop`` is set first."""
    task = asyncio.create_task(work)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waited in (task, stopped):
            waited.cancel()
        await asyncio.wait({task, stopped})
    return None if task.cancelled() else task.result()


async def _once(settings: ScalerSettings, args: argparse.Namespace) -> int:
    async with _opened(settings) as (backend, queue):
        pricing = await _usable_pricing(settings, backend)
        if isinstance(pricing, int):
            return pricing
        loop = _scaler_loop(settings, pricing.config, backend, queue, dry_run=args.dry_run)
        decision = await loop.tick()
    unread = decision.reason in (Reason.HOLD_OBSERVATION_FAILED, RELEASE_QUEUE_UNREACHABLE)
    return EXIT_FAILED if unread or loop.last_apply == APPLY_FAILED else EXIT_OK


def _scaler_loop(
    settings: ScalerSettings, config: ScalingConfig, backend: Backend, queue: QueueStatusReader, *, dry_run: bool,
    metrics: ScalerMetrics | None = None,
) -> ScalerLoop:
    """The loop `run` and `once` drive, with the state the last run saved. A single backend's health is judged
    as a fleet's providers are (SCALER_FALLBACK_*), and only shown."""
    backend_health = None
    if not isinstance(backend, FleetBackend):
        spec = ProviderSpec(settings.backend, config.max_replicas, config.price_per_replica_hour)
        backend_health = BackendHealth(settings.backend, allocator_config(settings, (spec,)))
    return ScalerLoop(
        config, backend, queue,
        monotonic=boot_clock, interval_s=settings.interval_s, tick_deadline_s=settings.tick_deadline_s,
        dry_run=dry_run, metrics=metrics, failure_alert_after=settings.failure_alert_after,
        state=_load_state(settings, dry_run=dry_run), state_file=settings.state_file,
        queue_outage_hold_s=settings.queue_outage_hold_s, backend_health=backend_health,
    )


async def _status(settings: ScalerSettings, args: argparse.Namespace) -> int:
    tick_s = max(settings.interval_s, tick_deadline(settings.interval_s, settings.tick_deadline_s))
    stale_after_s = HEALTH_RECORD_STALE_TICKS * tick_s
    reading = None if settings.provider_names else _saved_reading(settings, time.time(), stale_after_s)
    # The local workers live in `comfy-scaler run`: shown as it last read them, not as a backend built here.
    recorded = RecordedBackend(reading) if reading is not None and settings.backend == "local" else None
    async with _opened(settings, dry_run=True, single=recorded, record_stale_after_s=stale_after_s) as (
        backend, queue
    ):
        # The price does not change what is read: both at once, so silent peers cost one deadline, not two.
        loop = ScalerLoop(settings.scaling_config(), backend, queue, dry_run=True, interval_s=settings.interval_s,
                          tick_deadline_s=settings.tick_deadline_s, state=_load_state(settings, dry_run=True))
        pricing, observation = await asyncio.gather(resolve_pricing(settings, backend), loop.observe())
        decision = decide(pricing.config, loop.state, observation)
        fleet = None
        if isinstance(backend, FleetBackend):
            fleet = backend.status_report(observation.now, stale_after_s=stale_after_s)
    report = _status_report(settings, loop, decision, pricing, observation.now)
    if reading is not None:
        report["health"] = {**reading_fields(reading, observation.now), "backend": settings.backend,
                            **degraded_fields(reading, settings.backend, observation.now)}
        if recorded is not None and loop.last_view is not None:
            report["deployment"]["read_at"] = report["health"]["recorded_at"]
            report["deployment"]["read_age_s"] = report["health"]["age_s"]
    if fleet is not None:
        report["fleet"] = fleet
        # One deployment at the policy's price is the single backend's view: a fleet's are its providers'.
        report["deployment"]["backend"] = "fleet"
        report["deployment"]["providers"] = [
            {"name": name, "kind": PROVIDER_KIND.get(name, name), "price_per_hour": row["price_per_hour"]}
            for name, row in fleet["providers"].items()
        ]
        report["price_per_replica_hour"] = None
    report = scrub_all(report)  # print() is not the log scrubber: a provider may echo a secret in its error
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_status(_controls_escaped(report))
    return EXIT_FAILED if observation.failed else EXIT_OK


def _saved_reading(settings: ScalerSettings, now: float, stale_after_s: float) -> HealthReading:
    """A single backend's health (and read) as the running scaler saved it in SCALER_STATE_FILE (its workers and its
    memory are in that process: the `local` backend's crash-looping workers are invisible to this one)."""
    if settings.state_file is None:
        return HealthReading(None, "no SCALER_STATE_FILE: the running scaler keeps its backend's health in its "
                             "memory only")
    return read_health(saved_health(settings.state_file), now, stale_after_s, "SCALER_STATE_FILE")


async def _stop(settings: ScalerSettings, args: argparse.Namespace) -> int:
    async with _opened(settings) as (backend, _):
        failures = await pin_and_pause(backend, timeout_s=KILL_CONFIRM_TIMEOUT_S)
    for step, exc in failures:
        print(f"stop failed: {step}: {_platform_error(exc)}", file=sys.stderr)
    if failures:
        done = [step for step in STOP_STEPS if step not in dict(failures)]
        print(f"{settings.deployment_name}: {'done: ' + done[0] if done else 'neither step went through'}: the "
              "replicas may still run; run comfy-scaler stop again or pause the deployment in Verda's console",
              file=sys.stderr)
        return EXIT_FAILED
    log.warning("kill_switch_engaged", deployment=settings.deployment_name)
    print(
        f"{settings.deployment_name}: replica count pinned to 0 and deployment paused. A running scaler now only "
        "warns. Undo with: comfy-scaler resume"
    )
    return EXIT_OK


async def _stop_all(settings: ScalerSettings, args: argparse.Namespace) -> int:
    names = settings.provider_names or [settings.backend]
    results = await stop_all(settings, names, timeout_s=KILL_CONFIRM_TIMEOUT_S)
    for result in results:
        mark = "stopped" if result.stopped else "NOT STOPPED"
        print(f"{result.provider}: {mark}: {escape_controls(scrub(result.detail))}",
              file=sys.stdout if result.stopped else sys.stderr)
    stopped = [r.provider for r in results if r.stopped]  # the retired providers too, each as it went
    failed = [r.provider for r in results if not r.stopped]
    if failed:
        log.error("kill_switch_incomplete", stopped=stopped, not_stopped=failed)
        print(f"stop --all: could not stop {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    log.warning("kill_switch_engaged", stopped=stopped)
    print("every provider pinned to 0 and paused; nothing is running. Undo with: comfy-scaler resume")
    return EXIT_OK


async def _resume(settings: ScalerSettings, args: argparse.Namespace) -> int:
    # The providers first, the kill switch file after: while it exists a running fleet writes nothing, so it
    # cannot place a count on Verda between this resume's read of "paused" and its pin to 0 (which would undo it).
    failed = None
    try:
        async with _opened(settings) as (backend, _):
            try:
                async with asyncio.timeout(KILL_CONFIRM_TIMEOUT_S):  # an API that drips its answer must not hold it
                    await backend.resume()
            except TimeoutError:
                failed = (f"resume failed: no answer within {KILL_CONFIRM_TIMEOUT_S:g} s: the deployment may or may "
                          "not be resumed; run comfy-scaler resume again")
            except Exception as exc:  # the API's errors, FleetStopError, an answer too large or of an odd shape
                failed = f"resume failed: {_platform_error(exc)}"
    except ProviderSetupError as exc:  # a price list down: a running fleet, which has its prices, still resumes
        failed = f"resume failed: {escape_controls(str(exc), keep_lines=True)}"
    try:
        released = release_stop_file(settings)
    except OSError as exc:
        print(f"resume failed: cannot remove the kill switch {exc.filename}: {exc.strerror or exc}. Remove it "
              "yourself, then run comfy-scaler resume again; while it exists a running scaler keeps every "
              "provider at zero.", file=sys.stderr)
        return EXIT_FAILED
    if released:  # a provider whose resume failed above is asked again at every tick of a running fleet
        print("kill switch removed: a running scaler resumes every provider at its next tick")
    if failed:
        print(failed, file=sys.stderr)
        return EXIT_FAILED
    log.info("kill_switch_released", deployment=settings.deployment_name)
    print(
        f"{settings.deployment_name}: resumed. The scaler sets the replica count at its next tick"
        + ("." if settings.provider_names else " (or run: comfy-scaler once).")  # `once` refuses a fleet
    )
    return EXIT_OK


# --- status output ----------------------------------------------------------------------------------------


def _status_report(
    settings: ScalerSettings,
    loop: ScalerLoop,
    decision: Decision,
    pricing: Pricing,
    now: float,
) -> dict[str, Any]:
    queue: dict[str, Any] = {"url": redact_url(settings.queue_base_url)}
    queue.update(asdict(loop.last_queue) if loop.last_queue else {"error": decision.details.get("queue_error")})
    deployment: dict[str, Any] = {"backend": settings.backend, "name": settings.deployment_name}
    replicas: list[dict[str, Any]] = []
    if loop.last_view is not None:
        deployment["status"] = loop.last_view.status
        deployment["ready"] = loop.last_view.ready
        if loop.last_view.bounds is not None:
            deployment["min_replica_count"], deployment["max_replica_count"] = loop.last_view.bounds
        replicas = [
            {
                "id": r.id,
                "started_at": datetime.fromtimestamp(r.started_at, UTC).isoformat(),
                "age_s": round(now - r.started_at, 1),
            }
            for r in loop.last_view.replicas
        ]
    else:
        deployment["error"] = decision.details.get("verda_error")
    return {
        "queue": queue,
        "deployment": deployment,
        "replicas": replicas,
        "decision": {
            "desired": decision.desired,
            "current": decision.current,
            "reason": decision.reason,
            "changed": decision.changed,
            "details": decision.details,
        },
        "price_per_replica_hour": pricing.config.price_per_replica_hour,
        "price_source": pricing.source,
        "price_error": pricing.error,
        "settings": settings.public_summary(),
        "checked_at": datetime.fromtimestamp(now, UTC).isoformat(),
    }


def _controls_escaped(value: Any) -> Any:
    """``value`` with every string in it escape_controls'd, however deep: rich's escape() handles markup only, and
    a peer's ESC sequence (in an error, a status, an id) retitled or cleared the terminal."""
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, dict):
        return {_controls_escaped(key): _controls_escaped(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(map(_controls_escaped, value))
    return value


def _print_status(report: dict[str, Any]) -> None:
    console = Console()
    overview = Table(title="comfy-scaler status", show_header=False)
    overview.add_column(style="bold")
    overview.add_column(overflow="fold")  # a URL or an error longer than the terminal goes on, not `…`
    queue, deployment, decision = report["queue"], report["deployment"], report["decision"]
    if "error" in queue:
        overview.add_row("queue", f"[red]unreadable: {escape(queue['error'])}[/red]")
    else:
        overview.add_row("queue",
                         f"{queue['pending_jobs']} pending, {queue['running_jobs']} running ({escape(queue['url'])})")
    if "error" in deployment:
        overview.add_row("deployment",
                         f"[red]{escape(deployment['name'])}: unreadable: {escape(deployment['error'])}[/red]")
    else:
        pinned = ""
        if "min_replica_count" in deployment:
            pinned = f", min/max {deployment['min_replica_count']}/{deployment['max_replica_count']}"
        where = escape(f"{deployment['name']} ({deployment['backend']})")
        read = (f" (from `comfy-scaler run`'s record at {deployment['read_at']}, {deployment['read_age_s']} s ago)"
                if "read_age_s" in deployment else "")
        overview.add_row("deployment", f"{where}: {escape(str(deployment['status']))}{pinned}{read}")
    for provider in deployment.get("providers", ()):
        overview.add_row(escape(f"  {provider['name']}"), escape(f"{provider['kind']}, {provider['price_per_hour']}/h"))
    if "error" in deployment:
        overview.add_row("replicas", "[red]unknown[/red] (see the deployment line)")
    else:
        ready = "" if deployment.get("ready") is None else f" ({deployment['ready']} ready)"
        overview.add_row("replicas", f"{len(report['replicas'])}{ready}{_not_counted(report.get('fleet'))}")
    verb = "change" if decision["changed"] else "keep"
    overview.add_row("decision", f"{verb} {decision['current']} → {decision['desired']}: {escape(decision['reason'])}")
    overview.add_row("why", escape(", ".join(f"{k}={v}" for k, v in decision["details"].items() if v is not None)))
    price = report["price_source"] if report["price_per_replica_hour"] is None else (
        f"{report['price_per_replica_hour']}/h ({report['price_source']})")
    if report["price_error"]:
        price += f" [yellow]lookup failed: {escape(report['price_error'])}[/yellow]"
    overview.add_row("price", price)
    console.print(overview)
    if "fleet" in report:
        _print_fleet(console, report["fleet"])
    else:
        _print_health(console, report["health"], {report["health"]["backend"]: report["health"]})
    if report["replicas"]:
        table = Table(title="replicas")
        for column in ("id", "started_at", "age_s"):
            table.add_column(column)
        for replica in report["replicas"]:
            table.add_row(escape(replica["id"]), replica["started_at"], str(replica["age_s"]))
        _print_uncut(console, table, [
            f"  [bold]{escape(r['id'])}[/bold]: started_at {r['started_at']}, age_s {r['age_s']}"
            for r in report["replicas"]
        ])


def _print_fleet(console: Console, fleet: dict[str, Any]) -> None:
    if fleet["kill_switch"]:
        console.print(f"[bold red]kill switch on[/bold red] ({escape(fleet['kill_switch'])}): a running scaler holds "
                      "every provider at 0. Undo with: comfy-scaler resume")
    providers = Table(title="providers (cheapest first is preferred)")
    for column in ("provider", "price/h", "billing", "max", "live", "ready", "status", "read", "degraded"):
        providers.add_column(column)
    for name, row in fleet["providers"].items():
        providers.add_row(escape(name), f"{row['price_per_hour']:.2f}", row["billing"], str(row["max_replicas"]),
                          _count(row["live"]), _count(row["ready"]), _provider_status(row), _read_when(row),
                          escape(row["degraded"] or ""))
    _print_uncut(console, providers, [
        f"  [bold]{escape(name)}[/bold]: status {_provider_status(row)}, live {_count(row['live'])}, "
        f"ready {_count(row['ready'])}, read {_read_when(row)}; {row['price_per_hour']:.2f}/h, "
        f"max {row['max_replicas']}, billing {row['billing']}"
        + (f"; degraded {escape(row['degraded'])}" if row["degraded"] else "")
        for name, row in fleet["providers"].items()
    ])
    for name, row in fleet["providers"].items():
        if row["live"] is None:
            console.print(f"[yellow]+ unknown on {escape(name)} (not counted in the decision above)[/yellow]: "
                          f"{escape(row['error'] or 'not read')}", soft_wrap=True)
    _print_health(console, fleet["health"], fleet["providers"])
    spend = Table(title="billed cost (ledger)")
    for column in ("provider", "last hour", "last 24 h", "today (UTC)"):
        spend.add_column(column)
    for name, windows in fleet["spend"].items():
        spend.add_row(name, *(f"{windows[w]:.2f}" for w in ("last_hour", "last_day", "today")))
    console.print(spend)


def _print_uncut(console: Console, table: Table, lines: list[str]) -> None:
    """``table`` when the terminal is wide enough for all of its cells; else its title and ``lines``, one per row: a
    narrow terminal cut the cells (`healt…`, `unkno…`, a replica's id)."""
    if Measurement.get(console, console.options.update_width(10_000), table).maximum <= console.width:
        console.print(table)
    else:
        console.print(f"[italic]{table.title}[/italic]")
        for line in lines:
            console.print(line)


def _count(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def _provider_status(row: dict[str, Any]) -> str:
    """Why a provider was not read is said below the table, on one line: in this column it took 25 lines."""
    if row["live"] is None:
        return "[red]unknown[/red]"
    return escape(row["status"]) if row["error"] is None else f"[red]unreadable: {escape(row['error'])}[/red]"


def _read_when(row: dict[str, Any]) -> str:
    """When the row was read: by this command, or (the `local` workers) by `comfy-scaler run`, from its record."""
    if row["live"] is None:
        return "-"
    return "now" if row.get("read_age_s") is None else f"{row['read_age_s']} s ago"


def _not_counted(fleet: dict[str, Any] | None) -> str:
    """The providers whose replicas the count beside it leaves out: none of them could be read."""
    unread = [name for name, row in (fleet or {}).get("providers", {}).items() if row["live"] is None]
    return f" + unknown on {', '.join(unread)} (not counted)" if unread else ""


def _print_health(console: Console, health: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    """Which providers (or the one backend) the running scaler holds degraded, from its record; ``rows``: each
    provider's degraded_fields."""
    if health["known"]:
        console.print(f"degraded: as the running scaler saved it at {health['recorded_at']} ({health['age_s']} s ago)"
                      + ("" if any(row["degraded"] for row in rows.values()) else ": none"))
        for name, row in rows.items():
            if row["degraded"]:
                wait = f"in {row['retry_in_s']} s" if row["retry_in_s"] else "due now"
                until = f"; back-off until {row['retry_at']} ({wait})" if row["retry_at"] else ""
                console.print(escape(f"  {name}: {row['degraded']}: {row['degraded_detail'] or 'no detail'}{until}"),
                              soft_wrap=True)
    else:
        console.print(f"[yellow]degraded: unknown[/yellow]: {escape(health['unknown'])}. The running scaler's log "
                      "(`Provider degraded`) and /metrics (comfy_scaler_provider_degraded) say it.")


if __name__ == "__main__":
    sys.exit(main())
