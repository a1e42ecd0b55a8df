"""Request and response shapes of the comfy-multi Queue Manager, with its validation rules and messages."""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator

from common.handbacks import HandBackCause
from common.identifiers import Identifier

USER_ID_PATTERN = re.compile(r"[a-zA-Z0-9_-]{1,100}")  # matched whole (fullmatch): "alice\n" is refused
MAX_WORKFLOW_BYTES = 10 * 1024 * 1024
MAX_METADATA_BYTES = 1024 * 1024
MAX_RESULT_BYTES = 50 * 1024 * 1024
MAX_ERROR_CHARS = 10000
MAX_REASON_CHARS = 2000
MAX_LIST_LIMIT = 1000


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class QueueMode(StrEnum):
    FIFO = "fifo"
    ROUND_ROBIN = "round_robin"
    PRIORITY = "priority"


class JobPriority(IntEnum):
    INSTRUCTOR = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3


# JSON as every answer writes it: compact, UTF-8 (not \u-escaped), strict. A completed job's result is stored so
# too, so that its view sends the stored text as it is.
answer_json = functools.partial(json.dumps, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json_size(value: Any) -> int:
    # The peer measures sizes as the length of json.dumps with default separators; so do we.
    return len(json.dumps(value))


class JobSubmitRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=100)
    workflow: dict[str, Any]
    priority: JobPriority = JobPriority.NORMAL
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("user_id")
    @classmethod
    def _user_id_is_path_safe(cls, value: str) -> str:
        if not USER_ID_PATTERN.fullmatch(value):
            raise ValueError(
                "user_id must contain only alphanumeric characters, underscores, and hyphens (1-100 chars)"
            )
        return value

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_is_a_number(cls, value: Any) -> Any:
        # Lax validation read `false` as 0 (instructor) and `"2"` as 2; JSON says what a number is.
        if isinstance(value, bool | str):
            raise ValueError("must be a JSON number 0..3 (0 = instructor, 2 = normal), not a boolean or string")
        return value

    @field_validator("workflow")
    @classmethod
    def _workflow_non_empty_and_bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("workflow must be a non-empty dictionary")
        size = _json_size(value)
        if size > MAX_WORKFLOW_BYTES:
            raise ValueError(f"workflow size ({size} bytes) exceeds maximum ({MAX_WORKFLOW_BYTES} bytes)")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = _json_size(value) if value else 0
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata size ({size} bytes) exceeds maximum ({MAX_METADATA_BYTES} bytes)")
        return value


class JobCompletionRequest(BaseModel):
    result: dict[str, Any]

    @field_validator("result")
    @classmethod
    def _result_bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = _json_size(value)
        if size > MAX_RESULT_BYTES:
            raise ValueError(f"result payload too large ({size} bytes) - exceeds {MAX_RESULT_BYTES} bytes")
        return value


class JobFailureRequest(BaseModel):
    error: str = Field(min_length=1, max_length=MAX_ERROR_CHARS)

    @field_validator("error")
    @classmethod
    def _error_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("error message cannot be empty")
        return value.strip()


class NextJobQuery(BaseModel):
    worker_id: Identifier


# A UUID in its usual lower-case text form (8-4-4-4-12 hex digits), as str(uuid.uuid4()) writes it: every job id
# the store makes, and a poll id (sent in any case, kept lower-case).
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _poll_id_is_a_uuid(value: str) -> str:
    value = value.lower()
    if not UUID_PATTERN.fullmatch(value):
        raise ValueError("must be a UUID (8-4-4-4-12 hex digits), new for each poll")
    return value


class PolledNextJobQuery(NextJobQuery):
    """Our extension: `poll_id`, the same on every try of one poll, makes a retried poll get the job the lost
    answer carried instead of another one."""

    poll_id: Annotated[str, AfterValidator(_poll_id_is_a_uuid)] | None = None


class ReportQuery(BaseModel):
    """complete-job / fail-job: `worker_id` and `attempt` are our extension; when given they fence the report."""

    job_id: Identifier
    worker_id: Identifier | None = None
    attempt: int | None = Field(default=None, ge=1)


class HeartbeatQuery(BaseModel):
    worker_id: Identifier
    job_id: Identifier
    attempt: int | None = Field(default=None, ge=1)


class ReleaseQuery(BaseModel):
    job_id: Identifier
    worker_id: Identifier
    attempt: int = Field(ge=1)


class ReleaseRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=MAX_REASON_CHARS)
    # Absent: a fault, as every hand-back counted before workers told the cause.
    cause: HandBackCause = HandBackCause.FAULT

    @field_validator("reason")
    @classmethod
    def _reason_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("reason cannot be blank: say why the job is handed back")
        return value


class ListJobsQuery(BaseModel):
    user_id: str | None = None  # empty: no filter, as the peer reads it
    status: JobStatus | None = None
    limit: int = Field(default=100, ge=1, le=MAX_LIST_LIMIT)
    # Our extension (comfy-multi ignores it): "newest" lists the latest first, finished jobs by completion time.
    order: Literal["oldest", "newest"] = "oldest"

    @field_validator("user_id")
    @classmethod
    def _user_id_a_job_can_have(cls, value: str | None) -> str | None:
        if value and not USER_ID_PATTERN.fullmatch(value):
            raise ValueError("user_id must match [a-zA-Z0-9_-]{1,100}, as a job's user_id does")
        return value


class PagedListJobsQuery(ListJobsQuery):
    """Our extension: `after`, the X-Next-Cursor header of the page before, lists the jobs that follow it."""

    after: str | None = None  # decoded, and checked against the order asked for, by the handler


class JobResponse(BaseModel):
    id: str
    user_id: str
    status: JobStatus
    priority: JobPriority
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    worker_id: str | None
    result: dict[str, Any] | None
    error: str | None
    position_in_queue: int | None = None
    estimated_wait_time: int | None = None
    # Our extensions (comfy-multi sends none of these): which run this is, why earlier runs were handed back,
    # and the job's metadata (a resubmitted copy carries "requeued_from": <original id> there).
    attempt: int = 1
    history: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, Any] | None = None


class QueueStatusResponse(BaseModel):
    mode: QueueMode
    pending_jobs: int
    running_jobs: int
    completed_jobs: int
    failed_jobs: int
    total_workers: int
    active_workers: int
    queue_depth: int


class HealthResponse(BaseModel):
    status: str
    version: str
    redis_connected: bool
    workers_active: int
    queue_depth: int
    uptime_seconds: int


def created_at_datetime(epoch_s: float) -> datetime:
    """The peer stamps creation with naive utcnow(), so `created_at` renders without an offset."""
    return datetime.fromtimestamp(epoch_s, UTC).replace(tzinfo=None)


def event_datetime(epoch_s: float | None) -> datetime | None:
    """The peer stamps start and end with aware UTC times, which pydantic renders with a trailing Z."""
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, UTC)
