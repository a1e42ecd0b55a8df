"""comfy_worker_build_info shows the version ComfyUI's /system_stats gave, whatever that answer held."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.metrics import MAX_VERSION_CHARS
from worker.state import WorkerState


def comfyui_version_shown(text: str) -> str:
    (sample,) = [
        sample for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == "comfy_worker_build_info"
    ]
    return sample.labels["comfyui_version"]


@pytest.mark.parametrize(
    ("answered", "shown"),
    [
        ("0.8.0", "0.8.0"),
        (8, "unknown"),  # a number, a list, an object: what the JSON of /system_stats held
        (["0.8.0"], "unknown"),
        ({"version": "0.8.0"}, "unknown"),
        ("0.8.0\ud800", "unknown"),  # an escaped lone surrogate, which no UTF-8 exposition can carry
        ("9" * 100_000, "9" * MAX_VERSION_CHARS),
    ],
    ids=["string", "number", "list", "object", "lone-surrogate", "100k-chars"],
)
async def test_any_version_comfyui_answers_leaves_metrics_answering(
    client: httpx.AsyncClient, state: WorkerState, answered: Any, shown: str
) -> None:
    # As worker.main does with /system_stats' "system": {"comfyui_version": ...}
    state.set_comfyui(True, answered)

    response = await client.get("/metrics")

    assert response.status_code == 200, response.text[:300]
    assert comfyui_version_shown(response.text) == shown
    # ... and /status (and so every job's report) keeps the same readable version, or none
    status = (await client.get("/status")).json()
    assert status["versions"]["comfyui"] == (None if shown == "unknown" else shown), status["versions"]
