"""Worker configuration: flat, from the environment (and a .env file), units in the names, no I/O."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

from pydantic import AnyHttpUrl, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from common.identifiers import Identifier
from common.settings import (
    QUEUE_TOKEN_ENV,
    QUEUE_WORKER_TOKEN_ENV,
    BindHost,
    LogSettings,
    OptionalPath,
    OptionalSecret,
    QueueToken,
    RequiredPath,
    settings_from_env,
)
from common.timespans import DAY_S, WEEK_S
from common.urls import queue_token_clash, url_secrets

QUEUE_MANAGERS_VARIABLE_ALONE = (
    "QUEUE_MANAGER_WORKER_TOKEN is set and QUEUE_MANAGER_TOKEN is not: the worker sends QUEUE_MANAGER_TOKEN only, "
    "so it would poll with no token and be refused (401). Put the queue manager's worker token in QUEUE_MANAGER_TOKEN"
)
# Floors no operator needs to go below (the project's own tests go down to them). Below, 1e-320 was taken at its
# word: an idle worker polled the queue manager nonstop, a held job was heartbeated nonstop, and every request,
# job or wait for ComfyUI timed out before any answer could come.
MIN_POLL_INTERVAL_S = 0.01
MIN_HEARTBEAT_S = 0.05  # worker.lease.MIN_INTERVAL_S: the shortest beat a short lease gets
MIN_TIMEOUT_S = 0.1


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class WorkerSettings(LogSettings):
    # allow_inf_nan=False: "inf" or "nan" in a duration would stop a loop after one pass, or never end a wait.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True, allow_inf_nan=False
    )

    queue_manager_url: AnyHttpUrl = Field(validation_alias="QUEUE_MANAGER_URL")
    queue_manager_token: QueueToken | None = Field(default=None, validation_alias=QUEUE_TOKEN_ENV)
    # The queue manager's variable, never sent: read only to refuse a worker given it in place of
    # QUEUE_MANAGER_TOKEN, which would poll with no token and be refused.
    queue_manager_worker_token: OptionalSecret = Field(
        default=None, validation_alias=QUEUE_WORKER_TOKEN_ENV, exclude=True
    )
    comfyui_url: AnyHttpUrl = Field(default="http://127.0.0.1:8188", validation_alias="COMFYUI_URL")
    comfyui_output_dir: OptionalPath = Field(default=None, validation_alias="COMFYUI_OUTPUT_DIR")
    comfyui_temp_dir: OptionalPath = Field(default=None, validation_alias="COMFYUI_TEMP_DIR")
    comfyui_input_dir: OptionalPath = Field(default=None, validation_alias="COMFYUI_INPUT_DIR")
    worker_id: Identifier = Field(default_factory=default_worker_id, validation_alias="WORKER_ID")
    poll_interval_s: float = Field(
        default=2.0, ge=MIN_POLL_INTERVAL_S, le=DAY_S, validation_alias="WORKER_POLL_INTERVAL"
    )
    serverless_mode: bool = Field(default=False, validation_alias="SERVERLESS_MODE")
    # 0 = never: the scaler or the platform ends the replica.
    serverless_max_idle_polls: int = Field(default=10, ge=0, validation_alias="SERVERLESS_MAX_IDLE_POLLS")
    serverless_job_limit: int = Field(default=0, ge=0, validation_alias="SERVERLESS_JOB_LIMIT")
    # 0 = never. Longer than a queue-manager restart (a minute or two), about one of Verda's 10-min billing intervals.
    serverless_max_unreachable_s: float = Field(
        default=600.0, ge=0, le=DAY_S, validation_alias="SERVERLESS_MAX_UNREACHABLE_S"
    )
    # Logged and put in every result: a 100 KB value, a blank one or a line break went there as given.
    inference_provider: Identifier = Field(default="local", validation_alias="INFERENCE_PROVIDER")
    health_port: int = Field(default=8000, ge=0, le=65535, validation_alias="HEALTH_PORT")
    health_host: BindHost = Field(default="0.0.0.0", validation_alias="HEALTH_HOST")
    health_port_file: OptionalPath = Field(default=None, validation_alias="HEALTH_PORT_FILE")
    outputs_path: RequiredPath = Field(default=Path("/outputs"), validation_alias="OUTPUTS_PATH")
    job_timeout_s: float = Field(default=1800.0, ge=MIN_TIMEOUT_S, le=WEEK_S, validation_alias="JOB_TIMEOUT_S")
    comfyui_startup_timeout_s: float = Field(
        default=600.0, ge=MIN_TIMEOUT_S, le=DAY_S, validation_alias="COMFYUI_STARTUP_TIMEOUT_S"
    )
    comfyui_unresponsive_timeout_s: float = Field(
        default=120.0, ge=MIN_TIMEOUT_S, le=DAY_S, validation_alias="COMFYUI_UNRESPONSIVE_TIMEOUT_S"
    )
    report_retry_budget_s: float = Field(
        default=120.0, ge=MIN_TIMEOUT_S, le=DAY_S, validation_alias="REPORT_RETRY_BUDGET_S"
    )
    shutdown_grace_s: float = Field(default=25.0, ge=0, le=DAY_S, validation_alias="SHUTDOWN_GRACE_S")
    platform_kill_delay_s: float = Field(default=30.0, gt=0, le=DAY_S, validation_alias="PLATFORM_KILL_DELAY_S")
    requeue_on_shutdown: bool = Field(default=True, validation_alias="REQUEUE_ON_SHUTDOWN")
    max_job_attempts: int = Field(default=3, ge=1, le=100, validation_alias="MAX_JOB_ATTEMPTS")
    lease_heartbeat_s: float = Field(default=15.0, ge=MIN_HEARTBEAT_S, le=DAY_S, validation_alias="LEASE_HEARTBEAT_S")
    http_timeout_s: float = Field(default=30.0, ge=MIN_TIMEOUT_S, le=DAY_S, validation_alias="HTTP_TIMEOUT_S")
    heartbeat_timeout_s: float = Field(default=120.0, ge=1.0, le=WEEK_S, validation_alias="HEARTBEAT_TIMEOUT_S")
    warmup_workflow: OptionalPath = Field(default=None, validation_alias="WARMUP_WORKFLOW")
    max_job_output_files: int = Field(default=10_000, ge=1, le=1_000_000, validation_alias="MAX_JOB_OUTPUT_FILES")
    max_job_output_mb: int = Field(default=8192, ge=1, le=1 << 30, validation_alias="MAX_JOB_OUTPUT_MB")

    @field_validator("outputs_path")
    @classmethod
    def _absolute_outputs_path(cls, value: Path) -> Path:
        return value.absolute()

    @model_validator(mode="after")
    def _grace_inside_the_kill_delay(self) -> WorkerSettings:
        if self.shutdown_grace_s >= self.platform_kill_delay_s:
            raise ValueError(
                f"SHUTDOWN_GRACE_S ({self.shutdown_grace_s:g}) must be shorter than PLATFORM_KILL_DELAY_S "
                f"({self.platform_kill_delay_s:g}): after the grace the job is handed back before the platform kills"
            )
        return self

    @model_validator(mode="after")
    def _one_queue_credential(self) -> WorkerSettings:
        clash = queue_token_clash(self.queue_base_url) if self.queue_manager_token is not None else None
        if clash:
            raise ValueError(clash)
        return self

    @model_validator(mode="after")
    def _worker_token_where_the_worker_reads_it(self) -> WorkerSettings:
        if self.queue_manager_worker_token is not None and not self.queue_manager_token:
            raise ValueError(QUEUE_MANAGERS_VARIABLE_ALONE)
        return self

    @property
    def queue_base_url(self) -> str:
        return str(self.queue_manager_url).rstrip("/")

    @property
    def comfyui_base_url(self) -> str:
        return str(self.comfyui_url).rstrip("/")

    @property
    def secrets(self) -> list[str]:
        """What no log line may show (for common.logs.register_secret): the queue tokens and the credentials of
        QUEUE_MANAGER_URL and COMFYUI_URL (a proxy's in front of a ComfyUI elsewhere), which a peer's error page may
        echo (as ``Authorization: Basic …`` too)."""
        tokens = (self.queue_manager_token, self.queue_manager_worker_token)
        return ([token.get_secret_value() for token in tokens if token] + url_secrets(self.queue_base_url)
                + url_secrets(self.comfyui_base_url))


def load_settings(**overrides: object) -> WorkerSettings:
    return settings_from_env(WorkerSettings, "worker", trust_store=True, **overrides)
