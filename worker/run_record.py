"""Whether another live worker has this WORKER_ID on this ComfyUI (a copy-pasted WORKER_ID).

At start a worker stops and tidies the prompts marked with its WORKER_ID as a killed earlier run's
(worker/housekeeping.py): a live twin's would fail its job. So each run keeps a record of its own in ComfyUI's user
data store (`/userdata`, the default user's folder) and writes it every RECORD_INTERVAL_S; at start, a record of
another run of its id written again while it looks means a live twin, and the worker refuses to start. A killed
run's record goes stale: once RECORD_STALE_S older than this run's (both stamped by ComfyUI's disk, so no clock of
the workers' counts) it is deleted, so a run started right after a kill waits that long at most; a stopped run
deletes its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import time
from uuid import uuid4

from worker.comfyui import ComfyUIClient, ComfyUIUnavailable, ReplyTooLarge

# The folder of ComfyUI's user data store holding each running worker's record, how often a run writes its own, and
# how long after its last write a record is a killed run's: a live worker's ComfyUI may answer it late (its event
# loop busy loading nodes, validating a large workflow), never for that long.
RECORDS_FOLDER = "comfy-serverless-worker"
RECORD_INTERVAL_S = 2.0
RECORD_STALE_S = 10.0
RECORD_NAME = re.compile(r"[0-9a-f]{16}-[0-9a-f]{32}\.json")  # the WORKER_ID's digest, the run's id


class RecordsUnreadable(Exception):
    """ComfyUI did not keep or list the records (an older ComfyUI, --multi-user, a read-only user folder)."""


class RunRecord:
    """This run's record in ComfyUI's user data store: its name is the WORKER_ID's digest and a run id, its
    modification time (ComfyUI's) the run's latest sign of life."""

    def __init__(
        self, comfy: ComfyUIClient, worker_id: str, *,
        interval_s: float = RECORD_INTERVAL_S, stale_s: float = RECORD_STALE_S,
    ) -> None:
        self.comfy = comfy
        self.interval_s = interval_s
        self.stale_s = stale_s
        self._prefix = hashlib.sha256(worker_id.encode()).hexdigest()[:16] + "-"
        self.name = f"{self._prefix}{uuid4().hex}.json"
        self._body = json.dumps({"worker_id": worker_id}).encode()
        self.written = False

    async def twin(self, timeout_s: float) -> str | None:
        """Whether another run of this WORKER_ID is alive on this ComfyUI: the name of its record, whose time moved
        on while this run looked; None once every other record of the id is stale (deleted, as are stale records
        of other ids). RecordsUnreadable when ComfyUI cannot tell. Each question gets timeout_s."""
        seen: dict[str, float] = {}
        give_up_at = time.monotonic() + self.stale_s + 2 * self.interval_s
        while True:
            await self.write(timeout_s)
            records = await self._list(timeout_s)
            now = records.get(self.name)
            if now is None:
                raise RecordsUnreadable(f"ComfyUI's GET /userdata does not list {self.name}, just written")
            fresh = {}
            for name, written in records.items():
                if name == self.name:
                    continue
                if now - written >= self.stale_s:
                    await self._delete(name, timeout_s)
                elif name.startswith(self._prefix):
                    fresh[name] = written
            if moved := sorted(name for name, written in fresh.items() if written > seen.get(name, math.inf)):
                return moved[0]
            if not fresh:
                return None
            if time.monotonic() > give_up_at:  # this run's record stays as old: a disk whose times stand still
                raise RecordsUnreadable(f"a record of another run did not go stale in {self.stale_s:g} s")
            seen = fresh
            await asyncio.sleep(self.interval_s)

    async def keep_writing(self, timeout_s: float) -> None:
        """Write the record every interval_s until cancelled; a write that fails is tried again at the next."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.write(timeout_s)
            except (RecordsUnreadable, ComfyUIUnavailable, ReplyTooLarge):
                continue

    async def write(self, timeout_s: float) -> None:
        self.written = True  # from the first POST on: ComfyUI may save it though its answer never comes (a stop)
        status = await self.comfy.save_user_file(RECORDS_FOLDER, self.name, self._body, timeout_s)
        if status != 200:
            raise RecordsUnreadable(f"ComfyUI's POST /userdata answered HTTP {status}")

    async def remove(self, timeout_s: float) -> None:
        """At the run's end: a later run of this id need not wait for the record to go stale."""
        if self.written:
            await self._delete(self.name, timeout_s)

    async def _delete(self, name: str, timeout_s: float) -> None:
        """Best effort: a record left is stale again at the next look, and a missing one is gone already."""
        with contextlib.suppress(ComfyUIUnavailable, ReplyTooLarge):
            await self.comfy.delete_user_file(RECORDS_FOLDER, name, timeout_s)

    async def _list(self, timeout_s: float) -> dict[str, float]:
        """Each record's name and modification time (ComfyUI's clock)."""
        reply = await self.comfy.list_user_files(RECORDS_FOLDER, timeout_s)
        if reply.status_code != 200:
            raise RecordsUnreadable(f"ComfyUI's GET /userdata answered HTTP {reply.status_code}")
        try:
            listed = reply.json()
        except ValueError:
            listed = None
        records = {}
        for item in listed if isinstance(listed, list) else [None]:
            path = item.get("path") if isinstance(item, dict) else None
            modified = item.get("modified") if isinstance(item, dict) else None
            if not isinstance(path, str) or not _finite_number(modified):
                raise RecordsUnreadable("ComfyUI's GET /userdata answered a list of another shape")
            if RECORD_NAME.fullmatch(path):  # only records are deleted: no other file's name reaches a URL
                records[path] = float(modified)
        return records


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
