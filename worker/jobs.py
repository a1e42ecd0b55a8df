"""What a job from the queue manager must look like before it may touch ComfyUI or the disk."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# The queue manager's own rule for user_id; job ids are UUIDs there, and both become path components here.
SAFE_USER_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
SAFE_JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")

API_FORMAT_HINT = (
    "export it in API format: in ComfyUI open Settings, enable 'Dev mode', then use "
    "Workflow > Export (API) (older UIs: 'Save (API Format)')"
)


class InvalidJob(ValueError):
    """A job that cannot run; the message names the field and the problem."""


class UnreportableJob(ValueError):
    """A job so malformed it has no usable id, so not even a failure can be reported for it."""


@dataclass(frozen=True)
class Job:
    id: str
    user_id: str
    workflow: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


def job_id_of(raw: object) -> str:
    """The id a report can be sent for, or UnreportableJob."""
    if not isinstance(raw, dict):
        raise UnreportableJob(f"job is a {type(raw).__name__}, expected a JSON object")
    job_id = raw.get("id")
    if not isinstance(job_id, str) or not job_id.strip():
        raise UnreportableJob(f"job has no usable 'id' (got {job_id!r:.80})")
    return job_id


def parse_job(raw: dict[str, Any]) -> Job:
    """Validate a job popped from the queue; InvalidJob names the first field that is wrong."""
    job_id = job_id_of(raw)
    if not SAFE_JOB_ID.fullmatch(job_id):
        raise InvalidJob(f"job 'id' {job_id!r:.80} is not safe as a folder name (letters, digits, '_', '-', '.')")

    user_id = raw.get("user_id")
    if not isinstance(user_id, str) or not SAFE_USER_ID.fullmatch(user_id):
        raise InvalidJob(
            f"job 'user_id' {user_id!r:.80} is not safe as a folder name: "
            "it must be 1-100 characters of letters, digits, '_' or '-'"
        )

    metadata = raw.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise InvalidJob(f"job 'metadata' must be a JSON object, got {type(metadata).__name__}")

    return Job(id=job_id, user_id=user_id, workflow=validate_workflow(raw.get("workflow")), metadata=metadata)


def validate_workflow(workflow: object) -> dict[str, Any]:
    if not isinstance(workflow, dict):
        raise InvalidJob(f"job 'workflow' must be a JSON object in ComfyUI API format, got {type(workflow).__name__}")
    if isinstance(workflow.get("nodes"), list) and "links" in workflow:
        raise InvalidJob(
            "job 'workflow' is in ComfyUI's UI (graph) format, with 'nodes' and 'links'; the worker runs the "
            f"API format (node id -> {{class_type, inputs}}): {API_FORMAT_HINT}"
        )
    if "prompt" in workflow and isinstance(workflow["prompt"], dict) and len(workflow) <= 3:
        raise InvalidJob(
            "job 'workflow' is a /prompt request body (it has a 'prompt' key); send the API-format workflow itself"
        )
    if not workflow:
        raise InvalidJob("job 'workflow' is empty: it has no nodes")
    for node_id, node in workflow.items():
        where = f"job 'workflow' node {node_id!r:.40}"
        if not isinstance(node, dict):
            raise InvalidJob(f"{where} must be an object with 'class_type' and 'inputs', got {type(node).__name__}")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise InvalidJob(f"{where} has no 'class_type'; is this an API-format workflow? {API_FORMAT_HINT}")
        if not isinstance(node.get("inputs", {}), dict):
            raise InvalidJob(f"{where} ({class_type}) 'inputs' must be an object")
    return workflow
