"""The worker and job ids of the queue's HTTP contract: what the queue manager accepts in a request, and what the
worker checks its own WORKER_ID against at start (one the queue manager refuses had every poll answered 422)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

MAX_ID_CHARS = 200  # job ids are UUIDs (36 characters)


def _printable_and_not_blank(value: str) -> str:
    # An empty worker id took a job that then ran under no one; a control character went into every log line.
    if not value.strip():
        raise ValueError("must not be empty or blank")
    if not value.isprintable():
        raise ValueError("must be printable (no control characters)")
    if "\ufffd" in value:  # what a byte that is not UTF-8 decodes to: %ff and %fe would be the same worker
        raise ValueError("must be valid UTF-8 (it holds U+FFFD, what an undecodable byte becomes)")
    return value


# A worker id or job id in a request: what a correct worker sends, nothing a log line or a lease cannot name.
Identifier = Annotated[str, Field(max_length=MAX_ID_CHARS), AfterValidator(_printable_and_not_blank)]
