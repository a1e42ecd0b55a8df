"""The scaler's labelled counters are exported at 0 from its start, so their first increase counts."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from scaler.metrics import MetricsServer, ScalerMetrics
from scaler.policy import Reason


async def test_read_errors_and_decisions_are_scraped_at_0_before_the_first_tick() -> None:
    """Before: absent until the first one, then 1: increase() over the scrapes around it saw nothing, and the
    dashboard's "Scaler errors" showed none for the queue manager's first failed read after each start."""
    server = MetricsServer(ScalerMetrics(), host="127.0.0.1", port=0)
    port = await server.start()
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        await server.stop()
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text) for sample in family.samples
    }

    for source in ("queue", "backend"):
        assert values[("comfy_scaler_read_errors_total", (("source", source),))] == 0
    for reason in Reason:
        assert values[("comfy_scaler_decisions_total", (("reason", str(reason)),))] == 0
