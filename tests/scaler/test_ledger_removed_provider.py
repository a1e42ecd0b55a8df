"""A provider taken out of SCALER_PROVIDERS: its cost-ledger buckets leave the saved file once older than the
window (KEEP_S), like any provider's.

Before: buckets were dropped only from the provider being charged, so a removed provider's stayed in
SCALER_LEDGER_FILE for good (60 of RunPod's one-minute buckets after 3 days of charging Verda alone); then, once
they had aged out, an empty RunPod row and its billed replicas."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.timespans import DAY_S, HOUR_S
from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.fleet import FleetBackend, Member
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING, CostLedger
from scaler.providers import VerdaBackend

from .conftest import DEPLOYMENT


@dataclass(frozen=True)
class Pod:
    id: str
    started_at: float


def ledger_of_a_runpod_fleet(path: Path, now: float) -> None:
    """The file a fleet with RunPod left: one pod charged every minute of its last hour, then terminated."""
    ledger = CostLedger()
    for minute in range(60, -1, -1):
        ledger.charge("runpod", [Pod("pod-1", now - HOUR_S)], now - minute * 60, price_per_hour=2.99,
                      rule=RUNPOD_BILLING)
    ledger.charge("runpod", [], now, price_per_hour=2.99, rule=RUNPOD_BILLING)
    ledger.save(path)


async def test_a_removed_provider_s_buckets_age_out_of_the_saved_ledger(make_verda_client, wall, tmp_path):
    path = tmp_path / "ledger.json"
    ledger_of_a_runpod_fleet(path, wall())
    assert len(json.loads(path.read_text())["buckets"]["runpod"]) == 60
    spec = ProviderSpec("verda", max_replicas=3, price_per_hour=2.30)
    fleet = FleetBackend([Member(spec, VerdaBackend(make_verda_client(), DEPLOYMENT, clock=wall), VERDA_BILLING)],
                         AllocatorConfig((spec,)), ledger=CostLedger.load(path), clock=wall, ledger_file=path)
    try:
        await fleet.observe()
        await fleet.apply(1)
        for _ in range(int(3 * DAY_S / HOUR_S)):
            wall.advance(HOUR_S)
            await fleet.observe()
    finally:
        await fleet.aclose()
    whole = json.loads(path.read_text())
    saved = whole["buckets"]
    assert [name for name in ("buckets", "billed", "live", "prices", "looked_at", "rules") if "runpod" in whole[name]] \
        == [], "an empty row was kept for good"
    assert saved["verda"], "the provider charged keeps its window"
    assert min(map(float, saved["verda"])) >= wall() - 2 * DAY_S - 60


def test_a_removed_provider_still_listing_replicas_is_kept_to_be_stopped():
    """The next scaler drives a removed provider that still ran replicas to zero (scaler.wiring reads ``live``)."""
    ledger = CostLedger()
    ledger.charge("runpod", [Pod("pod-1", 0.0)], 60.0, price_per_hour=2.99, rule=RUNPOD_BILLING)
    ledger.charge("verda", [], 3 * DAY_S, price_per_hour=2.30, rule=VERDA_BILLING)
    ledger.forget_gone({"verda"})
    assert ledger.providers_running() == {"runpod": 1}
    ledger.forget_gone({"verda", "runpod"})
    assert "runpod" in ledger.buckets, "a member's row stays, charged or not"
