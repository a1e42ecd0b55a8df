"""/metrics exposition and what /status and the probes must never reveal."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable

import httpx
import pytest
import structlog
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.parser import text_string_to_metric_families

from common.logs import configure_logging
from worker.config import load_settings
from worker.state import Phase, WorkerState

from ..conftest import served


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_expose_worker_registry_and_live_gauges(client: httpx.AsyncClient, state: WorkerState) -> None:
    state.set_comfyui(True, "0.8.0")
    state.mark_ready()
    state.set_phase(Phase.IDLE)
    state.job_started("job-1")
    state.job_finished("completed")
    state.job_started("job-2")
    state.job_finished("failed")
    state.set_phase(Phase.IDLE)
    state.idle_poll()
    state.idle_poll()
    state.metrics.observe_phase("execution", 1.5)

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    values = samples(response.text)

    assert values[("comfy_worker_jobs_total", (("outcome", "completed"),))] == 1
    assert values[("comfy_worker_jobs_total", (("outcome", "failed"),))] == 1
    assert values[("comfy_worker_idle_polls_total", ())] == 2
    assert values[("comfy_worker_comfyui_up", ())] == 1
    assert values[("comfy_worker_state", (("state", "idle"),))] == 1
    assert values[("comfy_worker_state", (("state", "busy"),))] == 0
    assert values[("comfy_worker_job_phase_seconds_count", (("phase", "execution"),))] == 1
    assert values[("comfy_worker_consecutive_idle_polls", ())] == 2
    assert values[("comfy_worker_max_idle_polls", ())] == 10
    assert values[("comfy_worker_healthy", ())] == 1
    assert values[("comfy_worker_ready", ())] == 1
    assert 0 <= values[("comfy_worker_uptime_seconds", ())] < 60
    assert 0 <= values[("comfy_worker_heartbeat_age_seconds", ())] < 60
    build = ("comfy_worker_build_info", (("comfyui_version", "0.8.0"), ("worker_version", "9.9.9")))
    assert values[build] == 1


async def test_health_gauges_follow_the_probes(client: httpx.AsyncClient, state: WorkerState) -> None:
    values = samples((await client.get("/metrics")).text)
    assert (values[("comfy_worker_healthy", ())], values[("comfy_worker_ready", ())]) == (1, 0)

    state.mark_fatal("CUDA error: device-side assert triggered")
    values = samples((await client.get("/metrics")).text)
    assert (values[("comfy_worker_healthy", ())], values[("comfy_worker_ready", ())]) == (0, 0)


async def test_metrics_negotiate_openmetrics(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(OPENMETRICS_CONTENT_TYPE.split(";")[0])
    assert response.text.rstrip().endswith("# EOF")


async def test_no_secret_or_setting_reaches_any_endpoint(start_server, monkeypatch) -> None:
    token = "qm-token-5f2a9c1e-do-not-leak"
    # A secret in the query: a user and password would be refused beside the token (one Authorization header).
    monkeypatch.setenv("QUEUE_MANAGER_URL", "https://queue.example.com/?sig=hunter2-password")
    monkeypatch.setenv("QUEUE_MANAGER_TOKEN", token)
    settings = load_settings()
    assert settings.queue_manager_token is not None
    assert settings.queue_manager_token.get_secret_value() == token
    state = WorkerState(
        worker_id=settings.worker_id,
        provider=settings.inference_provider,
        version="1.0.0",
        max_idle_polls=settings.serverless_max_idle_polls,
        serverless=settings.serverless_mode,
    )
    state.job_started("job-1")
    client = await start_server(state)

    for path in ("/health", "/ready", "/metrics", "/status"):
        body = (await client.get(path)).text
        assert token not in body, path
        assert "hunter2" not in body, path
        assert "queue.example.com" not in body, path
        assert "QUEUE_MANAGER" not in body, path


async def json_log_of_one_request(
    handler: Callable[[web.Request], Awaitable[web.Response]], level: str, then: Callable[[], None] = lambda: None
) -> tuple[int, str]:
    """Serve ``handler`` on loopback, GET it once with httpx and call ``then``, all with JSON logs at ``level``:
    (the answer's status, the log)."""
    buffer = io.StringIO()
    configure_logging("json", level, stream=buffer)
    app = web.Application()
    app.router.add_get("/", handler)
    try:
        async with served(app) as url:
            async with httpx.AsyncClient() as http:
                status = (await http.get(f"{url}/")).status_code
            then()
    finally:
        structlog.reset_defaults()
    return status, buffer.getvalue()


async def test_aiohttp_tracebacks_and_url_credentials_go_through_the_json_log() -> None:
    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("boom while talking to https://user:hunter2@queue.example.com")

    def log_a_url() -> None:
        structlog.get_logger().info("Worker started", queue_manager="https://user:hunter2@queue.example.com/")

    status, logged = await json_log_of_one_request(broken, "info", then=log_a_url)
    assert status == 500
    records = [json.loads(line) for line in logged.splitlines()]
    [error] = [r for r in records if r["event"].startswith("Error handling request")]
    assert error["logger"] == "aiohttp.server" and error["level"] == "error"
    assert "RuntimeError: boom" in error["exception"]
    assert "hunter2" not in logged
    assert [r["queue_manager"] for r in records if r["event"] == "Worker started"] == [
        "https://***@queue.example.com/"
    ]


@pytest.mark.parametrize(("level", "logged"), [("info", False), ("debug", True)])
async def test_httpx_request_lines_only_at_debug(level: str, logged: bool) -> None:
    """Before: every request any process made was an INFO line ("HTTP Request: GET …"), two per idle poll of a
    worker, every 2 s."""

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    status, log = await json_log_of_one_request(ok, level)
    assert status == 200
    records = [json.loads(line) for line in log.splitlines()]
    assert any(r["event"].startswith("HTTP Request: GET") for r in records) is logged


@pytest.mark.parametrize("accept", [
    "application/openmetrics-text; version=abc",
    "application/openmetrics-text; version=1.0.x",
    "text/plain; version=1.0.0-rc1",
])
async def test_an_accept_header_the_exporter_cannot_parse_gets_the_plain_text_format(
    client: httpx.AsyncClient, accept: str
) -> None:
    """Before: prometheus_client compared the version's parts, text against numbers, and the scrape was a 500."""
    response = await client.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    assert samples(response.text)[("comfy_worker_ready", ())] in (0, 1)
