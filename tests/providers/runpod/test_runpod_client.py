"""The RunPod client against the fake RunPod API: requests, errors, retries, create without duplicates."""

from __future__ import annotations

import asyncio
import functools
import io
import json
from collections.abc import Callable

import httpx
import pytest
import structlog
from aiohttp import web

from common.logs import configure_logging, error_text
from scaler.policy import MAX_PRICE_PER_HOUR
from scaler.providers.base import MAX_LISTED_REPLICAS
from scaler.providers.runpod.client import (
    CreateUnconfirmedError,
    RunPodAPIError,
    RunPodClient,
    error_from_response,
    pod_from_json,
)
from scaler.providers.runpod.health import PodHealthProbe
from standins.runpod import FakeRunPod

from ...conftest import ManualClock
from ..conftest import DrippingPeer, NestingPeer, RecordingSleep
from .conftest import API_KEY, GPU, pod_body


async def test_create_list_get_terminate(fake: FakeRunPod, runpod: RunPodClient, clock: ManualClock) -> None:
    fake.provision_delay_s, fake.start_delay_s = 5, 10
    created = await runpod.create_pod(pod_body())
    assert created.status == "PROVISIONING" and created.name == "comfy-test-0" and created.gpu_id == GPU
    clock.advance(5)
    assert (await runpod.get_pod(created.id)).status == "STARTING"
    clock.advance(10)
    running = await runpod.get_pod(created.id)
    assert running.status == "RUNNING" and running.started_at is not None and running.cost_per_hour == 0.69
    assert [p.id for p in await runpod.list_pods()] == [created.id]
    assert await runpod.terminate_pod(created.id) is True
    assert await runpod.list_pods() == []
    assert await runpod.terminate_pod(created.id) is False  # already gone: not an error


async def test_sends_the_key_as_a_bearer_token(fake: FakeRunPod, runpod: RunPodClient) -> None:
    await runpod.list_pods()
    assert fake.requests_to("/pods", "GET")


async def test_wrong_key_is_a_clear_error_and_is_not_retried(
    fake: FakeRunPod, make_client: Callable[..., RunPodClient]
) -> None:
    client = make_client(api_key="rpa_wrong")
    with pytest.raises(RunPodAPIError) as caught:
        await client.list_pods()
    assert caught.value.status == 401
    assert "GET /pods" in str(caught.value) and "check RUNPOD_API_KEY" in str(caught.value)
    assert len(fake.requests_to("/pods")) == 1


def test_empty_key_is_refused_before_any_request() -> None:
    with pytest.raises(ValueError, match="RUNPOD_API_KEY"):
        RunPodClient("")


async def test_reads_are_retried_on_server_errors(
    fake: FakeRunPod, runpod: RunPodClient, sleeps: RecordingSleep
) -> None:
    fake.fail_next("/pods", 503, times=2, method="GET")
    fake.fail_next("/pods", 502, method="GET", non_json=True)
    assert await runpod.list_pods() == []
    assert len(fake.requests_to("/pods", "GET")) == 4
    assert len(sleeps.waits) == 3


async def test_a_request_timeout_answer_is_retried(fake: FakeRunPod, runpod: RunPodClient) -> None:
    fake.fail_next("/pods", 408, method="GET")
    assert await runpod.list_pods() == []
    assert len(fake.requests_to("/pods", "GET")) == 2


async def test_retry_after_is_honoured(fake: FakeRunPod, runpod: RunPodClient, sleeps: RecordingSleep) -> None:
    fake.fail_next("/pods", 429, method="GET", retry_after="7")
    await runpod.list_pods()
    assert sleeps.waits == [7.0]


async def test_reads_give_up_after_max_attempts_naming_the_request(fake: FakeRunPod, runpod: RunPodClient) -> None:
    fake.fail_next("/pods", 500, times=10, method="GET")
    with pytest.raises(RunPodAPIError, match=r"500 on GET /pods"):
        await runpod.list_pods()
    assert len(fake.requests_to("/pods", "GET")) == 4


async def test_invalid_create_is_not_retried_and_lists_every_violation(fake: FakeRunPod, runpod: RunPodClient) -> None:
    with pytest.raises(RunPodAPIError) as caught:
        await runpod.create_pod(pod_body(bogus=1, disk=0))
    error = caught.value
    assert error.status == 422
    assert any("bogus" in e for e in error.errors) and any("/disk" in e for e in error.errors)
    assert "bogus" in str(error)
    assert len(fake.requests_to("/pods", "POST")) == 1


async def test_lost_create_answer_is_found_by_listing_not_retried(fake: FakeRunPod, runpod: RunPodClient) -> None:
    fake.fail_next("/pods", 502, method="POST", after_effect=True)
    pod = await runpod.create_pod(pod_body(name="comfy-test-lost"))
    assert pod.name == "comfy-test-lost"
    assert len(fake.requests_to("/pods", "POST")) == 1
    assert [p.name for p in fake.pods.values()] == ["comfy-test-lost"]


async def test_failed_create_is_retried_once_the_listing_shows_no_pod(fake: FakeRunPod, runpod: RunPodClient) -> None:
    fake.fail_next("/pods", 503, method="POST")
    await runpod.create_pod(pod_body())
    assert len(fake.requests_to("/pods", "POST")) == 2
    assert len(fake.requests_to("/pods", "GET")) == 1
    assert len(fake.pods) == 1


async def test_create_is_not_retried_when_the_listing_cannot_be_read(fake: FakeRunPod, runpod: RunPodClient) -> None:
    fake.fail_next("/pods", 503, method="POST", after_effect=True)
    fake.fail_next("/pods", 503, times=10, method="GET")
    with pytest.raises(CreateUnconfirmedError, match="the pod may exist"):
        await runpod.create_pod(pod_body())
    assert len(fake.requests_to("/pods", "POST")) == 1
    assert len(fake.pods) == 1  # it was made: the next reconcile will count it


async def test_rate_limited_create_is_retried_without_listing(fake: FakeRunPod, runpod: RunPodClient) -> None:
    fake.fail_next("/pods", 429, method="POST", retry_after="1")
    await runpod.create_pod(pod_body())
    assert len(fake.requests_to("/pods", "POST")) == 2
    assert fake.requests_to("/pods", "GET") == []


async def test_transport_errors_are_retried(
    fake: FakeRunPod, make_client: Callable[..., RunPodClient], sleeps: RecordingSleep
) -> None:
    await fake.stop()
    client = make_client(max_attempts=2)
    with pytest.raises(httpx.TransportError):
        await client.list_pods()
    assert len(sleeps.waits) == 1


async def test_terminate_is_retried_on_server_errors(fake: FakeRunPod, runpod: RunPodClient) -> None:
    pod = await runpod.create_pod(pod_body())
    fake.fail_next(f"/pods/{pod.id}", 503, method="DELETE")
    assert await runpod.terminate_pod(pod.id) is True
    assert fake.pods == {}


async def test_gpu_price(runpod: RunPodClient) -> None:
    assert await runpod.gpu_price_per_hour(GPU) == 0.69
    assert await runpod.gpu_price_per_hour(GPU, cloud="COMMUNITY") == 0.34
    with pytest.raises(RunPodAPIError, match="404"):
        await runpod.gpu_price_per_hour("NVIDIA Imaginary")


@pytest.mark.parametrize(
    ("prices", "field"),
    [({"secure": True}, "price.secure=True"), ({"secure": -0.69}, "price.secure=-0.69"),
     ({"secure": float("nan")}, "price.secure=nan"), ({"secure": 1e-320}, "price.secure=1e-320"),
     ({"secure": "0.69"}, "price.secure='0.69'"), ("0.69", "price='0.69'")],
    ids=["true", "negative", "nan", "tiny", "string", "not an object"],
)
async def test_a_catalogue_price_that_is_no_price_is_an_error_naming_it(
    fake: FakeRunPod, runpod: RunPodClient, prices: object, field: str
) -> None:
    """Before: `true` was read as 1.0 an hour (a bool is an int), and -0.69 or NaN printed by the deploy as the
    pod's price; a price given as a string, or a price that is no object, was read as none listed, which the
    deploy blamed on the operator (`runpod.cloud: RunPod lists no SECURE pod price`). Now an error naming the
    request and the field, as any other broken answer."""
    fake.fail_next(f"/catalog/gpus/{GPU}", 200, method="GET", body={"id": GPU, "price": prices})
    with pytest.raises(RunPodAPIError, match=r"GET /catalog/gpus/\{id\}") as raised:
        await runpod.gpu_price_per_hour(GPU)
    assert field in str(raised.value)


async def test_an_error_answer_of_megabytes_is_quoted_only_in_part(fake: FakeRunPod, runpod: RunPodClient) -> None:
    """Before: a 400 whose title, detail and errors held 3 MB made an error text of 3 MB, logged whole at every
    scaler tick (runpod_reconcile_failed) and kept as the backend's refusal shown in its status."""
    body = {"title": "t" * 1_000_000, "detail": "d" * 1_000_000, "errors": ["e" * 1_000] * 1_000}
    fake.fail_next("/pods", 400, method="POST", body=body)
    with pytest.raises(RunPodAPIError) as caught:
        await runpod.create_pod(pod_body())
    assert caught.value.status == 400 and caught.value.detail.startswith("ddd")
    assert len(str(caught.value)) < 2_000


async def test_the_api_key_never_reaches_logs_or_errors(
    fake: FakeRunPod, make_client: Callable[..., RunPodClient]
) -> None:
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    try:
        client = make_client()
        fake.fail_next("/pods", 503, method="GET")
        await client.list_pods()
        structlog.get_logger().info("runpod_debug", header=f"Bearer {API_KEY}", note=f"key is {API_KEY}")
        with pytest.raises(RunPodAPIError) as caught:
            await make_client(api_key="rpa_other").list_pods()
    finally:
        structlog.reset_defaults()
    output = stream.getvalue()
    assert "runpod_request_retry" in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert API_KEY not in output and "rpa_other" not in output, lines
    assert API_KEY not in repr(client) and "rpa_other" not in str(caught.value)


@pytest.mark.parametrize("offset", [40, 52, 56])
async def test_an_answer_quoted_in_an_error_keeps_no_part_of_the_key_across_the_cut(
    fake: FakeRunPod, runpod: RunPodClient, offset: int
) -> None:
    """The client quotes 60 characters of an answer of the wrong shape. Cut before the scrub, the key echoed
    across the cut kept its first characters ("rpa_test" at offset 52), which no scrubber knew any more."""
    fake.fail_next("/pods", 200, method="GET", body={"pods": ["x" * offset + API_KEY]})
    with pytest.raises(RunPodAPIError, match="is not an object") as caught:
        await runpod.list_pods()
    shown = error_text(caught.value)
    assert API_KEY[:4] not in shown and API_KEY[:4] not in str(caught.value), shown


async def test_an_answer_that_drips_is_given_up_at_the_timeout_and_retried(dripping_peer, sleeps) -> None:
    """As for Verda: httpx's timeout bounds each read, and a byte every 20 ms held the caller for ever."""
    client = RunPodClient(API_KEY, base_url=dripping_peer.url, timeout_s=0.3, max_attempts=2, sleep=sleeps)
    try:
        async with asyncio.timeout(30):  # a guard for the old code, not a measure
            with pytest.raises(httpx.ReadTimeout, match=r"RunPod took more than 0\.3 s to answer GET /pods"):
                await client.list_pods()
    finally:
        await client.aclose()
    assert dripping_peer.requests == 2


async def test_an_answer_nested_past_the_json_parser_is_an_error_naming_runpod(nesting_peer, sleeps) -> None:
    """Before, json raised RecursionError (not a ValueError): a traceback out of ./deploy-serverless.sh."""
    client = RunPodClient(API_KEY, base_url=nesting_peer.url, max_attempts=1, sleep=sleeps)
    try:
        with pytest.raises(RunPodAPIError, match="non-JSON answer"):
            await client.list_pods()
    finally:
        await client.aclose()


@pytest.mark.parametrize("peer", [DrippingPeer, functools.partial(NestingPeer, depth=20_000)], ids=["drips", "nests"])
async def test_a_pods_health_that_drips_or_nests_says_nothing_about_the_worker(peer) -> None:
    """Before, a /health dripping a byte every 20 ms held the scaler's apply until its tick deadline, and one
    nested past the JSON parser (40 KB, under the 64-KiB read limit) raised RecursionError out of observe()."""
    async with peer() as server:
        probe = PodHealthProbe(server.url + "/{pod_id}/health", timeout_s=0.3)
        try:
            async with asyncio.timeout(30):  # a guard for the old code, not a measure
                assert await probe.unhealthy(["pod-1"]) == {}
        finally:
            await probe.aclose()


async def test_a_pod_id_cannot_send_the_health_probe_to_another_host() -> None:
    """A pod id is RunPod's answer, put into the proxy's host name. Before: the id "127.0.0.1:<port>/x?" sent the
    probe to that address, whose 503 "unhealthy" had the pod judged unhealthy (stopped and terminated); now the
    id is quoted into the host name, which no such id leaves."""
    async def unhealthy(_request: web.Request) -> web.Response:
        return web.json_response({"status": "unhealthy", "reason": "says who"}, status=503)

    app = web.Application()
    app.router.add_get("/{tail:.*}", unhealthy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    probe = PodHealthProbe("http://{pod_id}-{port}.proxy.invalid/health", timeout_s=2, unhealthy_after=1)
    try:
        assert await probe.unhealthy([f"127.0.0.1:{port}/x?"]) == {}
    finally:
        await probe.aclose()
        await runner.cleanup()


async def test_a_pod_list_longer_than_any_deployment_is_an_error_naming_the_request(
    fake: FakeRunPod, runpod: RunPodClient
) -> None:
    """As the Verda client's replica list: more than MAX_LISTED_REPLICAS is a broken answer, a failed read (the
    spend ledger would charge every pod of it)."""
    listed = MAX_LISTED_REPLICAS + 1
    pods = [{"id": f"p{n}", "name": f"comfy-{n:08x}", "status": "RUNNING", "cost": 0.69} for n in range(listed)]
    fake.fail_next("/pods", 200, method="GET", body={"pods": pods})
    with pytest.raises(RunPodAPIError, match=f"GET /pods.*{listed} pods listed: more than {listed - 1}"):
        await runpod.list_pods()
    fake.fail_next("/pods", 200, method="GET", body={"pods": pods[:-1]})
    assert len(await runpod.list_pods()) == listed - 1


def test_a_pod_without_cost_or_gpu_count_costs_0_on_0_gpus_and_the_highest_price_is_a_price() -> None:
    """A stopped pod (its container gone, its volume kept) may be listed without a cost or a GPU count."""
    pod = pod_from_json({"id": "p1", "name": "comfy-0123abcd", "status": "EXITED", "gpu": {"id": GPU}}, "GET /pods")
    assert (pod.cost_per_hour, pod.gpu_id, pod.gpu_count) == (0.0, GPU, 0)
    pod = pod_from_json({"id": "p1", "name": "comfy-0123abcd", "cost": MAX_PRICE_PER_HOUR}, "GET /pods")
    assert pod.cost_per_hour == MAX_PRICE_PER_HOUR


def _problem(body: object) -> RunPodAPIError:
    response = httpx.Response(400, json=body, request=httpx.Request("POST", "https://api.runpod.io/v2/pods"))
    return error_from_response(response, "POST /pods")


@pytest.mark.parametrize(
    ("body", "title", "detail"),
    [({"title": "Bad Request"}, "Bad Request", ""), ({"detail": "gpuCount must be 1-8"}, "", "gpuCount must be 1-8")],
    ids=["title-alone", "detail-alone"],
)
def test_a_problem_body_with_a_title_or_a_detail_alone_is_read_as_one(body, title, detail) -> None:
    error = _problem(body)
    assert (error.status, error.title, error.detail) == (400, title, detail)


@pytest.mark.parametrize(("count", "quoted"), [(5, [f"e{i}" for i in range(5)]),
                                               (7, [*(f"e{i}" for i in range(5)), "2 more"])])
def test_a_problem_bodys_errors_are_quoted_five_at_most_then_counted(count: int, quoted: list[str]) -> None:
    assert _problem({"title": "Bad Request", "errors": [f"e{i}" for i in range(count)]}).errors == quoted
