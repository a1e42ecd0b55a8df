"""What the scaler reads from a peer is bounded: an answer past the limit is a failed read, given up as it
arrives (or when it is announced), logged naming the peer and the limit. Before, httpx read every answer whole
into memory: a peer answering 2 GB took 2 GB of the scaler's."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from common.http_answers import API_ANSWER_BYTES, AnswerTooLarge
from scaler.loop import ScalerLoop
from scaler.policy import ScalingConfig
from scaler.providers import VerdaBackend
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from scaler.providers.verda.client import VerdaClient
from scaler.queue_status import QueueStatusError, QueueStatusReader
from standins.verda import FakeVerda

from .conftest import DEPLOYMENT, FloodingPeer

ONE_MIB = 1024 * 1024
STATUS = {"pending_jobs": 3, "running_jobs": 1, "completed_jobs": 0, "failed_jobs": 0}


def too_large(logs: list[dict]) -> list[dict]:
    return [entry for entry in logs if entry["event"] == "peer_answer_too_large"]


async def test_a_queue_status_past_the_limit_is_given_up_as_it_arrives_and_the_count_is_held(
    flooding_peer: FloodingPeer, make_verda_client
):
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT)
    async with QueueStatusReader(flooding_peer.url) as reader:
        loop = ScalerLoop(ScalingConfig(target_wait_s=None), backend, reader)
        with capture_logs() as logs:
            decision = await loop.tick()
    await backend.aclose()
    assert (decision.reason, decision.details["verda_error"]) == ("hold_observation_failed", None)
    assert f"more than {API_ANSWER_BYTES} bytes" in decision.details["queue_error"]
    # /health, read alongside, is bounded the same way (its gauge then reads -1: no status read).
    logged = sorted((entry["peer"], entry["limit_bytes"], entry["request"]) for entry in too_large(logs))
    requests = ("GET /api/queue/status", "GET /health")
    assert logged == [("queue manager", API_ANSWER_BYTES, request) for request in requests]
    assert loop.metrics.registry.get_sample_value("comfy_scaler_queue_manager_healthy") == -1
    assert flooding_peer.sent < flooding_peer.flood_bytes, "the reader hung up once past the limit"


async def test_an_announced_oversize_is_refused_before_its_body_arrives(flooding_peer: FloodingPeer):
    flooding_peer.announce = 10 * 1024**3
    flooding_peer.flood_bytes = 0  # it announces 10 GB and sends nothing: the reader must not wait for it
    async with QueueStatusReader(flooding_peer.url, timeout_s=30) as reader:
        with capture_logs() as logs, pytest.raises(QueueStatusError, match="announced 10737418240 bytes"):
            await reader.read()
    assert too_large(logs)[0]["peer"] == "queue manager"


async def test_a_job_list_past_the_limit_leaves_its_timings_empty_and_the_counts_stand():
    """Like any unreadable job list (comfy-multi lists no finished jobs): the status counts still decide."""
    async with FloodingPeer({"/api/queue/status": STATUS}, flood_bytes=8 * ONE_MIB) as peer:
        reader = QueueStatusReader(peer.url, answer_limit_bytes=ONE_MIB)
        try:
            with capture_logs() as logs:
                status = await reader.read_with_timings(now=1_000_000.0)
        finally:
            await reader.aclose()
    assert (status.pending_jobs, status.running_jobs) == (3, 1)
    assert (status.pending_ages_s, status.running_elapsed_s, status.recent_durations_s) == ((), (), ())
    assert {entry["request"] for entry in too_large(logs)} == {"GET /api/jobs"}
    assert all(entry["limit_bytes"] == ONE_MIB for entry in too_large(logs))


async def test_a_replica_list_past_the_limit_is_a_failed_read_not_retried_and_the_count_is_held(
    fake_verda: FakeVerda, verda_credentials, qm
):
    replicas = f"/container-deployments/{DEPLOYMENT}/replicas"
    fake_verda.fail_next(replicas, 200, body={"list": [
        {"id": f"replica-{n:06d}" + "x" * 200, "status": "running", "started_at": "2026-12-01T09:00:00Z"}
        for n in range(8000)
    ]})
    client_id, secret = verda_credentials
    backend = VerdaBackend(VerdaClient(client_id, secret, base_url=fake_verda.url, answer_limit_bytes=ONE_MIB),
                           DEPLOYMENT)
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(ScalingConfig(target_wait_s=None), backend, reader)
        with capture_logs() as logs:
            decision = await loop.tick()
    await backend.aclose()
    assert decision.reason == "hold_observation_failed" and decision.details["queue_error"] is None
    assert f"AnswerTooLarge: Verda answered GET /v1{replicas} with more than {ONE_MIB} bytes" in decision.details[
        "verda_error"
    ]
    [logged] = too_large(logs)
    assert (logged["peer"], logged["limit_bytes"]) == ("Verda", ONE_MIB)
    assert len(fake_verda.requests_to(replicas)) == 1, "the same broken answer is not asked for again"


async def test_runpods_pod_list_and_a_pods_health_are_bounded_too(flooding_peer: FloodingPeer):
    flooding_peer.flood_bytes = 8 * ONE_MIB
    async with RunPodClient("rpa_key", base_url=flooding_peer.url, answer_limit_bytes=ONE_MIB) as runpod:
        limit = f"RunPod answered GET /pods with more than {ONE_MIB} bytes"
        with capture_logs() as logs, pytest.raises(AnswerTooLarge, match=limit):
            await runpod.list_pods()
    assert too_large(logs)[0]["peer"] == "RunPod"
    probe = PodHealthProbe(flooding_peer.url + "/{pod_id}/health")
    try:
        assert await probe.unhealthy(["pod-1"]) == {}, "an answer past the limit says nothing about the worker"
    finally:
        await probe.aclose()


async def test_a_valid_json_answer_of_a_few_mib_is_refused_by_default_it_would_parse_into_gigabytes():
    """A JSON body is 20-70 times larger once parsed: a 63 MiB replica list of `{}` (under the old 64 MiB limit)
    took the scaler to 4.2 GB peak RSS. The scaler's peers answer KB; its readers stop at 4 MiB."""
    replicas = {"list": [{}] * (API_ANSWER_BYTES // 4 + 1)}  # "{}, " each: just past the limit
    paths = {"/oauth2/token": {"access_token": "t", "expires_in": 3600},
             f"/container-deployments/{DEPLOYMENT}/replicas": replicas,
             "/pods": {"pods": replicas["list"]}, "/api/queue/status": {**STATUS, "pad": replicas["list"]}}
    async with FloodingPeer(paths) as peer:
        async with VerdaClient("id", "secret", base_url=peer.url, max_attempts=1) as verda:
            with capture_logs(), pytest.raises(AnswerTooLarge):
                await verda.get_replicas(DEPLOYMENT)
        async with RunPodClient("rpa_key", base_url=peer.url, max_attempts=1) as runpod:
            with capture_logs(), pytest.raises(AnswerTooLarge):
                await runpod.list_pods()
        async with QueueStatusReader(peer.url) as reader:
            with capture_logs(), pytest.raises(QueueStatusError, match=f"more than {API_ANSWER_BYTES} bytes"):
                await reader.read()
