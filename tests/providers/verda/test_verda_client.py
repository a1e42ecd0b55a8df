"""VerdaClient against the fake Verda API on loopback: auth, retries, errors, secrets hygiene, scaling."""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import datetime

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from common.logs import error_text, scrub
from scaler.policy import MAX_REPLICAS_LIMIT
from scaler.providers.verda.backend import VerdaBackend
from scaler.providers.verda.client import TOKEN_WARN_EVERY_S, VerdaAPIError, VerdaClient, check_deployment_name
from standins.verda import CONTAINER_TYPES, FakeVerda

from ...conftest import wait_for
from .conftest import NAME, h100_deployment

LIST = "/container-deployments"


def deployment_body(name: str = NAME, min_replicas: int = 0) -> dict:
    container = {
        "image": "ghcr.io/acme/worker:1.0.0",
        "exposed_port": 8000,
        "healthcheck": {"enabled": True, "port": 8000, "path": "/health"},
        "entrypoint_overrides": {"enabled": False},
        "env": [{"name": "SERVERLESS_MODE", "value_or_reference_to_secret": "true", "type": "plain"}],
        "volume_mounts": [{"type": "memory", "mount_path": "/dev/shm", "size_in_mb": 1024}],
    }
    triggers = {"cpu_utilization": {"enabled": False}, "gpu_utilization": {"enabled": False}}
    return h100_deployment(container, name=name, min_replicas=min_replicas, triggers=triggers)


def grants(fake: FakeVerda) -> list[str]:
    return [r.json["grant_type"] for r in fake.requests_to("/oauth2/token")]


async def renewal_done(verda: VerdaClient) -> None:
    """Wait for the token renewal under way, if any."""
    renewal = verda.fetch_token_ahead()
    if renewal is not None:
        await renewal


# --- authentication ---------------------------------------------------------------------------


async def test_authenticates_once_and_sends_bearer(fake: FakeVerda, verda: VerdaClient) -> None:
    assert await verda.list_deployments() == []
    assert await verda.list_deployments() == []
    assert grants(fake) == ["client_credentials"]
    assert fake.requests_to("/oauth2/token")[0].json["client_id"] == "test-id"


async def test_wrong_credentials_raise_unauthorized_without_retry(fake: FakeVerda, make_client, sleeps) -> None:
    client = make_client(client_id="someone-else")
    with pytest.raises(VerdaAPIError) as caught:
        await client.list_deployments()
    assert (caught.value.status, caught.value.code) == (401, "unauthorized_request")
    assert len(fake.requests_to("/oauth2/token")) == 1
    assert sleeps.waits == []


async def test_refreshes_ahead_of_expiry(fake: FakeVerda, verda: VerdaClient, clock) -> None:
    await verda.list_deployments()
    clock.advance(89)  # token_ttl_s=100: still before the 90% mark
    await verda.list_deployments()
    assert grants(fake) == ["client_credentials"]
    clock.advance(2)
    await verda.list_deployments()  # with the token in hand; the renewal goes on beside it
    await renewal_done(verda)
    assert grants(fake) == ["client_credentials", "refresh_token"]


async def test_rejected_refresh_falls_back_to_full_authentication(fake: FakeVerda, verda: VerdaClient, clock) -> None:
    await verda.list_deployments()
    fake.revoke_refresh_tokens()
    clock.advance(95)
    await verda.list_deployments()
    await renewal_done(verda)
    assert grants(fake) == ["client_credentials", "refresh_token", "client_credentials"]


async def test_expired_token_is_replaced_once_on_401(fake: FakeVerda, verda: VerdaClient) -> None:
    await verda.list_deployments()
    fake.expire_tokens()
    assert await verda.list_deployments() == []
    assert grants(fake) == ["client_credentials", "client_credentials"]
    assert len(fake.requests_to(LIST)) == 3  # ok, 401, ok


async def test_a_token_due_for_renewal_serves_the_reads_while_it_is_renewed(
    fake: FakeVerda, make_client, clock
) -> None:
    """A fleet gives a read 3.75 s; a renewal asked for before the reads made them two answers long, and one
    that failed failed the read with a token still valid for minutes. Now the token in hand serves until it
    expires, and the renewal is asked for beside the reads."""
    verda = make_client(max_attempts=1)
    await verda.list_deployments()
    clock.advance(95)  # token_ttl_s=100: past the 90% mark, not expired
    fake.fail_next("/oauth2/token", 503)
    with capture_logs() as logs:
        assert await verda.list_deployments() == [], "the token in hand still serves"
        await wait_for(lambda: any(e["event"] == "verda_token_request_failed" for e in logs))
    assert await verda.list_deployments() == []  # and asks for a renewal again
    await renewal_done(verda)
    clock.advance(10)  # the first token has expired
    assert await verda.list_deployments() == []
    assert grants(fake) == ["client_credentials", "refresh_token", "refresh_token"]
    assert len(fake.requests_to(LIST)) == 4, "no read was refused on the way"


async def test_callers_cut_off_and_at_once_share_one_token_request(fake: FakeVerda, verda: VerdaClient) -> None:
    """A read cut off by the fleet's deadline while its token request was under way took the request with it:
    the next read asked again, and at 2 s an answer never got further than the token."""
    fake.latency_s = 0.2
    first = asyncio.create_task(verda.list_deployments())
    await wait_for(lambda: grants(fake))
    first.cancel()
    assert await asyncio.gather(verda.list_deployments(), verda.list_deployments()) == [[], []]
    assert grants(fake) == ["client_credentials"]


async def test_a_401_asks_for_one_new_token_even_when_its_reader_is_cut_off(
    fake: FakeVerda, verda: VerdaClient
) -> None:
    """After a 401 the read waits for a new token; cut off meanwhile (a fleet's 3.75 s at 2 s an answer), it
    took the token request with it, and every later tick was refused, asked again and cut off again."""
    await verda.list_deployments()
    fake.expire_tokens()
    fake.latency_s = 0.2
    first = asyncio.create_task(verda.list_deployments())
    await wait_for(lambda: len(grants(fake)) == 2)  # refused: a new token asked for
    first.cancel()
    assert await verda.list_deployments() == []
    assert grants(fake) == ["client_credentials", "client_credentials"], "one new token, not one per read"


async def test_second_401_raises(fake: FakeVerda, verda: VerdaClient) -> None:
    fake.fail_next(LIST, 401, times=2)
    with pytest.raises(VerdaAPIError) as caught:
        await verda.list_deployments()
    assert caught.value.status == 401
    assert len(fake.requests_to(LIST)) == 2
    assert grants(fake) == ["client_credentials", "client_credentials"]


# --- retries ----------------------------------------------------------------------------------


async def test_retries_429_503_and_proxy_page_then_succeeds(fake: FakeVerda, verda: VerdaClient, sleeps) -> None:
    fake.fail_next(LIST, 429)
    fake.fail_next(LIST, 503)
    fake.fail_next(LIST, 502, non_json=True)
    assert await verda.list_deployments() == []
    assert len(fake.requests_to(LIST)) == 4
    assert len(sleeps.waits) == 3


async def test_honours_retry_after(fake: FakeVerda, verda: VerdaClient, sleeps) -> None:
    fake.fail_next(LIST, 429, retry_after="7")
    await verda.list_deployments()
    assert sleeps.waits == [7.0]


async def test_backoff_is_capped(fake: FakeVerda, make_client, sleeps) -> None:
    client = make_client(backoff_initial_s=1, backoff_max_s=2, max_attempts=6)
    fake.fail_next(LIST, 503, times=5, retry_after="3600")
    await client.list_deployments()
    assert len(sleeps.waits) == 5
    assert max(sleeps.waits) <= 2


async def test_gives_up_after_max_attempts(fake: FakeVerda, make_client, sleeps) -> None:
    client = make_client(max_attempts=3)
    fake.fail_next(LIST, 502, times=10, non_json=True)
    with pytest.raises(VerdaAPIError) as caught:
        await client.list_deployments()
    error = caught.value
    assert (error.status, error.code) == (502, "non_json_response")
    assert error.message.startswith("<html>") and len(error.message) <= 200
    assert "502" in str(error) and "non_json_response" in str(error)
    assert len(fake.requests_to(LIST)) == 3


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_no_retry_on_client_errors(fake: FakeVerda, verda: VerdaClient, sleeps, status) -> None:
    fake.fail_next(LIST, status)
    with pytest.raises(VerdaAPIError) as caught:
        await verda.list_deployments()
    assert caught.value.status == status
    assert len(fake.requests_to(LIST)) == 1
    assert sleeps.waits == []


async def test_an_error_answer_of_megabytes_is_quoted_only_in_part(fake: FakeVerda, verda: VerdaClient) -> None:
    """Before: a 400 whose code and message held 2 MB made an error text of 2 MB, logged whole at every scaler tick
    and shown by `status` and the deploy (as RunPod's, quoted in part since fee3a39)."""
    fake.fail_next(LIST, 400, body={"code": "c" * 1_000_000, "message": "m" * 1_000_000, "details": ["d" * 1_000]})
    with pytest.raises(VerdaAPIError) as caught:
        await verda.list_deployments()
    assert caught.value.status == 400 and caught.value.message.startswith("mmm")
    assert len(str(caught.value)) < 1_000


async def test_not_found_surfaces_verda_code_and_message(verda: VerdaClient) -> None:
    with pytest.raises(VerdaAPIError) as caught:
        await verda.get_deployment("missing")
    error = caught.value
    assert (error.status, error.code, error.message) == (404, "not_found", "Deployment missing not found")
    assert str(error) == (
        "Verda API error 404 not_found on GET /v1/container-deployments/missing: Deployment missing not found"
    )


async def test_retries_transport_errors(make_client, sleeps) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{closed_port}/v1", max_attempts=3)
    with pytest.raises(httpx.ConnectError):
        await client.list_deployments()
    assert len(sleeps.waits) == 2


async def test_base_url_is_the_one_given_and_cannot_be_switched(fake: FakeVerda, make_client) -> None:
    """Switching it kept the transport chosen for the first URL: direct for loopback, through the proxy else."""
    client = make_client(base_url=fake.url + "/")
    assert client.base_url == fake.url
    assert await client.list_deployments() == []
    with pytest.raises(AttributeError):
        client.base_url = "https://api.verda.com/v1"


# --- secrets never leak -----------------------------------------------------------------------


async def test_secret_and_tokens_never_logged_or_shown(
    fake: FakeVerda, verda: VerdaClient, clock, client_secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        await verda.list_deployments()
        clock.advance(95)
        await verda.list_deployments()  # refresh
        await renewal_done(verda)
        fake.expire_tokens()
        await verda.list_deployments()  # 401, re-authenticate
        fake.fail_next(LIST, 503)
        await verda.list_deployments()  # retry logged
        with pytest.raises(VerdaAPIError) as caught:
            await verda.get_deployment("missing")
    assert any(e["event"] == "verda_request_retry" for e in events)
    issued = fake.tokens_issued
    assert len(issued) == 3
    text = " ".join([repr(events), caplog.text, repr(verda), str(verda), str(caught.value), repr(caught.value)])
    for secret in [client_secret, *issued]:
        assert secret not in text


async def test_the_scrubber_masks_the_token_in_use_and_the_one_it_replaced_and_forgets_older_ones(
    fake: FakeVerda, verda: VerdaClient
) -> None:
    """Were each replaced token masked for good, a scaler renewing its token all month would compare every log
    line with every token it ever had."""
    for _ in range(3):
        await verda.list_deployments()
        fake.expire_tokens()
    first, replaced, in_use = fake.tokens_issued
    assert scrub(f"{first} {replaced} {in_use}") == f"{first} *** ***"


@pytest.mark.parametrize("offset", [70, 85, 96])
async def test_an_answer_quoted_in_an_error_keeps_no_part_of_a_token_across_the_cut(
    fake: FakeVerda, verda: VerdaClient, offset: int
) -> None:
    """The client quotes 100 characters of an answer of the wrong shape. Cut before the scrub, a token echoed
    across the cut kept its first characters, which no scrubber knew any more."""
    await verda.create_deployment(deployment_body(min_replicas=1))
    (token,) = fake._access_tokens
    pad = "x" * (offset - len("{'list': '"))
    fake.fail_next(f"/container-deployments/{NAME}/replicas", 200, body={"list": pad + token})
    with pytest.raises(VerdaAPIError, match="unexpected_answer") as caught:
        await verda.get_replicas(NAME)
    shown = error_text(caught.value)
    assert token[:4] not in shown and token[:4] not in str(caught.value), shown

# --- deployments, scaling, replicas ------------------------------------------------------------


async def test_deployment_lifecycle(fake: FakeVerda, verda: VerdaClient) -> None:
    created = await verda.create_deployment(deployment_body())
    assert created["containers"][0]["name"]
    assert [d["name"] for d in await verda.list_deployments()] == [NAME]
    assert (await verda.get_deployment(NAME))["containers"][0]["name"] == created["containers"][0]["name"]
    assert await verda.get_status(NAME) == "healthy"
    await verda.delete_deployment(NAME)
    assert await verda.list_deployments() == []


async def test_delete_is_sent_once_then_polled_until_404(fake: FakeVerda, verda: VerdaClient, sleeps) -> None:
    """Verda deletes asynchronously: the DELETE (with Verda's `timeout`, ms) is not repeated into
    "being deleted"; the deployment is read until it answers 404, sooner first, then backing off."""
    fake.delete_reads = 3
    await verda.create_deployment(deployment_body())
    assert await verda.delete_deployment(NAME) is True
    assert NAME not in fake.deployments
    deletes = fake.requests_to(f"{LIST}/{NAME}", "DELETE")
    assert len(deletes) == 1
    assert [r.method for r in fake.requests if r.path == f"{LIST}/{NAME}"] == ["DELETE"] + ["GET"] * 4
    assert sleeps.waits == [0.25, 0.5, 1.0]
    assert await verda.delete_deployment(NAME) is False, "already gone"


async def test_delete_answered_with_a_server_error_is_polled_through(fake: FakeVerda, verda: VerdaClient) -> None:
    await verda.create_deployment(deployment_body())
    fake.fail_next(f"{LIST}/{NAME}", 504, method="DELETE", after_effect=True)
    assert await verda.delete_deployment(NAME) is True
    assert len(fake.requests_to(f"{LIST}/{NAME}", "DELETE")) == 1 and NAME not in fake.deployments


async def test_delete_gives_up_at_its_deadline(fake: FakeVerda, make_client, clock) -> None:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    fake.delete_reads = 10_000
    verda = make_client(sleep=sleep)
    await verda.create_deployment(deployment_body())
    with pytest.raises(TimeoutError, match="still exists"):
        await verda.delete_deployment(NAME, deadline_s=30, poll_s=5)
    assert len(fake.requests_to(f"{LIST}/{NAME}", "DELETE")) == 1


async def test_create_answered_500_after_creating_is_not_posted_again(fake: FakeVerda, verda: VerdaClient) -> None:
    fake.fail_next(LIST, 500, method="POST", after_effect=True)
    created = await verda.create_deployment(deployment_body())
    assert created["name"] == NAME and created["containers"][0]["name"]
    assert len(fake.requests_to(LIST, "POST")) == 1


async def test_create_that_failed_is_looked_up_then_retried(fake: FakeVerda, verda: VerdaClient) -> None:
    fake.fail_next(LIST, 503, method="POST")
    await verda.create_deployment(deployment_body())
    assert [(r.method, r.path) for r in fake.requests if r.path.startswith(LIST)] == [
        ("POST", LIST), ("GET", f"{LIST}/{NAME}"), ("POST", LIST)
    ]


async def test_secret_created_despite_an_error_is_not_created_again(fake: FakeVerda, verda: VerdaClient) -> None:
    fake.fail_next("/secrets", 502, method="POST", after_effect=True)
    await verda.create_secret("queue-token", "s3cr3t")
    assert fake.secrets == {"queue-token": "s3cr3t"}
    assert len(fake.requests_to("/secrets", "POST")) == 1


async def test_status_override_and_pause_resume(fake: FakeVerda, verda: VerdaClient) -> None:
    await verda.create_deployment(deployment_body(min_replicas=2))
    fake.set_status(NAME, "quota_reached")
    assert await verda.get_status(NAME) == "quota_reached"
    fake.set_status(NAME, None)
    await verda.pause(NAME)
    assert await verda.get_status(NAME) == "paused"
    assert await verda.get_replicas(NAME) == []
    await verda.resume(NAME)
    assert await verda.get_status(NAME) == "healthy"
    assert len(await verda.get_replicas(NAME)) == 2
    await verda.restart(NAME)
    assert [r.method for r in fake.requests if r.path.endswith(("/pause", "/resume", "/restart"))] == ["POST"] * 3


async def test_set_replica_bounds_writes_only_the_count(fake: FakeVerda, verda: VerdaClient) -> None:
    await verda.create_deployment(deployment_body())
    before = await verda.get_scaling(NAME)
    assert await verda.set_replica_bounds(NAME, 2, 4) is True
    patches = fake.requests_to(f"{LIST}/{NAME}/scaling", "PATCH")
    assert len(patches) == 1
    assert patches[0].json == {"min_replica_count": 2, "max_replica_count": 4}
    assert await verda.get_scaling(NAME) == {**before, "min_replica_count": 2, "max_replica_count": 4}
    assert await verda.set_replica_bounds(NAME, 2, 4) is False
    assert len(fake.requests_to(f"{LIST}/{NAME}/scaling", "PATCH")) == 1


async def test_set_replica_bounds_writes_over_a_scaling_answer_that_is_not_json(
    fake: FakeVerda, verda: VerdaClient
) -> None:
    """A 200 of an HTML page on GET .../scaling kept the kill switch from pinning to 0: nothing was written."""
    await verda.create_deployment(deployment_body())
    fake.fail_next(f"{LIST}/{NAME}/scaling", 200, method="GET", non_json=True)
    assert await verda.set_replica_bounds(NAME, 0, 0) is True
    scaling = await verda.get_scaling(NAME)
    assert (scaling["min_replica_count"], scaling["max_replica_count"]) == (0, 0)


async def test_set_replica_bounds_writes_over_bounds_of_true(fake: FakeVerda, verda: VerdaClient) -> None:
    """Before: true == 1, so a scaling answer {min: true, max: true} read as the bounds (1, 1) already held."""
    await verda.create_deployment(deployment_body())
    scaling = {**await verda.get_scaling(NAME), "min_replica_count": True, "max_replica_count": True}
    fake.fail_next(f"{LIST}/{NAME}/scaling", 200, method="GET", body=scaling)
    assert await verda.set_replica_bounds(NAME, 1, 1) is True
    patches = fake.requests_to(f"{LIST}/{NAME}/scaling", "PATCH")
    assert [patch.json for patch in patches] == [{"min_replica_count": 1, "max_replica_count": 1}]


async def test_set_replica_bounds_rejects_inverted_bounds(verda: VerdaClient) -> None:
    with pytest.raises(ValueError, match="min <= max"):
        await verda.set_replica_bounds(NAME, 3, 2)


async def test_replicas_follow_min_replica_count(fake: FakeVerda, verda: VerdaClient, clock) -> None:
    fake.replica_start_delay_s = 30
    await verda.create_deployment(deployment_body())
    assert await verda.get_replicas(NAME) == []
    await verda.set_replica_bounds(NAME, 3, 5)
    replicas = await verda.get_replicas(NAME)
    assert [r.status for r in replicas] == ["provisioning"] * 3
    assert all(isinstance(r.started_at, datetime) and r.started_at.tzinfo for r in replicas)
    clock.advance(30)
    assert [r.status for r in await verda.get_replicas(NAME)] == ["running"] * 3
    await verda.set_replica_bounds(NAME, 1, 5)
    assert [r.id for r in await verda.get_replicas(NAME)] == [replicas[0].id]


@pytest.mark.parametrize(
    "body",
    [[], {}, {"list": None}, {"items": []}, {"list": "replica-1"}, {"list": [["replica-1", "running"]]},
     {"list": [{"status": "running", "started_at": "2026-12-05T10:00:00Z"}] * 2},
     {"list": [{"id": "", "status": "running"}]}, {"list": [{"id": None, "status": "running"}]}],
    ids=["a-list", "empty-object", "list-null", "other-key", "list-a-string", "entries-not-objects",
         # Charged by (id, start): two replicas started together without ids were one replica's spend.
         "entries-without-id", "empty-id", "null-id"],
)
async def test_replicas_of_the_wrong_shape_are_an_error_not_zero_replicas(
    fake: FakeVerda, verda: VerdaClient, body
) -> None:
    """Read as "no replicas", a wrong shape stopped the billing and looked like replicas that never started."""
    await verda.create_deployment(deployment_body(min_replicas=1))
    fake.fail_next(f"/container-deployments/{NAME}/replicas", 200, body=body)
    with pytest.raises(VerdaAPIError, match="unexpected_answer") as raised:
        await verda.get_replicas(NAME)
    assert "/replicas" in str(raised.value)
    assert len(await verda.get_replicas(NAME)) == 1


async def test_a_replica_list_longer_than_ten_times_what_the_scaler_drives_is_refused(
    fake: FakeVerda, verda: VerdaClient
) -> None:
    """Believed, a list of 14,000 replicas took a tick 13 s and 504 MiB: each is charged up to a day of intervals.
    The scaler drives at most MAX_REPLICAS_LIMIT; ten times that is still read, so a count raised in the console
    can be pinned back."""
    await verda.create_deployment(deployment_body(min_replicas=1))
    most = 10 * MAX_REPLICAS_LIMIT
    for listed in (most, most + 1):
        fake.fail_next(f"/container-deployments/{NAME}/replicas", 200,
                       body={"list": [{"id": f"r{n}", "started_at": "2026-12-05T10:00:00Z"} for n in range(listed)]})
    assert len(await verda.get_replicas(NAME)) == most
    with pytest.raises(VerdaAPIError, match=f"{most + 1} replicas listed: more than {most} is not a plausible list"):
        await verda.get_replicas(NAME)
    assert len(await verda.get_replicas(NAME)) == 1


async def test_update_scaling_sends_what_it_is_given(fake: FakeVerda, verda: VerdaClient) -> None:
    await verda.create_deployment(deployment_body())
    before = await verda.get_scaling(NAME)
    answer = await verda.update_scaling(NAME, {"scale_down_policy": {"delay_seconds": 60}})
    assert answer == {**before, "scale_down_policy": {"delay_seconds": 60}}
    assert fake.requests_to(f"{LIST}/{NAME}/scaling", "PATCH")[0].json == {"scale_down_policy": {"delay_seconds": 60}}


# --- secrets, catalogue -----------------------------------------------------------------------


async def test_secrets_create_list_delete(fake: FakeVerda, verda: VerdaClient) -> None:
    await verda.create_secret("queue-token", "s3cr3t")
    assert await verda.list_secrets() == ["queue-token"]
    assert fake.secrets == {"queue-token": "s3cr3t"}
    await verda.delete_secret("queue-token")
    assert await verda.list_secrets() == []
    assert fake.requests_to("/secrets/queue-token", "DELETE")[0].json is None


async def test_prices(verda: VerdaClient) -> None:
    assert await verda.price_per_hour("H100") == pytest.approx(2.30)
    assert await verda.price_per_hour("h100", spot=True) < 2.30
    with pytest.raises(LookupError):
        await verda.price_per_hour("H100", size=8)


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ([{**CONTAINER_TYPES[0], "serverless_price": True}], "H100 SXM5 80GB: serverless_price=True"),
        ([{**CONTAINER_TYPES[0], "serverless_spot_price": None}], "serverless_spot_price=None"),
        ([{**CONTAINER_TYPES[0], "gpu": {"number_of_gpus": "one"}}], "gpu.number_of_gpus='one'"),
        ({"container_types": "H100 2.30"}, "expected [container type objects]"),
        (["H100 2.30"], "expected [container type objects]"),
    ],
)
async def test_a_price_list_that_is_no_price_list_is_an_error_naming_the_field(
    fake: FakeVerda, verda: VerdaClient, answer, named
) -> None:
    """A price of true was read as 1.0 an hour (and passed the price check); the other shapes failed as a bare
    KeyError, AttributeError or ValueError naming neither Verda nor the field."""
    fake.fail_next("/container-types", 200, body=answer)
    with pytest.raises(VerdaAPIError, match="unexpected_answer") as caught:
        await verda.price_per_hour("H100")
    assert "GET /container-types" in str(caught.value) and named in str(caught.value)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"is_spot": "false"}, "is_spot='false' is not true or false"),
        ({"compute": "H100"}, "compute.name=None is not a name"),
        ({"compute": {"name": "H100", "size": True}}, "compute.size=True is not a GPU count"),
        ({"compute": {"name": "H100", "size": 1.5}}, "compute.size=1.5 is not a GPU count"),
        ({"compute": {"size": 1}}, "compute.name=None is not a name"),
    ],
)
async def test_a_deployment_priced_by_a_field_of_another_kind_is_an_error_naming_it(
    fake: FakeVerda, verda: VerdaClient, change, named
) -> None:
    """Before: is_spot "false" (a string, true as a bool) was priced at the spot price, 2.30 -> 0.92 an hour for
    the budgets and the bill; a compute that was no object failed as an AttributeError naming neither the field
    nor Verda; a size of 1.5 priced one GPU."""
    backend = VerdaBackend(verda, NAME)
    await verda.create_deployment(deployment_body())
    assert await backend.price_per_hour() == pytest.approx(2.30)
    fake.fail_next(f"{LIST}/{NAME}", 200, method="GET", body={**await verda.get_deployment(NAME), **change})
    with pytest.raises(VerdaAPIError, match="unexpected_answer") as caught:
        await backend.price_per_hour()
    assert f"GET {LIST}/{NAME}" in str(caught.value) and named in str(caught.value)


async def test_an_answer_that_drips_is_given_up_at_the_timeout_and_retried(dripping_peer, sleeps) -> None:
    """httpx's timeout bounds each read; a peer sending a byte every 20 ms never tripped it, and before, the
    deploy (or a tick) waited on it for ever: at that pace the 4 MiB read limit comes after 23 hours."""
    client = VerdaClient("test-id", "secret", base_url=dripping_peer.url, timeout_s=0.3, max_attempts=2, sleep=sleeps)
    try:
        async with asyncio.timeout(30):  # a guard for the old code, not a measure
            with pytest.raises(httpx.ReadTimeout, match=r"Verda took more than 0\.3 s to answer POST /oauth2/token"):
                await client.list_deployments()
    finally:
        await client.aclose()
    assert dripping_peer.requests == 2, "a timed-out answer is retried like any transport error"


@pytest.mark.parametrize("name", ["comfy\n", "comfy\r\n", "-comfy", "comfy-", "a" * 64])
def test_a_deployment_name_verda_would_refuse_is_refused(name: str) -> None:
    """`$` matches before a trailing newline: "comfy\\n" passed, in the deploy and in the scaler's settings."""
    with pytest.raises(ValueError, match="must be at most 63 characters"):
        check_deployment_name(name)


async def test_an_answer_nested_past_the_json_parser_is_an_error_naming_verda(nesting_peer, sleeps) -> None:
    """Before, json raised RecursionError (not a ValueError): a traceback out of ./deploy-serverless.sh."""
    client = VerdaClient("test-id", "secret", base_url=nesting_peer.url, max_attempts=1, sleep=sleeps)
    try:
        with pytest.raises(VerdaAPIError, match="non_json_response"):
            await client.list_deployments()
    finally:
        await client.aclose()


async def test_short_token_lifetimes_of_the_warnings_last_hour_are_counted_when_it_ends(
    fake: FakeVerda, verda: VerdaClient, clock
) -> None:
    """Only a short token after the hour logged how many came before it: 1 + 3 short tokens within the hour
    logged one line (more_since_last=0), the other 3 counted nowhere."""
    fake.token_ttl_s = 30
    with capture_logs() as logs:
        await verda.list_deployments()
        clock.advance(TOKEN_WARN_EVERY_S - 0.3)  # the token has expired; the hour ends 0.3 s from now
        await verda.list_deployments()
        for _ in range(2):
            fake.expire_tokens()  # refused: renewed at once
            await verda.list_deployments()
        await wait_for(lambda: any(entry["event"] == "verda_token_lifetime_short_held_back" for entry in logs))
    assert [entry["more_since_last"] for entry in logs if entry["event"] == "verda_token_lifetime_short"] == [0]
    [held_back] = [entry for entry in logs if entry["event"] == "verda_token_lifetime_short_held_back"]
    assert (held_back["more_since_last"], held_back["log_level"]) == (3, "warning")
