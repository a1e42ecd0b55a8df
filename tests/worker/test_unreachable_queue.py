"""A serverless worker whose queue manager never answers a poll exits after SERVERLESS_MAX_UNREACHABLE_S.

Before: failed polls are not idle polls (a queue manager restarting must not end every worker), so a wrong
QUEUE_MANAGER_URL, a firewall or an /api-suffixed URL kept the replica polling, and billing, for ever (measured:
still running after 2x the bound, 4 failed polls in 20 s). Bounds here are small; no assertion is on a duration.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from demo.replicas import free_loopback_port
from queue_manager.server import QueueManagerServer

from ..conftest import wait_for

EXIT_LINE = "Queue manager unreachable; exiting"


def _events(logs: list[dict]) -> list[str]:
    return [e["event"] for e in logs]


async def test_a_closed_port_ends_a_serverless_worker_with_1_naming_queue_manager_url_masked(comfy, make_worker):
    url = f"http://user:s3cret@127.0.0.1:{free_loopback_port()}"
    worker = make_worker(queue_manager_url=url, serverless_max_unreachable_s=0.3)
    with capture_logs() as logs:
        assert await asyncio.wait_for(worker.run(), 15) == 1
    [exit_line] = [e for e in logs if e["event"] == EXIT_LINE]
    assert exit_line["log_level"] == "error"
    assert exit_line["queue_manager_url"] == url.replace("user:s3cret", "***")
    assert exit_line["tried_s"] >= 0.3 and exit_line["max_unreachable_s"] == 0.3
    assert exit_line["failed_polls"] == _events(logs).count("Poll failed; backing off") + 1
    assert "QUEUE_MANAGER_URL" in exit_line["fix"] and "SERVERLESS_MAX_UNREACHABLE_S" in exit_line["fix"]
    assert "s3cret" not in str(logs)
    assert _events(logs)[-1] == "Worker shutdown complete"
    assert "QUEUE_MANAGER_URL" in logs[-1]["reason"] and "SERVERLESS_MAX_UNREACHABLE_S 0.3" in logs[-1]["reason"]


async def test_a_url_that_answers_404_to_every_poll_ends_a_serverless_worker_with_1(qm, comfy, make_worker):
    """QUEUE_MANAGER_URL with /api in it: the worker adds its own, and the queue manager answers 404."""
    worker = make_worker(queue_manager_url=f"{qm.url}/api", serverless_max_unreachable_s=0.3)
    with capture_logs() as logs:
        assert await asyncio.wait_for(worker.run(), 15) == 1
    [exit_line] = [e for e in logs if e["event"] == EXIT_LINE]
    assert "HTTP 404" in exit_line["error"] and "the part before /api/" in exit_line["error"]
    assert exit_line["queue_manager_url"] == f"{qm.url}/api"
    assert _events(logs)[-1] == "Worker shutdown complete"


async def test_a_queue_manager_down_for_less_than_the_bound_is_waited_for_and_each_outage_counts_afresh(
    comfy, make_worker, workflows, tmp_path
):
    """The queue manager restarts (down, then up on the same port with the same database): the worker waits,
    takes a job after it, and the bound counts from the next failed poll, not from the first outage."""
    db, port = tmp_path / "queue.db", free_loopback_port()
    first = QueueManagerServer(db)
    await first.start(port=port)
    worker = make_worker(queue_manager_url=first.url, serverless_max_idle_polls=1_000_000,
                         serverless_max_unreachable_s=1.0)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: worker.state.consecutive_idle_polls >= 1)
    await first.stop()
    await wait_for(lambda: worker.state.metrics.poll_errors._value.get() >= 3)
    restarted = QueueManagerServer(db)
    await restarted.start(port=port)
    job = restarted.store.submit("alice", workflows["quick"])
    await wait_for(lambda: restarted.store.get(job.id).status == "completed")
    # 50 idle polls 0.02 s apart: the bound (1 s) has passed since the first outage began.
    await wait_for(lambda: worker.state.consecutive_idle_polls >= 50)
    assert not run.done()
    with capture_logs() as logs:
        await restarted.stop()
        assert await asyncio.wait_for(run, 15) == 1
    events = _events(logs)
    assert "Poll failed; backing off" in events, "the second outage got its own bound, not what the first left"
    assert events.count(EXIT_LINE) == 1


@pytest.mark.parametrize(("serverless", "bound_s"), [(False, 0.1), (True, 0)], ids=["always-on", "bound-0-never"])
async def test_an_always_on_worker_or_a_bound_of_0_polls_an_unreachable_queue_until_stopped(
    comfy, make_worker, serverless, bound_s
):
    worker = make_worker(queue_manager_url=f"http://127.0.0.1:{free_loopback_port()}", serverless_mode=serverless,
                         serverless_max_unreachable_s=bound_s)
    run = asyncio.create_task(worker.run())
    # Six failed polls are at least 0.62 s of back-off apart (0.02 s, doubling): past a 0.1 s bound.
    await wait_for(lambda: worker.state.metrics.poll_errors._value.get() >= 6)
    assert not run.done()
    worker.request_shutdown()
    assert await asyncio.wait_for(run, 5) == 0
