"""The demo's check of its results: what it hashes on the outputs volume is the file the queue manager served."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from demo.results import fetch_results
from queue_manager import JobStatus, JobStore

PNG = b"\x89PNG not really, but the bytes the worker wrote"


async def test_a_link_swapped_in_after_the_file_was_served_is_not_hashed_for_it(tmp_path: Path) -> None:
    """Between the queue manager serving a result's file and the demo hashing it, the file is replaced by a link
    (to a file of the same bytes here; to a FIFO or /dev/zero it held the demo for good). Before: the demo followed
    it and counted the result fetched. Now a link is not the file: the result fails, the file on disk unreadable."""
    outputs, elsewhere = tmp_path / "outputs", tmp_path / "elsewhere.png"
    elsewhere.write_bytes(PNG)
    store = JobStore(str(tmp_path / "queue.db"))
    job = store.submit("alice", {"1": {}})
    path = f"alice/{job.id}/out.png"
    (outputs / path).parent.mkdir(parents=True)
    (outputs / path).write_bytes(PNG)

    async def serve_then_swap(request: web.Request) -> web.Response:
        served = (outputs / path).read_bytes()
        (outputs / path).unlink()
        (outputs / path).symlink_to(elsewhere)
        return web.Response(body=served)

    app = web.Application()
    app.router.add_get("/api/jobs/{job_id}/outputs/{path:.+}", serve_then_swap)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        item = {"path": path, "sha256": hashlib.sha256(PNG).hexdigest(), "bytes": len(PNG)}
        done = replace(job, status=JobStatus.COMPLETED, result={"outputs": [item]})
        results = await fetch_results(url, [done], outputs, token=None)
    finally:
        await runner.cleanup()
        store.close()

    assert os.path.islink(outputs / path)
    assert (results["fetched"], results["failed"]) == (0, 1), results
    assert results["first_failure"]["reason"].endswith("differs from the file on disk (unreadable)")
