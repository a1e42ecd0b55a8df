"""A replica list is believed only within reason. A list longer than any deployment the scaler drives is a broken
answer, refused as a failed read before the spend ledger charges it; a start no replica can have (Go's zero time,
Unix's 0, one out of datetime's range once in UTC) is taken as missing, as a start the platform leaves out."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from scaler.cli import main
from scaler.loop import ScalerLoop
from scaler.policy import MAX_REPLICAS_LIMIT, ScalingConfig
from scaler.providers import VerdaBackend
from scaler.queue_status import QueueStatusReader
from standins.verda import FakeVerda

from ..conftest import ManualClock
from .conftest import DEPLOYMENT
from .test_peer_answers import spent_on_one_pod_over_five_minutes

REPLICAS = f"/container-deployments/{DEPLOYMENT}/replicas"
WORKFLOW = {"1": {"class_type": "Noop", "inputs": {}}}
ONE_INTERVAL = 2.30 * 600 / 3600  # what a replica's first 10 minutes cost at the default price
PLACEHOLDERS = ["0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00",
                "9999-12-31T23:59:59-14:00"]


def two_days_ago() -> str:
    return (datetime.now(UTC) - timedelta(days=2)).isoformat(timespec="seconds").replace("+00:00", "Z")


async def test_a_replica_list_longer_than_any_deployment_is_a_failed_read_and_nothing_is_charged(
    fake_verda: FakeVerda, make_verda_client, qm, tmp_path
):
    """Before: 14,000 replicas started two days ago took a tick 13 s and 504 MiB, and wrote an 85 MB state file
    (78,000, just under the 4 MiB answer limit: 60 s, 2.5 GB, 420 MB); the ledger charged each a day."""
    listed = 10 * MAX_REPLICAS_LIMIT + 1
    started = two_days_ago()
    fake_verda.fail_next(REPLICAS, 200, body={"list": [{"id": f"r{n:05d}", "started_at": started}
                                                       for n in range(listed)]})
    state = tmp_path / "state.json"
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT)
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(ScalingConfig(target_wait_s=None), backend, reader, state_file=state)
        with capture_logs():
            decision = await loop.tick()
    await backend.aclose()
    assert decision.reason == "hold_observation_failed" and decision.details["queue_error"] is None
    assert f"{listed} replicas listed: more than {listed - 1} is not a plausible list" in decision.details[
        "verda_error"]
    assert loop.state.ledger.spent_since(0) == 0
    assert state.stat().st_size < 10_000


@pytest.mark.parametrize("started_at", PLACEHOLDERS, ids=["go-zero-time", "unix-zero", "year-0-in-utc", "year-10000"])
async def test_a_start_no_replica_can_have_is_taken_as_missing_not_charged_a_day(
    fake_verda: FakeVerda, make_verda_client, qm, wall, started_at
):
    """Before: Go's zero time charged the replica a full day at first sight (55.20) and, with 40 a day allowed and
    3 jobs queued, capped the scale-up at 0 for a day."""
    fake_verda.fail_next(REPLICAS, 200, times=2, body={"list": [
        {"id": "replica-1", "status": "running", "started_at": started_at}]})
    for _ in range(3):
        qm.store.submit("alice", WORKFLOW)
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall)
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(ScalingConfig(target_wait_s=None, max_spend_per_day=40.0), backend, reader, clock=wall)
        with capture_logs() as logs:
            first = await loop.tick()
            wall.advance(15.0)
            await loop.tick()
    await backend.aclose()
    assert first.details["spend_last_day"] == pytest.approx(ONE_INTERVAL, abs=0.01)
    assert (first.reason, first.desired) != ("scale_up_capped_by_daily_budget", 0)
    assert first.desired == 3
    implausible = [entry for entry in logs if entry["event"] == "replica_start_implausible"]
    assert [entry["replica"] for entry in implausible] == ["replica-1"], "said once, not at every tick"


async def test_status_shows_a_replica_listed_at_year_0_as_started_when_first_listed(cli_env, fake_verda: FakeVerda,
                                                                                    capsys):
    """Before: `comfy-scaler status` failed with "year 0 is out of range" on "0001-01-01T00:00:00+14:00"."""
    fake_verda.fail_next(REPLICAS, 200, body={"list": [
        {"id": "replica-1", "status": "running", "started_at": "0001-01-01T00:00:00+14:00"}]})
    before = time.time()
    assert await asyncio.to_thread(main, ["status", "--json"]) == 0
    [replica] = json.loads(capsys.readouterr().out)["replicas"]
    assert replica["id"] == "replica-1"
    assert datetime.fromisoformat(replica["started_at"]).timestamp() >= before - 1


async def test_a_runpod_pod_created_at_gos_zero_time_is_charged_from_when_it_was_first_listed():
    """Before: charged per second since year 1, i.e. the whole day the ledger reads (16.56 at 0.69/h), at the
    first read."""
    clock = ManualClock(time.time())
    pod = {"id": "pod-1", "name": "comfy-0123abcd", "status": "RUNNING", "cost": 0.69,
           "createdAt": "0001-01-01T00:00:00Z"}
    assert round(await spent_on_one_pod_over_five_minutes(pod, clock), 6) == round(300 * 0.69 / 3600, 6)
