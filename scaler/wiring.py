"""From settings to running providers: one backend (SCALER_BACKEND) or a fleet (SCALER_PROVIDERS), and kill-all.

Kept apart from the CLI so the commands stay thin: ``make_provider`` builds one provider's backend,
``build_fleet`` the fleet with its prices, ledger, metrics and alerts, ``stop_all`` is `comfy-scaler stop --all`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from common.logs import error_text, scrub
from scaler.alerts import Alert, AlertBook, AlertSender
from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.config import PROVIDER_KINDS, ScalerSettings
from scaler.deploy.errors import DeployError
from scaler.deploy.runpod import backend_from_spec as runpod_backend_from_spec
from scaler.deploy.runpod import stop_backend_from_spec as runpod_stop_backend_from_spec
from scaler.deploy.spec import DEFAULT_SPEC_PATH, SpecError
from scaler.fleet import FleetBackend, Member, stop_file_present
from scaler.health_record import HealthReading, RecordedBackend, read_health
from scaler.ledger import RUNPOD_BILLING, BillingRule, CostLedger, SavedFileUnreadable
from scaler.loop import tick_deadline
from scaler.metrics import ProviderMetrics
from scaler.policy import ScalingConfig, is_a_price
from scaler.providers import Backend, LocalBackend, VerdaBackend
from scaler.providers.base import AsksForTokensAhead, BackendView, OutlivesItsStop, RunsItsReplicasHere
from scaler.providers.local import worker_environment as local_worker_environment
from scaler.providers.verda.client import VerdaClient

log = structlog.get_logger()

LOCAL_BILLING = BillingRule()  # per second; its price is what the operator says this machine costs
KILL_CONFIRM_TIMEOUT_S = 120.0  # Verda: SIGTERM, 30 s grace, then the replica leaves the list
KILL_CONFIRM_POLL_S = 5.0
KILL_SWITCH_FILE = "kill switch file"  # reported among the providers when it cannot be written


class ProviderSetupError(Exception):
    """A provider in SCALER_PROVIDERS cannot be built or priced. Scrubbed when made: the CLI prints it, and print()
    is not the log scrubber (a price list refusing the token echoed the client secret to the terminal)."""

    def __init__(self, message: str) -> None:
        super().__init__(scrub(message))


def worker_environment(settings: ScalerSettings, environ: Mapping[str, str]) -> dict[str, str]:
    """The local workers' environment (scaler.providers.local.worker_environment): their token is the split queue
    manager's worker token (QUEUE_MANAGER_WORKER_TOKEN) when the scaler has one, else the scaler's own."""
    token = settings.queue_manager_worker_token or settings.queue_manager_token
    return local_worker_environment(environ, settings.queue_base_url, token.get_secret_value() if token else None)


def make_provider(settings: ScalerSettings, name: str) -> Backend:
    if name == "local":
        try:
            return LocalBackend(worker_environment(settings, os.environ), log_dir=settings.local_log_dir)
        except OSError as exc:  # the log folder's earlier files are read at the start
            raise ProviderSetupError(f"local: SCALER_LOCAL_LOG_DIR {settings.local_log_dir} cannot be read as a "
                                     f"folder ({type(exc).__name__}: {exc.strerror or exc})") from None
    if name == "verda":
        if not (settings.verda_client_id and settings.verda_client_secret):  # `stop` of a fleet lets it through
            raise ProviderSetupError("verda: set VERDA_CLIENT_ID and VERDA_CLIENT_SECRET (Verda console > API keys)")
        client = VerdaClient(
            settings.verda_client_id, settings.verda_client_secret.get_secret_value(),
            base_url=settings.verda_base_url,
        )
        return VerdaBackend(client, settings.deployment_name)
    if name == "runpod":
        return _runpod(settings, runpod_backend_from_spec)
    raise ProviderSetupError(f"{name}: no backend for it (choose from local, verda, runpod)")


def make_stopper(settings: ScalerSettings, name: str) -> Backend:
    """The backend `comfy-scaler stop` drives: make_provider's, except RunPod's, built from the API key and the
    pods' name alone: an unset variable or a placeholder image in the deploy spec must not keep pods running."""
    if name == "runpod":
        return _runpod(settings, runpod_stop_backend_from_spec)
    return make_provider(settings, name)


def _runpod(settings: ScalerSettings, build: Callable[[Path, Mapping[str, str]], Backend]) -> Backend:
    # The settings may come from the .env file, which os.environ does not hold; QUEUE_MANAGER_URL for the spec's
    # env_from_environment, RUNPOD_API_KEY for the client, VERDA_DEPLOYMENT_NAME for the pods' names.
    environ = {"QUEUE_MANAGER_URL": settings.queue_base_url, **os.environ}
    if "deployment_name" in settings.model_fields_set:
        environ["VERDA_DEPLOYMENT_NAME"] = settings.deployment_name
    if settings.runpod_api_key is not None:
        environ["RUNPOD_API_KEY"] = settings.runpod_api_key.get_secret_value()
    try:
        return build(settings.deploy_spec or DEFAULT_SPEC_PATH, environ)
    except (DeployError, SpecError) as exc:  # SCALER_DEPLOY_SPEC missing or invalid: a message, not a traceback
        raise ProviderSetupError(f"runpod: {exc}") from None


def billing_rule(settings: ScalerSettings, name: str) -> BillingRule:
    """How the ledger charges a provider. Verda's interval and anchor are the ones the policy plans with
    (SCALER_BILLING_INTERVAL_S, SCALER_BILLING_ANCHOR): with Verda's 600 s from each start whatever they said,
    the fleet's spend, its budget caps and alerts disagreed with the single-backend scaler's (1.495 for a replica
    25 minutes into an hour's interval at 2.99/h, not 2.99)."""
    if name == "verda":
        return BillingRule(interval_s=settings.billing_interval_s, anchor=settings.billing_anchor)
    return RUNPOD_BILLING if name == "runpod" else LOCAL_BILLING


def fleet_policy_config(settings: ScalerSettings) -> ScalingConfig:
    """The policy decides how many for the whole fleet; prices and budgets are the allocator's, per provider."""
    return ScalingConfig(**{
        **{name: getattr(settings, name) for name in ScalingConfig.__dataclass_fields__
           if name not in ("price_per_replica_hour", "max_spend_per_hour", "max_spend_per_day")},
        "price_per_replica_hour": 0.0,
    })


async def look_up_price(settings: ScalerSettings, lookup: Callable[[], Awaitable[float]]) -> float:
    """A provider's price from its price list, within one tick's deadline: a price list that never answers
    must not hold the start for minutes (5 Verda attempts of 30 s)."""
    limit_s = tick_deadline(settings.interval_s, settings.tick_deadline_s)
    try:
        price = float(await asyncio.wait_for(lookup(), limit_s))
    except TimeoutError:
        raise TimeoutError(f"no answer within {limit_s:g} s (SCALER_TICK_DEADLINE_S)") from None
    if not is_a_price(price):  # NaN, inf, 1e-320 too: the budgets and the bill would be computed from it
        raise ValueError(f"the price list answered {price!r} an hour")
    return price


def price_lookup(settings: ScalerSettings, name: str, backend: Backend) -> Callable[[], Awaitable[float]] | None:
    """The provider's price list, checked, for the fleet to read again (scaler.fleet.PRICE_REFRESH_S); None when
    the operator set the price, which then holds."""
    lookup = getattr(backend, "price_per_hour", None)
    if getattr(settings, f"{name}_price_per_hour") is not None or lookup is None:
        return None
    return lambda: look_up_price(settings, lookup)


async def _price(
    settings: ScalerSettings, name: str, lookup: Callable[[], Awaitable[float]] | None, last_charged: float | None
) -> float:
    """The setting, else the provider's price list (``price_lookup``); a price list that fails falls back on the
    price the ledger last charged: refused, the whole fleet did not start and every provider's count stayed
    pinned, billed."""
    configured = getattr(settings, f"{name}_price_per_hour")
    if configured is not None:
        return float(configured)
    if lookup is None:
        raise ProviderSetupError(f"{name}: set SCALER_{name.upper()}_PRICE_PER_HOUR")
    try:
        return await lookup()
    except Exception as exc:
        if last_charged is not None:
            log.warning("provider_price_from_ledger", provider=name, price_per_hour=last_charged,
                        error=error_text(exc),
                        hint=f"the price list did not answer; set SCALER_{name.upper()}_PRICE_PER_HOUR to be sure")
            return last_charged
        raise ProviderSetupError(
            f"{name}: price lookup failed ({type(exc).__name__}: {exc}); set SCALER_{name.upper()}_PRICE_PER_HOUR"
        ) from None


async def build_fleet(
    settings: ScalerSettings,
    *,
    metrics: ProviderMetrics | None = None,
    dry_run: bool = False,
    with_alerts: bool = True,
    record_stale_after_s: float | None = None,
) -> FleetBackend:
    """The fleet of SCALER_PROVIDERS, priced (setting, else the provider's price list). Closes what it built
    when a provider cannot be set up. With ``record_stale_after_s`` (`status`) the `local` provider's workers are
    those of the running scaler's record in the ledger file, unknown once it is older than that: a local backend
    built here would start none and list none."""
    ledger = CostLedger.load(settings.ledger_file, read_only=dry_run) if settings.ledger_file else CostLedger()
    retired = retired_providers(settings, ledger)
    for name, why in retired.items():
        log.warning("provider_retired_with_replicas", provider=name, detail=why,
                    hint="driven to zero and charged until it is; list it again to keep using it")
    built: list[tuple[str, Backend]] = []
    try:
        for name in [*settings.provider_names, *retired]:
            if name == "local" and record_stale_after_s is not None:
                reading = read_health(ledger.health, time.time(), record_stale_after_s) if settings.ledger_file else (
                    HealthReading(None, "no SCALER_LEDGER_FILE: the running scaler keeps what its local workers do "
                                  "in its memory only"))
                built.append((name, RecordedBackend(reading, provider=name)))
                continue
            try:
                built.append((name, make_provider(settings, name)))
            except ProviderSetupError as exc:
                if name not in retired:
                    raise
                raise ProviderSetupError(
                    f"{exc} ({retired[name]}); or stop them: SCALER_PROVIDERS={name} comfy-scaler stop"
                ) from None
        members = []
        tick_s = settings.interval_s
        for name, backend in built:
            billing = billing_rule(settings, name)
            most = 0 if name in retired else getattr(settings, f"{name}_max_replicas")
            lookup = price_lookup(settings, name, backend)
            spec = ProviderSpec(
                name, most, await _price(settings, name, lookup, ledger.prices.get(name)),
                commit_s=billing.interval_s if not billing.per_second else tick_s,
            )
            members.append(Member(spec, backend, billing, lookup, in_process=name == "local"))
    except BaseException:
        await asyncio.gather(*(backend.aclose() for _, backend in built), return_exceptions=True)
        raise
    config = allocator_config(settings, tuple(m.spec for m in members))
    alerts = make_alerts(settings, AlertBook.from_json(ledger.alerts), dry_run=dry_run) if with_alerts else None
    return FleetBackend(members, config, ledger=ledger, ledger_file=settings.ledger_file, metrics=metrics,
                        alerts=alerts, dry_run=dry_run, stop_file=stop_file_for(settings), monotonic=boot_clock,
                        member_timeout_s=member_timeout(settings.interval_s, settings.tick_deadline_s))


async def tokens_ahead(backend: Backend, limit_s: float) -> None:
    """Verda's OAuth token asked for before the first tick, waited for up to ``limit_s``: asked by the first read,
    it made that read two answers long, and at 2 s an answer a fleet's 3.75 s cut it off (a single backend's
    read has the whole tick). A request that fails or is late is no error here: it goes on, and the read that
    needs the token reports it."""
    pending = set(backend.fetch_tokens_ahead()) if isinstance(backend, AsksForTokensAhead) else set()
    if pending:
        await asyncio.wait(pending, timeout=limit_s)


def boot_clock() -> float:
    """Seconds since boot, never stepped: the ledger's measure of a tick. Unlike time.monotonic it counts a host's
    suspension, whose time the providers billed (read as a clock step, it would not be charged)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


def member_timeout(interval_s: float, tick_deadline_s: float | None) -> float:
    """How long one call to one provider of a fleet may take. A tick reads, may write while placing, then writes:
    each provider call gets a quarter of the tick."""
    return tick_deadline(interval_s, tick_deadline_s) / 4


def allocator_config(settings: ScalerSettings, providers: tuple[ProviderSpec, ...]) -> AllocatorConfig:
    """How providers are judged (SCALER_FALLBACK_*) and capped: a fleet's, or a single backend's health alone."""
    return AllocatorConfig(
        providers=providers,
        error_ticks=settings.fallback_error_ticks,
        start_deadline_s=settings.fallback_start_deadline_s,
        retry_after_s=settings.fallback_retry_s,
        retry_max_s=settings.fallback_retry_max_s,
        max_spend_per_hour=settings.max_spend_per_hour,
        max_spend_per_day=settings.max_spend_per_day,
    )


def retired_providers(settings: ScalerSettings, ledger: CostLedger) -> dict[str, str]:
    """Providers the ledger saw running replicas on that SCALER_PROVIDERS no longer lists, each with why it is
    kept: the fleet drives them to zero (their max is 0) and charges them until then, and `stop --all` stops
    them. Left out, nothing read or wrote them again: their replicas ran, billed, for ever, and no budget saw
    them. Not `local`: its workers die with the scaler that ran them."""
    return {
        name: f"{count} replicas running at the last tick, no longer in SCALER_PROVIDERS"
        for name, count in ledger.providers_running().items()
        if name not in settings.provider_names and name in PROVIDER_KINDS and name != "local"
    }


def stop_file_for(settings: ScalerSettings) -> Path | None:
    """The kill switch a running fleet watches: ``<SCALER_LEDGER_FILE>.stopped``."""
    if settings.ledger_file is None:
        return None
    return settings.ledger_file.with_name(settings.ledger_file.name + ".stopped")


def make_alerts(settings: ScalerSettings, book: AlertBook, *, dry_run: bool = False) -> AlertSender:
    url = settings.alert_webhook_url.get_secret_value() if settings.alert_webhook_url else None
    return AlertSender(url, fmt=settings.alert_format, book=book, dry_run=dry_run or settings.alert_dry_run)


# --- kill-all ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StopResult:
    provider: str
    stopped: bool
    detail: str


def release_stop_file(settings: ScalerSettings) -> bool:
    """`comfy-scaler resume`: remove the kill switch; True when there was one."""
    stop_file = stop_file_for(settings)
    if stop_file is None or not stop_file_present(stop_file):
        return False
    stop_file.unlink()
    return True


STOP_STEPS = ("pin to 0", "pause")


async def pin_and_pause(backend: Backend, *, timeout_s: float) -> list[tuple[str, Exception]]:
    """The kill switch's two writes within ``timeout_s``, each step in its own half: each is tried even when the
    other failed or hung (Verda: either alone makes the replicas go; RunPod: the pause reads the pods again).
    The steps that failed, with why."""
    step_s = timeout_s / len(STOP_STEPS)
    failed: list[tuple[str, Exception]] = []
    for step, write in zip(STOP_STEPS, (lambda: backend.apply(0), backend.pause), strict=True):
        try:
            async with asyncio.timeout(step_s):
                await write()
        except TimeoutError:
            failed.append((step, TimeoutError(f"no answer within {step_s:g} s")))
        except Exception as exc:  # the API's errors, an answer too large or of a shape nobody expected
            failed.append((step, exc))
    return failed


async def stop_provider(name: str, backend: Backend, *, timeout_s: float, poll_s: float) -> StopResult:
    """Pin to zero, pause, then read the provider's own state until nothing is listed (or the time is up).

    Each half takes at most ``timeout_s``, whatever the API does (never answers, answers a byte at a time, asks
    for an hour's Retry-After): the kill switch always ends, saying what it could not confirm."""
    if isinstance(backend, RunsItsReplicasHere):
        return StopResult(name, False, "its workers live inside `comfy-scaler run`: stop that process (Ctrl-C)")
    failures = await pin_and_pause(backend, timeout_s=timeout_s)
    failed = "; ".join(f"{step} failed: {error_text(exc)}" for step, exc in failures)
    if len(failures) == len(STOP_STEPS):
        return StopResult(name, False, f"could not pin to 0 and pause: {failed}")
    # One write failed: nothing may run now, but the provider is not held at zero; say so, and exit 1.
    note = f", but {failed}: run the stop again" if failed else ""
    deadline = time.monotonic() + timeout_s
    # A platform may accept a stop and never carry it out (OutlivesItsStop): what it still lists half way is ended.
    terminate_at = time.monotonic() + timeout_s / 2
    terminated = ""  # which were terminated without their stop, or why they could not be
    listed: BackendView | None = None  # the last listing answered
    while True:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), poll_s)):
                listed = await backend.observe()
        except TimeoutError:
            error = "no answer to the replica list"
        except Exception as exc:
            error = error_text(exc)
        else:
            error = None
            if not listed.replicas:
                return StopResult(name, not failures, f"0 replicas, status {listed.status}{terminated}{note}")
        if time.monotonic() >= deadline:
            # What was last seen listed says more than the last call's failure alone.
            still = f"{len(listed.replicas)} replicas still listed (status {listed.status})" if listed else error
            if listed is not None and error is not None:
                still += f", then {error}"
            return StopResult(name, False, f"not confirmed after {timeout_s:g} s: {still}{terminated}{note}")
        late = listed is not None and time.monotonic() >= terminate_at  # pods listed live half way
        if late and isinstance(backend, OutlivesItsStop) and not terminated:
            terminated = await _terminate_left(backend, deadline, timeout_s / 2)
        await asyncio.sleep(poll_s)


async def _terminate_left(backend: OutlivesItsStop, deadline: float, waited_s: float) -> str:
    """Terminate the pods still live after their stop, within what is left of the kill switch's time: what to add
    to its report."""
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
            ids = await backend.terminate_live()
    except TimeoutError:
        return "; terminating the pods still live failed: no answer in time"
    except Exception as exc:
        return f"; terminating the pods still live failed: {error_text(exc)}"
    return f"; terminated without their stop (still live {waited_s:g} s after it): {', '.join(ids) or 'none'}"


def _kill_switch_ledger(settings: ScalerSettings) -> CostLedger | None:
    """The fleet's ledger for `stop --all`, which stops what it can whatever it cannot read: None without one, or
    when it cannot be read at all (logged; its retired providers and today's alerts are then not known)."""
    if not settings.ledger_file:
        return None
    try:
        return CostLedger.load(settings.ledger_file)
    except SavedFileUnreadable as exc:
        log.error("cost_ledger_unreadable", error=str(exc),
                  hint="stopping the providers listed in SCALER_PROVIDERS; a retired one still running is not seen")
        return None


async def stop_all(
    settings: ScalerSettings,
    names: Sequence[str],
    *,
    timeout_s: float = KILL_CONFIRM_TIMEOUT_S,
    poll_s: float = KILL_CONFIRM_POLL_S,
) -> list[StopResult]:
    """`comfy-scaler stop --all`: every provider at once, each confirmed from its own state. The stop file is
    written first, so a running scaler holds everything at zero too (RunPod has no pause of its own)."""
    results: list[StopResult] = []
    if settings.provider_names and (ledger := _kill_switch_ledger(settings)) is not None:
        names = [*names, *retired_providers(settings, ledger)]
    stop_file = stop_file_for(settings)
    if stop_file is not None:
        try:
            stop_file.parent.mkdir(parents=True, exist_ok=True)
            stop_file.write_text(f"stopped by comfy-scaler stop --all at {time.time():.0f}\n")
        except OSError as exc:  # a full disk must not keep the providers from being stopped
            results.append(StopResult(
                KILL_SWITCH_FILE, False, f"{stop_file} not written ({type(exc).__name__}: {exc}): a running scaler "
                "may start replicas again; stop it too"[:400],
            ))
    backends: list[tuple[str, Backend]] = []
    for name in names:
        try:
            backends.append((name, make_stopper(settings, name)))
        except ProviderSetupError as exc:
            results.append(StopResult(name, False, str(exc).removeprefix(f"{name}: ")))
        except Exception as exc:  # a deploy spec of a shape nobody checked: the other providers are still stopped
            results.append(StopResult(name, False, f"could not set it up: {error_text(exc)}"))
    try:
        results += await asyncio.gather(
            *(stop_provider(name, backend, timeout_s=timeout_s, poll_s=poll_s) for name, backend in backends)
        )
    finally:
        await asyncio.gather(*(backend.aclose() for _, backend in backends), return_exceptions=True)
    ledger = _kill_switch_ledger(settings)  # read again: a running scaler may have sent an alert meanwhile
    book = AlertBook.from_json(ledger.alerts) if ledger is not None else AlertBook()
    alerts = make_alerts(settings, book)
    try:
        stopped = [r.provider for r in results if r.stopped]
        failed = [r.provider for r in results if not r.stopped]
        alerts.raise_(Alert("kill_switch", f"kill switch used: stopped {stopped or 'none'}"
                            + (f"; NOT stopped: {failed}" if failed else ""), time.time(),
                            {"stopped": stopped, "not_stopped": failed}))
        await alerts.flush(timeout_s=30.0)
    finally:
        await alerts.aclose()
    if (ledger := _kill_switch_ledger(settings)) is not None:  # as a running scaler left it
        ledger.alerts = book.to_json()
        try:
            ledger.save(settings.ledger_file)
        except OSError as exc:
            log.error("cost_ledger_save_failed", path=str(settings.ledger_file), error=f"{type(exc).__name__}: {exc}",
                      hint="the kill switch alert may be sent again today")
    order = {name: i for i, name in enumerate(names)}
    return sorted(results, key=lambda r: order.get(r.provider, len(order)))
