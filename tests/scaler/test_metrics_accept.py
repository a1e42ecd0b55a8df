"""The scaler's GET /metrics answers whatever format a client's Accept asks for, as the worker's does."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from structlog.testing import capture_logs

from scaler.metrics import MetricsServer, ScalerMetrics


@pytest.mark.parametrize("version", ["abc", "1.x"])
async def test_an_openmetrics_version_that_is_not_numbers_gets_the_text_format(version: str) -> None:
    """Before: a TypeError inside prometheus_client, a 500 and a logged traceback for each such scrape."""
    server = MetricsServer(ScalerMetrics(), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            with capture_logs() as logs:
                response = await client.get(
                    f"http://127.0.0.1:{port}/metrics",
                    headers={"Accept": f"application/openmetrics-text; version={version}"},
                )
    finally:
        await server.stop()

    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    assert b"comfy_scaler_desired_replicas" in response.content
    assert [entry for entry in logs if entry.get("log_level") in ("error", "critical")] == []


async def test_openmetrics_is_still_served_to_a_scraper_that_asks_for_it() -> None:
    server = MetricsServer(ScalerMetrics(), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(
                f"http://127.0.0.1:{port}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            )
    finally:
        await server.stop()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
