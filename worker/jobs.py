"""What a job from the queue manager must look like before it may touch ComfyUI or the disk."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from common.json_depth import MAX_JSON_DEPTH, deeper_than
from worker.input_images import InputImage, InvalidImages, input_images
from worker.outputs import MAX_LABEL_CHARS
from worker.workflow_paths import check_folder_names

# The queue manager's own rule for user_id; job ids are UUIDs there, and both become path components here.
SAFE_USER_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
SAFE_JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
# Longer, no report can name the job: its id goes in the query, which HTTP servers cut at about 8 KiB and httpx
# refuses past 64 KiB (an exception no one foresaw, and every log line of the job the size of its id).
MAX_REPORTABLE_ID_CHARS = 1000

MAX_CYCLE_NODES_SHOWN = 12
# The key of a job the queue client could read only the id of (unreadable_job): why. No JSON field is named so.
UNREADABLE = "\0unreadable"

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
    attempt: int | None = None  # from the embedded queue manager (contract item 1); comfy-multi sends none
    images: tuple[InputImage, ...] = field(default=(), repr=False)  # metadata.images, decoded (worker/input_images.py)

    @property
    def attempt_number(self) -> int:
        """Which run of the user's job this is: the count a resubmitted copy carries in its metadata (the
        comfy-multi fallback), or the manager's attempt, whichever is higher; 1 when neither says."""
        carried = self.metadata.get("attempt") if "requeued_from" in self.metadata else None
        return max(carried if _is_count(carried) else 1, self.attempt or 1)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def job_id_of(raw: object) -> str:
    """The id a report can be sent for, or UnreportableJob."""
    if not isinstance(raw, dict):
        raise UnreportableJob(f"job is a {type(raw).__name__}, expected a JSON object")
    job_id = raw.get("id")
    if not isinstance(job_id, str) or not job_id.strip():
        raise UnreportableJob(f"job has no usable 'id' (got {job_id!r:.80})")
    if len(job_id) > MAX_REPORTABLE_ID_CHARS:
        raise UnreportableJob(f"job 'id' {job_id!r:.80} is {len(job_id)} characters long; a report can name at most "
                              f"{MAX_REPORTABLE_ID_CHARS}")
    return job_id


def unreadable_job(job_id: str, problem: str) -> dict[str, Any]:
    """A job of which only the id could be read: parse_job fails it, saying ``problem``."""
    return {"id": job_id, UNREADABLE: problem}


def parse_job(raw: dict[str, Any]) -> Job:
    """Validate a job popped from the queue; InvalidJob names the first field that is wrong."""
    job_id = job_id_of(raw)
    if not SAFE_JOB_ID.fullmatch(job_id):
        raise InvalidJob(f"job 'id' {job_id!r:.80} is not safe as a folder name (letters, digits, '_', '-', '.')")
    if UNREADABLE in raw:
        raise InvalidJob(str(raw[UNREADABLE]))

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
    try:
        images = input_images(metadata)
    except InvalidImages as exc:
        raise InvalidJob(str(exc)) from None

    attempt = raw.get("attempt")
    if attempt is not None and not _is_count(attempt):
        raise InvalidJob(f"job 'attempt' must be a positive integer, got {attempt!r:.40}")
    workflow = validate_workflow(raw.get("workflow"))
    return Job(id=job_id, user_id=user_id, workflow=workflow, metadata=metadata, attempt=attempt, images=images)


def attempt_of(raw: object) -> int | None:
    """The fence of a raw job (even one too malformed to run), so its report reaches the right attempt."""
    attempt = raw.get("attempt") if isinstance(raw, dict) else None
    return attempt if _is_count(attempt) else None


def lease_timeout_of(raw: object) -> float | None:
    """The lease the embedded queue manager said it holds the job for (seconds), or None when it said none."""
    lease = raw.get("lease_timeout_s") if isinstance(raw, dict) else None
    valid = isinstance(lease, int | float) and not isinstance(lease, bool) and 0 < lease < math.inf
    return float(lease) if valid else None


def validate_workflow(workflow: object) -> dict[str, Any]:
    if not isinstance(workflow, dict):
        raise InvalidJob(f"job 'workflow' must be a JSON object in ComfyUI API format, got {type(workflow).__name__}")
    if isinstance(workflow.get("nodes"), list) and "links" in workflow:
        raise InvalidJob(
            "job 'workflow' is in ComfyUI's UI (graph) format, with 'nodes' and 'links'; the worker runs the "
            f"API format (node id -> {{class_type, inputs}}): {API_FORMAT_HINT}"
        )
    prompt = workflow.get("prompt")
    if isinstance(prompt, dict) and "class_type" not in prompt:  # a node may be named "prompt"; a body's holds nodes
        raise InvalidJob(
            "job 'workflow' is a /prompt request body (it has a 'prompt' key); send the API-format workflow itself"
        )
    if not workflow:
        raise InvalidJob("job 'workflow' is empty: it has no nodes")
    if deeper_than(workflow):  # ComfyUI answers 500 to one nested ~900 deep: a fault of ours, retried for ever
        raise InvalidJob(f"job 'workflow' nests lists and objects deeper than {MAX_JSON_DEPTH} levels (a workflow "
                         "is about 5)")
    for node_id, node in workflow.items():
        where = f"job 'workflow' node {node_id!r:.40}"
        if len(node_id) > MAX_LABEL_CHARS:  # the report names it for each file: found only once ComfyUI ran
            raise InvalidJob(f"{where} has an id {len(node_id)} characters long; at most {MAX_LABEL_CHARS}, as the "
                             "report names it for each file")  # fmt: skip
        if not isinstance(node, dict):
            raise InvalidJob(f"{where} must be an object with 'class_type' and 'inputs', got {type(node).__name__}")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise InvalidJob(f"{where} has no 'class_type'; is this an API-format workflow? {API_FORMAT_HINT}")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise InvalidJob(f"{where} ({class_type}) 'inputs' must be an object")
        outside = check_folder_names(class_type, inputs)
        if outside:
            raise InvalidJob(f"{where} ({class_type}) {outside}")
    cycle = find_link_cycle(workflow)
    if cycle:
        shown = [f"{node_id} ({workflow[node_id]['class_type']})" for node_id in cycle[:MAX_CYCLE_NODES_SHOWN]]
        more = f" -> … ({len(cycle) - 1} nodes in all)" if len(cycle) > MAX_CYCLE_NODES_SHOWN else ""
        raise InvalidJob(
            f"job 'workflow' has a link cycle (each node takes an input from the next): {' -> '.join(shown)}{more}; "
            "a node cannot depend on its own output"
        )
    return workflow


def _linked_nodes(node: dict[str, Any], workflow: dict[str, Any]) -> list[str]:
    """Upstream node ids: an input [node_id, output_index] whose node exists (ComfyUI's own link test)."""
    links = []
    for value in (node.get("inputs") or {}).values():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and str(value[0]) in workflow:
            links.append(str(value[0]))
    return links


def find_link_cycle(workflow: dict[str, Any]) -> list[str]:
    """The first link cycle as [a, b, ..., a], or []. Iterative: a 100k-node chain cannot overflow the stack."""
    done: set[str] = set()
    for start in workflow:
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        pending = [iter(_linked_nodes(workflow[start], workflow))]
        while pending:
            upstream = next(pending[-1], None)
            if upstream is None:
                pending.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if upstream in on_path:
                return [*path[path.index(upstream):], upstream]
            if upstream not in done:
                path.append(upstream)
                on_path.add(upstream)
                pending.append(iter(_linked_nodes(workflow[upstream], workflow)))
    return []
