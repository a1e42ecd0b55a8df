"""What the providers and the queue manager answer, taken adversarially: odd but well-formed answers from the
fake Verda and the fake RunPod on loopback, and what the scaler makes of them."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from common.logs import scrub
from queue_manager.server import QueueManagerServer
from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.cli import main
from scaler.fleet import FleetBackend, Member
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING, CostLedger
from scaler.loop import ScalerLoop
from scaler.policy import Replica, ScalingConfig
from scaler.providers.runpod.backend import LISTING_LAG_S, RunPodBackend
from scaler.providers.runpod.client import RunPodAPIError, RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from scaler.providers.verda.backend import VerdaBackend
from scaler.providers.verda.client import VerdaAPIError, VerdaClient
from scaler.queue_status import QueueStatusReader
from scaler.wiring import stop_provider
from standins.runpod import FakeRunPod
from standins.verda import FakeVerda

from ..conftest import ManualClock
from .conftest import CALL_CUT_OFF_S, DEPLOYMENT, VERDA_ID, VERDA_SECRET, operator_env_with

TICK_S = 15.0
WORKFLOW = {"1": {"class_type": "Noop", "inputs": {}}}
RUNPOD_KEY = "rpa_test_key"
POD_BODY = {"image": "ghcr.io/acme/worker:1", "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}, "cloud": "SECURE",
            "disk": 20, "ports": ["8000/http"]}
VERDA_PRICE = 2.30


def one_provider_fleet(name: str, backend, price: float, billing, clock: ManualClock) -> FleetBackend:
    spec = ProviderSpec(name, 5, price)
    return FleetBackend([Member(spec, backend, billing)], AllocatorConfig((spec,)), clock=clock)


async def spent_on_one_pod_over_five_minutes(pod: dict, clock: ManualClock) -> float:
    """What the ledger charges for ``pod`` listed by the fake RunPod at six reads a minute apart (five minutes)."""
    async with FakeRunPod(RUNPOD_KEY, clock=clock) as fake:
        fake.fail_next("/pods", 200, method="GET", times=10, body={"pods": [pod]})
        client = RunPodClient(RUNPOD_KEY, base_url=fake.url, max_attempts=1)
        backend = RunPodBackend(client, "comfy", {}, clock=clock, health=PodHealthProbe(fake.health_url))
        fleet = one_provider_fleet("runpod", backend, 0.69, RUNPOD_BILLING, clock)
        try:
            for _ in range(5):
                await fleet.observe()
                clock.advance(60.0)
            await fleet.observe()
        finally:
            await fleet.aclose()
    return fleet.ledger.spent_since(0)


async def test_a_verda_replica_listed_without_started_at_is_charged_once_not_at_every_tick(
    fake_verda: FakeVerda, make_verda_client, clock: ManualClock
):
    # Verda lists a replica still being placed without its start; before, each tick took it for a new replica
    # started then: 40 ticks charged 40 intervals (15.33 $ in ten minutes for one replica at 2.30 $/h).
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/replicas", 200, method="GET", times=40,
                         body={"list": [{"id": "replica-a", "status": "provisioning"}]})
    fleet = one_provider_fleet("verda", VerdaBackend(make_verda_client(), DEPLOYMENT, clock=clock), VERDA_PRICE,
                               VERDA_BILLING, clock)
    try:
        starts = set()
        for _ in range(40):  # ten minutes: one started 10-minute interval, two if a boundary falls inside
            starts.add((await fleet.observe()).replicas[0].started_at)
            clock.advance(TICK_S)
    finally:
        await fleet.aclose()
    assert len(starts) == 1
    assert fleet.ledger.spent_since(0) <= 2 * VERDA_PRICE * 600 / 3600 + 1e-9


async def test_a_verda_replica_placed_then_given_its_start_is_charged_once(
    fake_verda: FakeVerda, make_verda_client, wall: ManualClock, queue
):
    # Listed without started_at while placed (2 ticks; both backends read it), then with it. Before, the start
    # that appeared made a new replica for both ledgers: a second first interval (0.77 $ for ten minutes, not 0.38).
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/replicas", 200, method="GET", times=4,
                         body={"list": [{"id": "replica-a", "status": "provisioning"}]})
    started = datetime.fromtimestamp(wall() + 50, UTC).isoformat()
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/replicas", 200, method="GET", times=20,
                         body={"list": [{"id": "replica-a", "status": "running", "started_at": started}]})
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall)
    fleet = one_provider_fleet("verda", VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall), VERDA_PRICE,
                               VERDA_BILLING, wall)
    queue.running = 1
    loop = ScalerLoop(ScalingConfig(price_per_replica_hour=VERDA_PRICE), backend, queue, clock=wall)
    try:
        for _ in range(12):  # three minutes: one started 10-minute interval
            await loop.tick()
            await fleet.observe()
            wall.advance(TICK_S)
    finally:
        await fleet.aclose()
        await backend.aclose()
    interval = VERDA_PRICE * 600 / 3600
    assert loop.state.ledger.spent_since(0) == pytest.approx(interval)
    assert fleet.ledger.spent_since(0) == pytest.approx(interval)


async def test_a_verda_replica_missing_from_one_listing_is_not_charged_again(
    fake_verda: FakeVerda, make_verda_client, wall: ManualClock, queue
):
    # Before: the policy's ledger forgot a replica absent from one listing, and charged its first interval again
    # when it was listed at the next tick (0.77 $ for two minutes of one replica at 2.30 $/h, not 0.38 $).
    replica = {"id": "replica-a", "status": "running", "started_at": datetime.fromtimestamp(wall(), UTC).isoformat()}
    for listed, times in (([replica], 4), ([], 1), ([replica], 4)):
        fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/replicas", 200, method="GET", times=times,
                             body={"list": listed})
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall)
    queue.running = 1
    loop = ScalerLoop(ScalingConfig(price_per_replica_hour=VERDA_PRICE), backend, queue, clock=wall)
    try:
        for _ in range(9):
            await loop.tick()
            wall.advance(TICK_S)
    finally:
        await backend.aclose()
    assert loop.state.ledger.spent_since(0) == pytest.approx(VERDA_PRICE * 600 / 3600)


async def test_a_runpod_pod_missing_from_one_listing_is_not_charged_its_runtime_again():
    # Before: the cost ledger forgot a pod absent from one listing, and charged it again from its creation when it
    # was listed at the next read: 23 minutes billed for a pod that ran 16.
    clock = ManualClock(1_000_000.0)
    pod = {"id": "pod-1", "name": "comfy-0123abcd", "status": "RUNNING", "cost": 0.69,
           "createdAt": datetime.fromtimestamp(clock(), UTC).isoformat().replace("+00:00", "Z")}
    async with FakeRunPod(RUNPOD_KEY, clock=clock) as fake:
        for listed, times in (([pod], 8), ([], 1), ([pod], 8)):
            fake.fail_next("/pods", 200, method="GET", times=times, body={"pods": listed})
        client = RunPodClient(RUNPOD_KEY, base_url=fake.url, max_attempts=1)
        backend = RunPodBackend(client, "comfy", {}, clock=clock, health=PodHealthProbe(fake.health_url))
        fleet = one_provider_fleet("runpod", backend, 0.69, RUNPOD_BILLING, clock)
        try:
            for _ in range(17):  # a read a minute; the one at minute 8 does not list it
                await fleet.observe()
                clock.advance(60.0)
        finally:
            await fleet.aclose()
    assert round(fleet.ledger.spent_since(0), 6) == round(16 * 60 * 0.69 / 3600, 6)


async def test_a_runpod_pod_listed_without_created_at_is_charged_per_second_from_when_it_was_first_seen():
    # Before, the pod's start was "now" at every read: per-second billing charged it nothing, ever.
    clock = ManualClock(1_000_000.0)
    pod = {"id": "pod-1", "name": "comfy-0123abcd", "status": "RUNNING", "cost": 0.69}
    assert round(await spent_on_one_pod_over_five_minutes(pod, clock), 6) == round(300 * 0.69 / 3600, 6)


async def test_a_pod_listing_without_names_is_an_error_not_zero_pods_to_create_again_and_again():
    # Before: the backend did not recognise its own pods, created two more at every observe (12 pods after five
    # ticks for a count of 2) and the kill switch reported "stopped: 0 replicas" while all of them ran.
    async with FakeRunPod(RUNPOD_KEY) as fake:
        backend = RunPodBackend(RunPodClient(RUNPOD_KEY, base_url=fake.url, max_attempts=1), "comfy", POD_BODY)
        try:
            await backend.apply(2)
            nameless = [{k: v for k, v in fake._pod_json(pod).items() if k != "name"} for pod in fake.pods.values()]
            fake.fail_next("/pods", 200, method="GET", times=100, body={"pods": nameless})
            for _ in range(5):
                with pytest.raises(RunPodAPIError, match=r"pods\[0\]\.name=None is not a non-empty string"):
                    await backend.observe()
            # The pin and the pause must answer in time for the listing's error to be the one named.
            result = await stop_provider("runpod", backend, timeout_s=CALL_CUT_OFF_S, poll_s=0.1)
        finally:
            await backend.aclose()
        assert len(fake.live_pods()) == 2
    assert not result.stopped
    assert "pods[0].name" in result.detail


@pytest.mark.parametrize(("entry", "named"), [
    (1, "pods[0] is not an object"),
    ({"id": "p", "name": "comfy-0123abcd", "status": "RUNNING", "cost": "abc"}, "pods[0].cost='abc' is not a number"),
    ({"id": "p", "name": "comfy-0123abcd", "status": "RUNNING", "gpu": {"count": "two"}},
     "pods[0].gpu.count='two' is not a whole number"),
    # Before: taken, and shown by `comfy-deploy runpod status` as "$nan/h" ("$inf/h", "$-0.69/h"); 10**400 raised
    # OverflowError: int too large to convert to float.
    *(({"id": "p", "name": "comfy-0123abcd", "status": "RUNNING", "cost": cost},
       f"pods[0].cost={repr(cost)[:60]} is not an hourly cost") for cost in (math.nan, math.inf, -0.69, 10**400)),
])
async def test_a_pod_of_the_wrong_shape_is_an_error_naming_the_field_and_runpod(entry, named):
    # Before: AttributeError: 'int' object has no attribute 'get'; ValueError: could not convert string to float.
    async with FakeRunPod(RUNPOD_KEY) as fake:
        fake.fail_next("/pods", 200, method="GET", body={"pods": [entry]})
        backend = RunPodBackend(RunPodClient(RUNPOD_KEY, base_url=fake.url, max_attempts=1), "comfy", POD_BODY)
        try:
            with pytest.raises(RunPodAPIError) as raised:
                await backend.observe()
        finally:
            await backend.aclose()
    assert str(raised.value).startswith("RunPod API error 200 on GET /pods: unexpected answer: ")
    assert named in str(raised.value)


async def test_job_lists_that_fail_while_the_counts_answer_are_logged_and_the_default_duration_is_used(qm, backend):
    # Before: the failure was silent (no log line at all); the planning quietly went on without timings.
    qm.store.submit("alice", WORKFLOW)
    qm.faults.inject("list-jobs", status=500, times=3)
    async with QueueStatusReader(qm.url) as reader:
        loop = ScalerLoop(ScalingConfig(target_wait_s=120, default_job_duration_s=240), backend, reader)
        with capture_logs() as logs:
            observation = await loop.observe()
    assert observation.pending == 1 and observation.queue_error is None
    assert observation.job_duration_s == 240
    unreadable = [e for e in logs if e["event"] == "queue_job_list_unreadable"]
    assert sorted(e["list"] for e in unreadable) == [f"GET /api/jobs?status={s}" for s in ("completed", "pending",
                                                                                          "running")]
    assert all(e["peer"] == "queue manager" and e["error"].startswith("HTTP 500") for e in unreadable)


async def test_completions_from_a_queue_manager_clock_years_ahead_are_left_out_not_planned_with(backend):
    # The manager's clock ran 3 years ahead while five jobs ran: before, the median job was 1.9e7 s (219 days) long and
    # the plan gave every queued job a replica of its own.
    clock = ManualClock(1_700_000_000.0)
    async with QueueManagerServer(clock=clock) as server:
        for _ in range(5):
            job = server.store.submit("alice", WORKFLOW)
            server.store.pop_next("w1", server.mode)
            clock.advance(3 * 365 * 86400 / 5)
            server.store.complete(job.id, {})
        server.store.submit("bob", WORKFLOW)
        async with QueueStatusReader(server.url) as reader:
            loop = ScalerLoop(ScalingConfig(target_wait_s=120, default_job_duration_s=240), backend, reader,
                              clock=lambda: 1_700_000_100.0)
            with capture_logs() as logs:
                observation = await loop.observe()
    assert observation.job_duration_s == 240
    assert observation.pending_ages_s == ()  # bob "was submitted" 3 years from now
    (warning,) = [e for e in logs if e["event"] == "queue_job_times_implausible"]
    assert warning["peer"] == "queue manager" and warning["skipped"]["completed_at"] == 5


@pytest.mark.parametrize("command", [["status", "--json"], ["status"], ["once", "--dry-run"]])
async def test_a_secret_verda_echoes_never_reaches_status_or_the_decision_log(cli_env, fake_verda, capsys, command,
                                                                             monkeypatch):
    # Before: `status` printed Verda's error as is (no scrubbing on print), and the "Scaling decision" log line
    # carried it inside `details`, which the log scrubber did not look into.
    monkeypatch.setenv("SCALER_PRICE_PER_REPLICA_HOUR", "2.3")
    secret = cli_env["VERDA_CLIENT_SECRET"]
    fake_verda.fail_next("/oauth2/token", 401, times=20,
                         body={"code": "unauthorized_request", "message": f"no client with secret {secret}"})
    assert await asyncio.to_thread(main, command) == 1
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "unauthorized_request" in shown and "with secret ***" in shown  # the table may wrap the rest
    assert secret not in shown


@pytest.mark.parametrize("peer", ["queue manager", "verda"])
async def test_a_lone_surrogate_a_peer_sends_is_shown_escaped_by_status_not_a_traceback(cli_env, qm, fake_verda, capsys,
                                                                                       monkeypatch, peer):
    # Before: JSON may escape a lone UTF-16 surrogate ("\\ud800"), which no UTF-8 stream can write: `status` quoted
    # the answer in its table and ended in UnicodeEncodeError (a traceback, exit 1) instead of naming the error.
    monkeypatch.setenv("SCALER_PRICE_PER_REPLICA_HOUR", "2.3")
    if peer == "verda":
        fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/status", 400, times=20,
                             body={"code": "invalid_request", "message": "odd \ud800 text"})
    else:
        qm.faults.inject("queue-status", status=200, body='"odd \\ud800 text"', times=20)
    assert await asyncio.to_thread(main, ["status"]) == 1
    shown = capsys.readouterr().out
    assert "unreadable" in shown and "\\ud800" in shown  # the table may wrap the text around it


@pytest.mark.parametrize("peer", ["queue manager", "verda"])
async def test_escape_sequences_a_peer_sends_are_shown_escaped_by_status_not_obeyed(cli_env, qm, fake_verda, capsys,
                                                                                    monkeypatch, peer):
    # Before: rich's escape() handles markup only and rich drops BEL, BS, VT, FF and CR alone: an ESC sequence in
    # a peer's error retitled the operator's terminal (ESC ] 0 ; ... BEL) or cleared it (ESC [ 2 J).
    monkeypatch.setenv("SCALER_PRICE_PER_REPLICA_HOUR", "2.3")
    hostile = "odd \x1b]0;pwned\x07 then \x1b[2J text"
    if peer == "verda":
        fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/status", 400, times=20,
                             body={"code": "invalid_request", "message": hostile})
    else:
        qm.faults.inject("queue-status", status=200, body='"odd \\u001b]0;pwned\\u0007 then \\u001b[2J text"', times=20)
    assert await asyncio.to_thread(main, ["status"]) == 1
    shown = capsys.readouterr().out
    assert "unreadable" in shown and "\x1b" not in shown, shown
    assert "\\x1b]0;pwned\\x07" in shown and "\\x1b[2J" in shown, shown


@pytest.mark.parametrize(("command", "action"), [(["stop"], "pause"), (["stop", "--all"], "pause"),
                                                 (["resume"], "resume")])
async def test_escape_sequences_in_a_refusal_are_shown_escaped_by_the_kill_switch(cli_env, fake_verda, capsys,
                                                                                 monkeypatch, tmp_path, command,
                                                                                 action):
    # Before: stop, stop --all and resume printed the provider's refusal as it came: ESC ] 0 ; ... BEL retitled
    # the operator's terminal, ESC [ 2 J cleared it, right when they read whether the kill switch held.
    if "--all" in command:
        operator_env_with(cli_env, monkeypatch, {"SCALER_PROVIDERS": "verda", "SCALER_VERDA_PRICE_PER_HOUR": "2.30",
                                                 "SCALER_LEDGER_FILE": str(tmp_path / "ledger.json")})
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/{action}", 400, times=20,
                         body={"code": "invalid_request", "message": "odd \x1b]0;pwned\x07 then \x1b[2J text"})
    assert await asyncio.to_thread(main, command) == 1
    shown = capsys.readouterr().err
    assert "invalid_request" in shown and "\x1b" not in shown, shown
    assert "\\x1b]0;pwned\\x07" in shown and "\\x1b[2J" in shown, shown


@pytest.mark.parametrize("command", [["status", "--json"], ["once", "--dry-run"]])
async def test_an_access_token_verda_echoes_never_reaches_status_or_the_log(cli_env, fake_verda, capsys, command,
                                                                            monkeypatch):
    # The tokens Verda issues were not known to the scrubber: a 403 quoting the bearer went out as is.
    monkeypatch.setenv("SCALER_PRICE_PER_REPLICA_HOUR", "2.3")
    access, refresh = "issued-access-token-4b1d", "issued-refresh-token-9c2e"

    def issue_known_tokens() -> web.Response:
        fake_verda._access_tokens[access] = float("inf")
        return web.json_response({"access_token": access, "refresh_token": refresh, "expires_in": 3600})

    monkeypatch.setattr(fake_verda, "_issue_tokens", issue_known_tokens)
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/status", 403, times=20,
                         body={"code": "forbidden", "message": f"token {access} (refresh {refresh}) lacks a scope"})
    assert await asyncio.to_thread(main, command) == 1
    shown = "".join(capsys.readouterr())
    assert "forbidden" in shown and "token *** (refresh ***)" in shown
    assert access not in shown and refresh not in shown


async def test_a_token_of_one_letter_from_verda_does_not_mask_that_letter_in_every_log_line(fake_verda,
                                                                                          make_verda_client,
                                                                                          monkeypatch):
    # Before: with the issued tokens registered as secrets, a Verda issuing the token "e" turned every log line
    # into "***v******y ...ica ******ady" (seen against a stand-in issuing "t": `status` logs were unreadable).
    def issue_one_letter_tokens() -> web.Response:
        fake_verda._access_tokens["e"] = float("inf")
        return web.json_response({"access_token": "e", "refresh_token": "r", "expires_in": 3600})

    monkeypatch.setattr(fake_verda, "_issue_tokens", issue_one_letter_tokens)
    async with make_verda_client() as verda:
        await verda.get_status(DEPLOYMENT)
    assert scrub("every replica ready") == "every replica ready"


@pytest.mark.parametrize(("answer", "named"), [
    ({"token": "abc"}, "access_token"),  # before: KeyError: 'access_token'
    ([{"access_token": "abc"}], "access_token"),  # before: AttributeError: 'list' object has no attribute 'get'
    ({"access_token": 12345678901, "expires_in": 3600}, "access_token"),  # before: AttributeError (.encode)
])
async def test_a_token_answer_of_the_wrong_shape_is_a_verda_error_naming_the_field(fake_verda, make_verda_client,
                                                                                  answer, named):
    fake_verda.fail_next("/oauth2/token", 200, body=answer)
    async with make_verda_client() as verda:
        with pytest.raises(VerdaAPIError) as raised:
            await verda.get_status(DEPLOYMENT)
    assert str(raised.value).startswith("Verda API error 200 unexpected_answer: POST /oauth2/token: ")
    assert named in str(raised.value)


@pytest.mark.parametrize("expires_in", ["soon", -60, None])
async def test_a_token_expiry_that_is_no_duration_refreshes_on_the_first_401_not_at_every_request(
    fake_verda, make_verda_client, expires_in
):
    # Before: "soon" raised ValueError at every tick; with -60 or none the token was renewed at once (2 token
    # requests for 3 reads here), as if expired.
    fake_verda.fail_next("/oauth2/token", 200, body={"access_token": "issued-by-hand-0123", "expires_in": expires_in})
    fake_verda._access_tokens["issued-by-hand-0123"] = float("inf")
    before = len(fake_verda.requests_to("/oauth2/token"))  # the fixture's own client
    async with make_verda_client() as verda:
        for _ in range(3):
            await verda.get_status(DEPLOYMENT)
    assert len(fake_verda.requests_to("/oauth2/token")) - before == 1


@pytest.mark.parametrize("expires_in", [1e-300, 0.5])
async def test_a_token_lifetime_too_short_to_use_is_taken_as_a_minute(fake_verda, expires_in):
    # Before: 1e-300 was taken as the token's lifetime, expired as soon as issued: a token request before every
    # read (3 for 3 reads here).
    fake_verda.fail_next("/oauth2/token", 200, body={"access_token": "issued-by-hand-0123", "expires_in": expires_in})
    fake_verda._access_tokens["issued-by-hand-0123"] = float("inf")
    clock = ManualClock()
    before = len(fake_verda.requests_to("/oauth2/token"))  # the fixture's own client
    with capture_logs() as logs:
        async with VerdaClient(VERDA_ID, VERDA_SECRET, base_url=fake_verda.url, clock=clock) as verda:
            for _ in range(3):
                await verda.get_status(DEPLOYMENT)
                clock.advance(10)
    assert len(fake_verda.requests_to("/oauth2/token")) - before == 1
    [short] = [entry for entry in logs if entry["event"] == "verda_token_lifetime_short"]
    assert short["log_level"] == "warning" and short["taken_as_s"] == 60


async def test_a_short_token_lifetime_is_warned_about_once_not_at_every_renewal(fake_verda):
    # Before: one warning at each token renewal, 5 here, 60 an hour while Verda's tokens last 30 s.
    fake_verda.token_ttl_s = 30
    clock = ManualClock()
    before = len(fake_verda.requests_to("/oauth2/token"))  # the fixture's own client
    with capture_logs() as logs:
        async with VerdaClient(VERDA_ID, VERDA_SECRET, base_url=fake_verda.url, clock=clock) as verda:
            for _ in range(5):
                await verda.get_status(DEPLOYMENT)
                clock.advance(61)
    assert len(fake_verda.requests_to("/oauth2/token")) - before == 5, "renewed as each minute ran out"
    assert [entry["event"] for entry in logs].count("verda_token_lifetime_short") == 1


@pytest.mark.parametrize(("where", "answer", "named"), [
    ("status", {"status": 5}, "status=5 is not a status"),  # before: "5", taken as running
    ("status", {}, "status=None is not a status"),  # before: "unknown", taken as running
    ("scaling", {"min_replica_count": -1, "max_replica_count": -1}, "min_replica_count=-1"),  # before: drift
    ("scaling", {"min_replica_count": "2", "max_replica_count": "2"}, "min_replica_count='2'"),  # before: ignored
    ("scaling", {"min_replica_count": True, "max_replica_count": True}, "min_replica_count=True"),  # before: 1
    ("scaling", [], "not an object"),
])
async def test_a_status_or_scaling_of_the_wrong_shape_holds_the_tick_naming_the_field(
    fake_verda, make_verda_client, queue, where, answer, named
):
    backend = VerdaBackend(make_verda_client(), DEPLOYMENT)
    loop = ScalerLoop(ScalingConfig(target_wait_s=None), backend, queue)
    queue.pending = 3
    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/{where}", 200, method="GET", body=answer)
    try:
        decision = await loop.tick()
        fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/scaling", 200, method="GET", body=answer)
        await backend.apply(0)  # the kill switch's pin writes even when the scaling it reads first is garbage
    finally:
        await backend.aclose()
    assert decision.reason == "hold_observation_failed"
    error = decision.details["verda_error"]
    assert error.startswith(f"VerdaAPIError: Verda API error 200 unexpected_answer: GET /container-deployments/"
                            f"{DEPLOYMENT}/{where}: ") and named in error
    patches = fake_verda.requests_to(f"/container-deployments/{DEPLOYMENT}/scaling", "PATCH")
    assert [p.json for p in patches] == [{"min_replica_count": 0, "max_replica_count": 0}]


async def test_pods_created_but_not_listed_yet_are_not_created_again_at_every_tick():
    # A listing that lags 3 ticks behind the creates (the answer of before). Before: 8 pods for a count of 2 by
    # the third tick (two more each tick), 6 of them terminated once the listing caught up; now 2.
    clock = ManualClock(1_000_000.0)
    async with FakeRunPod(RUNPOD_KEY, clock=clock) as fake:
        backend = RunPodBackend(RunPodClient(RUNPOD_KEY, base_url=fake.url, max_attempts=1), "comfy", POD_BODY,
                                clock=clock)
        try:
            fake.fail_next("/pods", 200, method="GET", times=100, body={"pods": []})
            await backend.apply(2)
            for _ in range(3):
                clock.advance(TICK_S)
                await backend.observe()
                assert len(fake.live_pods()) == 2
            clock.advance(LISTING_LAG_S)  # a created pod never listed is taken as lost, and made again
            await backend.observe()
        finally:
            await backend.aclose()
        assert len(fake.live_pods()) == 4


@pytest.mark.parametrize("retry_after", ["0", "-5", "nan", "Wed, 21 Oct 2015 07:28:00 GMT"])
async def test_a_429_asking_for_no_wait_still_backs_off(fake_verda, retry_after):
    # Before: waits [0.0, 0.0, 0.0, 0.0], five requests back to back to an API that said it was overloaded.
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    fake_verda.fail_next(f"/container-deployments/{DEPLOYMENT}/status", 429, times=4, retry_after=retry_after)
    async with VerdaClient(VERDA_ID, VERDA_SECRET, base_url=fake_verda.url, backoff_initial_s=0.5,
                           sleep=sleep) as verda:
        await verda.get_status(DEPLOYMENT)
    assert len(waits) == 4 and min(waits) >= 0.5 and waits[-1] >= 4


@pytest.mark.parametrize("restarted_while", ["placed", "running"])
async def test_a_verda_replica_first_listed_without_started_at_is_not_charged_again_by_a_restarted_scaler(
    fake_verda: FakeVerda, make_verda_client, wall: ManualClock, tmp_path, restarted_while
):
    """Listed without started_at (being placed), the replica starts when first listed; a restarted scaler, which
    no longer knows that, took the start it saw for a new replica: 0.77 $ for three minutes of one replica, not
    0.38 $, and the whole run again for one listed longer."""
    replicas = f"/container-deployments/{DEPLOYMENT}/replicas"
    placed = {"list": [{"id": "replica-a", "status": "provisioning"}]}
    running = {"list": [{"id": "replica-a", "status": "running",
                         "started_at": datetime.fromtimestamp(wall() + 50, UTC).isoformat()}]}
    for body, times in ((placed, 4 if restarted_while == "placed" else 2), (running, 20)):
        fake_verda.fail_next(replicas, 200, method="GET", times=times, body=body)
    ledger_file = tmp_path / "ledger.json"
    for _ in range(2):  # a scaler, then the one restarted after it, with the same ledger file
        fleet = one_provider_fleet("verda", VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall), VERDA_PRICE,
                                   VERDA_BILLING, wall)
        fleet.ledger, fleet.ledger_file = CostLedger.load(ledger_file), ledger_file
        try:
            for _ in range(3 if restarted_while == "placed" else 6):
                await fleet.observe()
                wall.advance(TICK_S)
        finally:
            await fleet.aclose()
    assert fleet.ledger.spent_since(0) == pytest.approx(VERDA_PRICE * 600 / 3600)


def test_an_id_listed_again_long_after_its_replica_went_is_a_new_replica():
    """Ids are not known never to come back: one that was not in the last listing is charged as a new replica."""
    ledger = CostLedger()
    ledger.charge("verda", [Replica("r1", 0.0)], 60.0, price_per_hour=6.0, rule=VERDA_BILLING)
    ledger.charge("verda", [], 1200.0, price_per_hour=6.0, rule=VERDA_BILLING)
    ledger.charge("verda", [Replica("r1", 1300.0)], 1320.0, price_per_hour=6.0, rule=VERDA_BILLING)
    assert ledger.spent_since(-1) == pytest.approx(2 * 6.0 * 600 / 3600)


@pytest.mark.parametrize("command", [["status", "--json"], ["once", "--dry-run"]])
async def test_verda_refusing_the_credentials_names_the_settings_to_fix(cli_env, fake_verda, capsys, command,
                                                                        monkeypatch):
    """Drilled: a client secret revoked in Verda's console held the count (right) and logged at error level, but
    neither the "Scaling decision" line's verda_error nor `status` said which setting to fix, while the worker
    names QUEUE_MANAGER_TOKEN for the queue manager's 401."""
    monkeypatch.setenv("SCALER_PRICE_PER_REPLICA_HOUR", "2.3")
    monkeypatch.setenv("VERDA_CLIENT_SECRET", "a-revoked-secret")  # the fake accepts only VERDA_SECRET
    assert await asyncio.to_thread(main, command) == 1
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert "401 unauthorized_request" in shown
    assert "(check VERDA_CLIENT_ID / VERDA_CLIENT_SECRET)" in shown.replace("\n", " ")
    assert "a-revoked-secret" not in shown
