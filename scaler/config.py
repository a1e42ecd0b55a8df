"""Scaler configuration: flat, from the environment (and a .env file), units in the names, no I/O.

The policy's knobs are ScalingConfig's fields with a SCALER_ prefix and the same defaults. Every setting and
its meaning: docs/scaler.md.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from common.settings import (
    QUEUE_TOKEN_ENV,
    QUEUE_WORKER_TOKEN_ENV,
    BindHost,
    ConfigError,
    Credential,
    LogSettings,
    OptionalPath,
    OptionalText,
    QueueToken,
    env_name,
    quoted,
    settings_from_env,
)
from common.timespans import DAY_S
from common.urls import IN_CLEAR, encrypted_or_local, queue_token_clash, redact_url
from scaler.alerts import AlertFormat
from scaler.billing import BillingAnchor
from scaler.policy import MAX_REPLICAS_LIMIT, PRICE_RANGE, ScalingConfig, is_a_price
from scaler.providers.verda.client import DEFAULT_BASE_URL, check_deployment_name
from scaler.timetable import parse_timetable

__all__ = ["ConfigError", "ScalerSettings", "load_settings"]

DEFAULTS = ScalingConfig()
PROVIDER_KINDS = ("local", "verda", "runpod")
POLICY_FIELDS = tuple(ScalingConfig.__dataclass_fields__)
# Floors of the time settings that must be positive: below them a value is a typo, and 1e-300 would be taken
# at its word (a tick loop hammering Verda and the queue manager, a spend ledger walking 1e302 intervals).
MIN_INTERVAL_S = 1.0  # one tick reads Verda 3 times and the queue manager up to 4 times
MIN_BILLING_INTERVAL_S = 60.0  # the ledger keeps one charge per interval per replica for a day
MIN_DURATION_S = 1.0  # a wait target, a job length, a provider's start deadline or back-off
MAX_WINDOW_S = DAY_S  # the stabilization window keeps one demand sample per tick for its whole length
# Ceiling of every other duration: far past any wait, hold or back-off meant. Unbounded, a back-off of 1e12 s put a
# degraded provider's retry past the year 9999, and the health record holding it was unreadable (`status`, restart).
MAX_DURATION_S = 7 * DAY_S
# The policy settings only the in-flight rule reads: the wait-target planner (scaler.policy._plan) reads none of
# them, nor the cooldown while billing-aware; and those only the planner reads.
IN_FLIGHT_RULE_ONLY = ("idle_to_zero_s", "stabilization_window_s", "activation_max_wait_s")
WAIT_TARGET_ONLY = (
    "timetable", "prewarm_lead_s", "early_release_s", "default_job_duration_s", "replica_boot_s", "worker_drain_s",
    "victim_may_be_busy", "max_lost_work_s", "lost_work_weight",
)


def _scaler(name: str) -> str:
    return f"SCALER_{name.upper()}"


class ScalerSettings(LogSettings):
    # allow_inf_nan=False: "inf" or "nan" as an interval would stop the loop after one pass (then /health: wedged).
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        env_ignore_empty=True,
        allow_inf_nan=False,
    )

    queue_manager_url: AnyHttpUrl = Field(validation_alias="QUEUE_MANAGER_URL")
    queue_manager_token: QueueToken | None = Field(default=None, validation_alias=QUEUE_TOKEN_ENV)
    # A split queue manager's workers' token: the local backend gives it to its workers as their QUEUE_MANAGER_TOKEN;
    # the scaler's own reads never send it.
    queue_manager_worker_token: QueueToken | None = Field(default=None, validation_alias=QUEUE_WORKER_TOKEN_ENV)
    backend: Literal["verda", "local"] = Field(default="verda", validation_alias="SCALER_BACKEND")
    # Blank is unset (then refused, naming it, when Verda is driven); a secret too short to mask, refused.
    verda_client_id: OptionalText = Field(default=None, validation_alias="VERDA_CLIENT_ID")
    verda_client_secret: Credential = Field(default=None, validation_alias="VERDA_CLIENT_SECRET")
    # One name per setting across every command: the deploy reads the same two.
    verda_api_url: AnyHttpUrl = Field(default=DEFAULT_BASE_URL, validation_alias="VERDA_API_URL")
    deployment_name: str = Field(default="comfyui-worker-serverless", validation_alias="VERDA_DEPLOYMENT_NAME")
    interval_s: float = Field(default=15.0, ge=MIN_INTERVAL_S, le=3600, validation_alias="SCALER_INTERVAL_S")
    # None: SCALER_INTERVAL_S, at least 10 s (scaler.loop.tick_deadline).
    tick_deadline_s: float | None = Field(
        default=None, ge=MIN_INTERVAL_S, le=3600, validation_alias="SCALER_TICK_DEADLINE_S"
    )
    metrics_port: int = Field(default=9110, ge=0, le=65535, validation_alias="SCALER_METRICS_PORT")
    metrics_host: BindHost = Field(default="0.0.0.0", validation_alias="SCALER_METRICS_HOST")
    failure_alert_after: int = Field(default=3, ge=1, validation_alias="SCALER_FAILURE_ALERT_AFTER")
    # None (`none`): a queue manager that cannot be read holds the count for as long as it lasts.
    queue_outage_hold_s: float | None = Field(
        default=1800.0, ge=MIN_DURATION_S, le=MAX_DURATION_S, validation_alias="SCALER_QUEUE_OUTAGE_HOLD_S"
    )
    state_file: OptionalPath = Field(default=None, validation_alias="SCALER_STATE_FILE")
    local_log_dir: OptionalPath = Field(default=None, validation_alias="SCALER_LOCAL_LOG_DIR")
    # Several providers with fallback (docs/providers.md); unset: the one SCALER_BACKEND.
    providers: str | None = Field(default=None, pattern=r"^[a-z, -]+$", validation_alias="SCALER_PROVIDERS")
    local_max_replicas: int = Field(
        default=2, ge=0, le=MAX_REPLICAS_LIMIT, validation_alias="SCALER_LOCAL_MAX_REPLICAS"
    )
    local_price_per_hour: float = Field(default=0.0, ge=0, validation_alias="SCALER_LOCAL_PRICE_PER_HOUR")
    verda_max_replicas: int = Field(
        default=DEFAULTS.max_replicas, ge=0, le=MAX_REPLICAS_LIMIT, validation_alias="SCALER_VERDA_MAX_REPLICAS"
    )
    verda_price_per_hour: float | None = Field(default=None, ge=0, validation_alias="SCALER_VERDA_PRICE_PER_HOUR")
    runpod_max_replicas: int = Field(
        default=DEFAULTS.max_replicas, ge=0, le=MAX_REPLICAS_LIMIT, validation_alias="SCALER_RUNPOD_MAX_REPLICAS"
    )
    runpod_price_per_hour: float | None = Field(default=None, ge=0, validation_alias="SCALER_RUNPOD_PRICE_PER_HOUR")
    fallback_error_ticks: int = Field(default=3, ge=1, validation_alias="SCALER_FALLBACK_ERROR_TICKS")
    fallback_start_deadline_s: float = Field(
        default=600.0, ge=MIN_DURATION_S, le=MAX_DURATION_S, validation_alias="SCALER_FALLBACK_START_DEADLINE_S"
    )
    fallback_retry_s: float = Field(
        default=300.0, ge=MIN_DURATION_S, le=MAX_DURATION_S, validation_alias="SCALER_FALLBACK_RETRY_S"
    )
    fallback_retry_max_s: float = Field(
        default=3600.0, ge=MIN_DURATION_S, le=MAX_DURATION_S, validation_alias="SCALER_FALLBACK_RETRY_MAX_S"
    )
    ledger_file: OptionalPath = Field(default=None, validation_alias="SCALER_LEDGER_FILE")
    # The deploy spec RunPod pods are built from (image, env, [runpod] table); unset: verda/deployment.toml.
    deploy_spec: OptionalPath = Field(default=None, validation_alias="SCALER_DEPLOY_SPEC")
    runpod_api_key: Credential = Field(default=None, validation_alias="RUNPOD_API_KEY")
    alert_webhook_url: SecretStr | None = Field(default=None, validation_alias="SCALER_ALERT_WEBHOOK_URL")
    alert_format: AlertFormat = Field(default=AlertFormat.SLACK, validation_alias="SCALER_ALERT_FORMAT")
    alert_dry_run: bool = Field(default=False, validation_alias="SCALER_ALERT_DRY_RUN")

    # The policy (scaler.policy.ScalingConfig), same names with SCALER_ in front.
    min_replicas: int = Field(default=DEFAULTS.min_replicas, ge=0, validation_alias=_scaler("min_replicas"))
    max_replicas: int = Field(
        default=DEFAULTS.max_replicas, ge=0, le=MAX_REPLICAS_LIMIT, validation_alias=_scaler("max_replicas")
    )
    jobs_per_replica: int = Field(default=DEFAULTS.jobs_per_replica, ge=1, validation_alias=_scaler("jobs_per_replica"))
    activation_threshold: int = Field(
        default=DEFAULTS.activation_threshold, ge=0, validation_alias=_scaler("activation_threshold")
    )
    activation_max_wait_s: float = Field(
        default=DEFAULTS.activation_max_wait_s, ge=0, le=MAX_DURATION_S,
        validation_alias=_scaler("activation_max_wait_s")
    )
    stabilization_window_s: float = Field(
        default=DEFAULTS.stabilization_window_s, ge=0, le=MAX_WINDOW_S,
        validation_alias=_scaler("stabilization_window_s"),
    )
    scale_down_cooldown_s: float = Field(
        default=DEFAULTS.scale_down_cooldown_s, ge=0, le=MAX_DURATION_S,
        validation_alias=_scaler("scale_down_cooldown_s")
    )
    idle_to_zero_s: float = Field(
        default=DEFAULTS.idle_to_zero_s, ge=0, le=MAX_DURATION_S, validation_alias=_scaler("idle_to_zero_s")
    )
    billing_interval_s: float = Field(
        default=DEFAULTS.billing_interval_s, ge=MIN_BILLING_INTERVAL_S, le=MAX_DURATION_S,
        validation_alias=_scaler("billing_interval_s")
    )
    billing_aware: bool = Field(default=DEFAULTS.billing_aware, validation_alias=_scaler("billing_aware"))
    billing_anchor: BillingAnchor = Field(default=DEFAULTS.billing_anchor, validation_alias=_scaler("billing_anchor"))
    scale_down_lead_s: float = Field(
        default=DEFAULTS.scale_down_lead_s, ge=0, le=MAX_DURATION_S, validation_alias=_scaler("scale_down_lead_s")
    )
    early_release_s: float = Field(
        default=DEFAULTS.early_release_s, ge=0, le=MAX_DURATION_S, validation_alias=_scaler("early_release_s")
    )
    # None: read it from Verda's GET /container-types for the deployment's compute (local backend: the default).
    price_per_replica_hour: float | None = Field(default=None, ge=0, validation_alias=_scaler("price_per_replica_hour"))
    max_spend_per_hour: float | None = Field(default=None, ge=0, validation_alias=_scaler("max_spend_per_hour"))
    max_spend_per_day: float | None = Field(default=None, ge=0, validation_alias=_scaler("max_spend_per_day"))
    # Wait-target planning (docs/scaling-policy.md). SCALER_TARGET_WAIT_S=none: one replica per job in flight.
    target_wait_s: float | None = Field(
        default=DEFAULTS.target_wait_s, ge=MIN_DURATION_S, le=MAX_DURATION_S, validation_alias=_scaler("target_wait_s")
    )
    default_job_duration_s: float = Field(
        default=DEFAULTS.default_job_duration_s, ge=MIN_DURATION_S, le=MAX_DURATION_S,
        validation_alias=_scaler("default_job_duration_s")
    )
    replica_boot_s: float = Field(
        default=DEFAULTS.replica_boot_s, ge=0, le=MAX_DURATION_S, validation_alias=_scaler("replica_boot_s")
    )
    timetable: str = Field(default="", validation_alias=_scaler("timetable"))
    prewarm_lead_s: float = Field(
        default=DEFAULTS.prewarm_lead_s, ge=0, le=MAX_DURATION_S, validation_alias=_scaler("prewarm_lead_s")
    )
    worker_drain_s: float = Field(
        default=DEFAULTS.worker_drain_s, ge=0, le=MAX_DURATION_S, validation_alias=_scaler("worker_drain_s")
    )
    victim_may_be_busy: bool = Field(
        default=DEFAULTS.victim_may_be_busy, validation_alias=_scaler("victim_may_be_busy")
    )
    max_lost_work_s: float = Field(
        default=DEFAULTS.max_lost_work_s, ge=0, le=MAX_DURATION_S, validation_alias=_scaler("max_lost_work_s")
    )
    lost_work_weight: float = Field(
        default=DEFAULTS.lost_work_weight, ge=0, validation_alias=_scaler("lost_work_weight")
    )

    @field_validator("target_wait_s", "queue_outage_hold_s", mode="before")
    @classmethod
    def _none_means_off(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("none", "off") else value

    @field_validator("price_per_replica_hour", "local_price_per_hour", "verda_price_per_hour", "runpod_price_per_hour")
    @classmethod
    def _a_price_or_free(cls, value: float | None) -> float | None:
        if value is not None and not is_a_price(value):
            raise ValueError(PRICE_RANGE)
        return value

    @field_validator("verda_api_url")
    @classmethod
    def _credentials_encrypted(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if not encrypted_or_local(str(value)):
            raise ValueError(IN_CLEAR)
        return value

    @field_validator("deployment_name")
    @classmethod
    def _deployment_name_rule(cls, value: str) -> str:
        return check_deployment_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> ScalerSettings:
        problems = _provider_problems(self)
        if self.fallback_retry_max_s < self.fallback_retry_s:
            problems.append("SCALER_FALLBACK_RETRY_MAX_S must be >= SCALER_FALLBACK_RETRY_S")
        if self.billing_aware and self.scale_down_lead_s < self.interval_s:
            # A scale-down happens at a tick inside the lead; ticks and boundaries keep their phase (a 600 s
            # interval is a whole number of ticks), so a lead shorter than a tick can miss every boundary and the
            # in-flight rule then never releases a replica.
            problems.append(
                f"SCALER_SCALE_DOWN_LEAD_S ({self.scale_down_lead_s:g}) must be >= SCALER_INTERVAL_S "
                f"({self.interval_s:g}) while SCALER_BILLING_AWARE is on: shorter, the ticks can miss every billing "
                "boundary and replicas are never released (keep it >= 30 + SCALER_INTERVAL_S)"
            )
        if self.queue_manager_token is not None and (clash := queue_token_clash(self.queue_base_url)):
            problems.append(clash)
        if self.queue_manager_worker_token is not None and self.queue_manager_token is None:
            problems.append("QUEUE_MANAGER_WORKER_TOKEN is set and QUEUE_MANAGER_TOKEN is not: the scaler reads the "
                            "queue with QUEUE_MANAGER_TOKEN (either of the queue manager's tokens) and gives "
                            "QUEUE_MANAGER_WORKER_TOKEN to its local workers only; set QUEUE_MANAGER_TOKEN too")
        problems += budget_conflicts(self, self._price_known_at_start())
        try:
            self.scaling_config()
        except ValueError as exc:
            problems.append(_with_env_names(str(exc).removeprefix("invalid ScalingConfig: ")))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _price_known_at_start(self) -> float:
        """One replica-hour's price as far as the settings tell (a fleet: its cheapest provider's); math.inf when
        it is read from a provider at start (cli checks the budgets again then)."""
        if self.provider_names:
            prices = [getattr(self, f"{name}_price_per_hour") for name in self.provider_names if name in PROVIDER_KINDS]
            cheapest = min((price for price in prices if price is not None), default=math.inf)
            return cheapest if None not in prices or cheapest == 0 else math.inf
        if self.price_per_replica_hour is not None:
            return self.price_per_replica_hour
        return DEFAULTS.price_per_replica_hour if self.backend == "local" else math.inf

    def unread_settings(self) -> list[str]:
        """The policy settings set in the environment (or .env) that the rule chosen by SCALER_TARGET_WAIT_S does not
        read."""
        if self.target_wait_s is None:
            unread = WAIT_TARGET_ONLY
        else:
            unread = (*IN_FLIGHT_RULE_ONLY, *(("scale_down_cooldown_s",) if self.billing_aware else ()))
        return [env_name(ScalerSettings, name) for name in unread if name in self.model_fields_set]

    @property
    def provider_names(self) -> list[str]:
        """The fleet's priority list (SCALER_PROVIDERS); empty when the scaler drives SCALER_BACKEND alone."""
        return [name.strip() for name in (self.providers or "").split(",") if name.strip()]

    @property
    def queue_base_url(self) -> str:
        return str(self.queue_manager_url).rstrip("/")

    @property
    def verda_base_url(self) -> str:
        return str(self.verda_api_url).rstrip("/")

    def scaling_config(self, price_per_replica_hour: float | None = None) -> ScalingConfig:
        """The policy's configuration; ``price_per_replica_hour`` is used when the setting is unset."""
        values = {name: getattr(self, name) for name in POLICY_FIELDS}
        values["timetable"] = parse_timetable(self.timetable)
        values["price_per_replica_hour"] = next(
            (p for p in (self.price_per_replica_hour, price_per_replica_hour) if p is not None),
            DEFAULTS.price_per_replica_hour,
        )
        return ScalingConfig(**values)

    def public_summary(self) -> dict[str, object]:
        """The settings without secrets, for `status`."""
        hidden = {"queue_manager_token", "queue_manager_worker_token", "verda_client_secret", "alert_webhook_url",
                  "runpod_api_key"}
        summary = {name: getattr(self, name) for name in type(self).model_fields if name not in hidden}
        return {
            name: redact_url(str(value)) if isinstance(value, AnyHttpUrl) else str(value) if isinstance(value, Path)
            else value
            for name, value in summary.items()
        }


def _provider_problems(settings: ScalerSettings, *, credentials: bool = True) -> list[str]:
    """What is wrong with the providers, their credentials (unless ``credentials`` is False) and the alert
    webhook."""
    problems = []
    unknown = [name for name in settings.provider_names if name not in PROVIDER_KINDS]
    if unknown:
        problems.append(f"SCALER_PROVIDERS: unknown [{', '.join(map(quoted, unknown))}]; choose from "
                        f"{', '.join(PROVIDER_KINDS)}")
    if len(set(settings.provider_names)) != len(settings.provider_names):
        problems.append("SCALER_PROVIDERS: a provider is listed twice")
    if settings.alert_webhook_url is not None and not settings.alert_webhook_url.get_secret_value().startswith(
        ("https://", "http://")
    ):
        problems.append("SCALER_ALERT_WEBHOOK_URL: must be an http(s) URL")
    if not credentials:
        return problems
    if "runpod" in settings.provider_names and settings.runpod_api_key is None:
        problems.append("RUNPOD_API_KEY: required to drive RunPod (RunPod console > Settings > API Keys)")
    if "verda" in settings.provider_names or (not settings.provider_names and settings.backend == "verda"):
        problems += [
            f"{name}: required to drive Verda (Verda console > API keys)"
            for name, value in (("VERDA_CLIENT_ID", settings.verda_client_id),
                                ("VERDA_CLIENT_SECRET", settings.verda_client_secret))
            if not value
        ]
    return problems


def budget_conflicts(settings: ScalerSettings, price_per_replica_hour: float) -> list[str]:
    """The budgets (SCALER_MAX_SPEND_PER_*) that cannot pay for SCALER_MIN_REPLICAS replicas around the clock.

    The policy lets the budget win without a word: the floor's replicas are not started. An operator who sets
    both means both, so the contradiction is refused at start, naming both settings (docs/scaler.md).
    ``price_per_replica_hour`` is math.inf while Verda's price is not read yet: only a budget of 0 conflicts then.
    """
    if settings.min_replicas == 0 or price_per_replica_hour <= 0:
        return []
    problems = []
    for name, budget, hours in (("SCALER_MAX_SPEND_PER_HOUR", settings.max_spend_per_hour, 1),
                                ("SCALER_MAX_SPEND_PER_DAY", settings.max_spend_per_day, 24)):
        need = settings.min_replicas * price_per_replica_hour * hours
        if budget is None or budget >= need - 1e-9 or (math.isinf(need) and budget > 0):
            continue
        cost = "at any price above 0" if math.isinf(need) else (
            f"{settings.min_replicas} x {price_per_replica_hour:g}/h{' x 24 h' if hours == 24 else ''} = {need:.2f}"
        )
        problems.append(
            f"{name}={budget:g} cannot pay for SCALER_MIN_REPLICAS={settings.min_replicas} replicas kept running "
            f"({cost}) and would keep them from starting: lower SCALER_MIN_REPLICAS or raise {name}"
        )
    return problems


def _with_env_names(message: str) -> str:
    return re.sub(
        r"\b[a-z_]+\b", lambda m: env_name(ScalerSettings, m[0]) if m[0] in POLICY_FIELDS else m[0], message
    )


def load_settings(**overrides: object) -> ScalerSettings:
    return settings_from_env(ScalerSettings, "scaler", trust_store=True, **overrides)


# What `comfy-scaler stop` reads: which providers, how to reach and stop them, where the kill-switch file and the
# alerts go. A typo in any other setting must not keep the kill switch from stopping the bill.
KILL_SWITCH_FIELDS = frozenset({
    "backend", "providers", "verda_client_id", "verda_client_secret", "verda_api_url", "deployment_name",
    "deploy_spec", "runpod_api_key", "local_log_dir", "ledger_file", "alert_webhook_url", "alert_format",
    "alert_dry_run",
})
# Never contacted by `stop`; stands in for a missing or invalid QUEUE_MANAGER_URL.
UNUSED_QUEUE_URL = "http://127.0.0.1:9"


class _KillSwitchSettings(ScalerSettings):
    @model_validator(mode="after")
    def _consistent(self) -> _KillSwitchSettings:
        """Only the checks of the settings a kill switch reads (ScalerSettings._consistent has them all). A fleet's
        missing credentials are left to `stop_all`: the provider without them is NOT STOPPED, the others are."""
        problems = _provider_problems(self, credentials=not self.provider_names)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def load_kill_switch_settings() -> tuple[ScalerSettings, str | None]:
    """The settings for `comfy-scaler stop`, and what was wrong with the others (None: nothing).

    Every invalid setting the kill switch does not read is taken at its default; one it reads is still a
    ConfigError naming it.
    """
    try:
        return load_settings(), None
    except ConfigError as exc:
        problems = str(exc)
    field_of = {env_name(ScalerSettings, name): name for name in ScalerSettings.model_fields}
    try:
        ScalerSettings()
    except ValidationError as exc:
        invalid = {field_of.get(str(error["loc"][0]), str(error["loc"][0])) for error in exc.errors() if error["loc"]}
    except (UnicodeDecodeError, OSError):  # the .env file, not UTF-8 or unreadable, which load_settings named
        raise ConfigError(problems) from None
    else:
        invalid = set()
    overrides: dict[str, object] = {
        name: ScalerSettings.model_fields[name].get_default(call_default_factory=True)
        for name in invalid - KILL_SWITCH_FIELDS - {"queue_manager_url"}
        if name in ScalerSettings.model_fields  # else settings_from_env names it below
    }
    if "queue_manager_url" in invalid:
        overrides["queue_manager_url"] = UNUSED_QUEUE_URL
    settings = settings_from_env(_KillSwitchSettings, "kill switch", trust_store=True, **overrides)
    # What is left to print: the settings the kill switch does not read (a fleet's missing credential is its).
    read = {env_name(ScalerSettings, name) for name in KILL_SWITCH_FIELDS}
    title, *lines = problems.splitlines()
    ignored = [line for line in lines if line.strip().split(":", 1)[0] not in read]
    return settings, "\n".join([title, *ignored]) if ignored else None
