"""A poll answer lost when the queue manager died (SIGKILL mid-answer), then polls that could not even connect
while it was down, then the queue manager back on the same database: the worker's next poll is still the retry
of the lost one and gets that job again. Found by bench/fault_run.py's queue_sigkill_in_burst: tries refused a
connection used up MAX_TRIES_PER_POLL (5 tries: 1.5 s at a 0.05 s poll interval, 30 s at the default 2 s), the
next poll took a new id, and the lost job sat `running` for no one until its lease handed it back as a fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from queue_manager import JobStatus, QueueManagerServer
from worker.queue_client import MAX_TRIES_PER_POLL, PollError, QueueClient

WORKFLOW = {"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}


async def test_polls_refused_a_connection_do_not_use_up_the_lost_answers_poll_id(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    queue = QueueManagerServer(db, test_hooks=True)
    await queue.start()
    port = int(queue.url.rsplit(":", 1)[1])
    lost = queue.store.submit("alice", WORKFLOW)
    following = queue.store.submit("bob", WORKFLOW)
    queue.faults.inject("next-job", drop=True, after=True)  # handed out, then the connection dies with it
    client = QueueClient(queue.url, "gpu-1")
    try:
        with pytest.raises(PollError):
            await client.next_job()
        await queue.stop()
        for _ in range(MAX_TRIES_PER_POLL):  # the queue manager down: no connection at all
            with pytest.raises(PollError, match="ConnectError"):
                await client.next_job()
        queue = QueueManagerServer(db)
        await queue.start(port=port)
        try:
            got = await client.next_job()
            assert (got["id"], got["attempt"]) == (lost.id, 1), "a new poll: the lost job left to its lease"
            assert queue.store.get(following.id).status is JobStatus.PENDING
        finally:
            await queue.stop()
    finally:
        await client.aclose()
