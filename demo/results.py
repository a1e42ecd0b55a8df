"""After the run: every completed job's result files, fetched as a participant would, through the queue manager's
GET /api/jobs/{id}/outputs/{path}, each body checked against the file on the outputs volume and the result's sha256."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from common.urls import direct_transport
from queue_manager import JobRecord
from scaler.providers.owned_folders import open_own_plain_file

log = structlog.get_logger()

ROUTE = "GET /api/jobs/<id>/outputs/<path>"
CONCURRENT_FETCHES = 4


@dataclass(frozen=True)
class Failure:
    job_id: str
    path: str
    reason: str


async def fetch_results(queue_url: str, jobs: list[JobRecord], outputs: Path, *, token: str | None) -> dict[str, Any]:
    """Fetch each file listed in `result.outputs[].path` of the completed `jobs`, a few at a time; the counts, and
    the first failure (job id, path, reason), for the report."""
    listed = [(job.id, item) for job in jobs if job.status == "completed" for item in _outputs(job.result)]
    gate = asyncio.Semaphore(CONCURRENT_FETCHES)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with httpx.AsyncClient(
        base_url=queue_url, timeout=30, headers=headers, transport=direct_transport(queue_url)
    ) as http:

        async def one(job_id: str, item: dict[str, Any]) -> Failure | None:
            async with gate:
                reason = await _fetch_and_check(http, job_id, item, outputs)
            return Failure(job_id, str(item.get("path")), reason) if reason else None

        failures = [f for f in await asyncio.gather(*(one(job_id, item) for job_id, item in listed)) if f]
    if failures:
        log.warning("Demo result fetch failed", failed=len(failures), of=len(listed), job_id=failures[0].job_id,
                    path=failures[0].path, reason=failures[0].reason)
    first = failures[0] if failures else None
    return {
        "files": len(listed),
        "fetched": len(listed) - len(failures),
        "failed": len(failures),
        "first_failure": first and {"job_id": first.job_id, "path": first.path, "reason": first.reason},
    }


def _outputs(result: Any) -> list[dict[str, Any]]:
    items = result.get("outputs") if isinstance(result, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


async def _fetch_and_check(http: httpx.AsyncClient, job_id: str, item: dict[str, Any], outputs: Path) -> str | None:
    """Why this file did not come back as written, or None."""
    path = item.get("path")
    if not isinstance(path, str):
        return "the result lists an output without a path"
    digest, size = hashlib.sha256(), 0
    try:
        async with http.stream("GET", f"/api/jobs/{job_id}/outputs/{quote(path, safe='/')}") as response:
            if response.status_code != 200:
                await response.aread()
                return f"HTTP {response.status_code}: {answer_detail(response)[:240]}"
            async for chunk in response.aiter_bytes():
                digest.update(chunk)
                size += len(chunk)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    served = digest.hexdigest()
    on_disk = await asyncio.to_thread(_sha256_of, outputs / path)
    if served != on_disk:
        return f"served sha256 {served} differs from the file on disk ({on_disk or 'unreadable'})"
    if item.get("sha256") and served != item["sha256"]:
        return f"served sha256 {served} differs from the one the result lists ({item['sha256']})"
    if isinstance(item.get("bytes"), int) and size != item["bytes"]:
        return f"served {size} bytes, the result lists {item['bytes']}"
    return None


def answer_detail(response: httpx.Response) -> str:
    """The queue manager's {"detail": ...}, or the body as it came."""
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return response.text


def _sha256_of(file: Path) -> str | None:
    """None for a file that cannot be read, a link (swapped in since the file was served) or no plain file (a FIFO
    held the read for good)."""
    if (descriptor := open_own_plain_file(file.parent, file.name)) is None:
        return None
    try:
        with open(descriptor, "rb") as opened:
            return hashlib.file_digest(opened, "sha256").hexdigest()
    except OSError:
        return None
