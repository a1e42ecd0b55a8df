"""The demo's closing report: what happened to every job, how long people waited, what it would have cost."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.durable import replace_whole
from common.timespans import HOUR_S
from demo.workload import BAD_WORKFLOWS
from queue_manager import JobRecord
from scaler.fleet import SEPARATOR

TERMINAL = frozenset({"completed", "failed", "cancelled"})
BILLING_INTERVAL_S = 600.0


@dataclass
class ReplicaLedger:
    """When each replica was seen running, from the scaler's observations."""

    spans: dict[str, list[float]] = field(default_factory=dict)  # id -> [first seen, last seen]

    def observe(self, replica_ids: list[str], now: float) -> None:
        for replica_id in replica_ids:
            self.spans.setdefault(replica_id, [now, now])[1] = now

    def replica_seconds(self) -> float:
        return sum(last - first for first, last in self.spans.values())

    def cost(self, price_per_hour: Callable[[str], float]) -> float:
        """USD by the second, each replica at its own price."""
        return sum((last - first) / HOUR_S * price_per_hour(replica) for replica, (first, last) in self.spans.items())

    def billed_intervals(self) -> int:
        return sum(max(1, math.ceil((last - first) / BILLING_INTERVAL_S)) for first, last in self.spans.values())


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def job_chains(jobs: list[JobRecord], submitted: list[str]) -> dict[str, list[JobRecord]]:
    """Each submitted job's incarnations, first to last: a job stopped by a scale-down continues as the job it was
    requeued as. Only these: with --db reused, `jobs` holds earlier runs' too."""
    requeued_as = {job.metadata["requeued_from"]: job for job in jobs if job.metadata.get("requeued_from")}
    by_id = {job.id: job for job in jobs}
    chains = {}
    for job_id in submitted:
        chain = [by_id[job_id]]
        while chain[-1].id in requeued_as:
            chain.append(requeued_as[chain[-1].id])
        chains[job_id] = chain
    return chains


def _requeues(chain: list[JobRecord]) -> int:
    """A stopped job's hand backs: each in its history (the demo's queue manager keeps its id), each copy a worker
    of comfy-multi resubmitted it as."""
    handed_back = sum(entry.get("cause") == "shutdown" for job in chain for entry in job.history)
    return handed_back + len(chain) - 1


def final_jobs(jobs: list[JobRecord], submitted: list[str]) -> dict[str, JobRecord]:
    """Each submitted job's last incarnation."""
    return {job_id: chain[-1] for job_id, chain in job_chains(jobs, submitted).items()}


def build_report(
    jobs: list[JobRecord], submitted: list[str], ledger: ReplicaLedger, *, span_s: float, price_per_hour: float,
    replica_starts: int, outputs: str, results: dict[str, Any], replicas_at_end: int,
) -> dict[str, Any]:
    """`results`: demo.results.fetch_results's counts of the files fetched back through the queue manager."""
    chains = job_chains(jobs, submitted)
    final = {job_id: chain[-1] for job_id, chain in chains.items()}
    outcomes = Counter(job.status.value for job in final.values())
    failures = Counter(job.error[:240] for job in final.values() if job.status == "failed" and job.error)
    first_of = {job.id: job for job in jobs}
    waits = [j.started_at - first_of[i].created_at for i, j in final.items() if j.started_at]
    runs = [j.completed_at - j.started_at for j in final.values() if j.completed_at and j.started_at]
    unfinished = sorted(i for i, j in final.items() if j.status.value not in TERMINAL)
    failed = [i for i, j in final.items() if j.status == "failed"]
    on_purpose = [i for i in failed if chains[i][0].metadata.get("demo_workflow") in BAD_WORKFLOWS]  # --bad-jobs
    per_second = ledger.replica_seconds() / HOUR_S * price_per_hour
    billed = ledger.billed_intervals() * BILLING_INTERVAL_S / HOUR_S * price_per_hour
    always_on = max(1, math.ceil(span_s / BILLING_INTERVAL_S)) * BILLING_INTERVAL_S / HOUR_S * price_per_hour

    def seconds(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {
        "jobs_submitted": len(submitted),
        "completed": outcomes.get("completed", 0),
        "failed": outcomes.get("failed", 0),
        "failed_on_purpose": len(on_purpose),
        "failed_unexpectedly": sorted(set(failed) - set(on_purpose)),
        "cancelled": outcomes.get("cancelled", 0),
        "unfinished": unfinished,
        "failure_reasons": dict(failures.most_common()),
        "requeued_by_scale_down": sum(_requeues(chain) for chain in chains.values()),
        "wait_s": {"p50": seconds(percentile(waits, 0.5)), "p95": seconds(percentile(waits, 0.95))},
        "run_s": {"p50": seconds(percentile(runs, 0.5)), "p95": seconds(percentile(runs, 0.95))},
        "replica_starts": replica_starts,
        "replicas_at_end": replicas_at_end,
        "span_s": round(span_s, 1),
        "replica_seconds": round(ledger.replica_seconds(), 1),
        "gpu_work_s": round(sum(runs), 1),  # what one always-on GPU would have had to do, one job at a time
        "price_per_hour": price_per_hour,
        "cost_usd": {
            "per_second": round(per_second, 4),
            "billed_10_min_intervals": round(billed, 2),
            "always_on_one_gpu_same_span": round(always_on, 2),
        },
        "outputs": outputs,
        "results": results,
        "ok": not unfinished and len(failed) == len(on_purpose) and replicas_at_end == 0 and results["failed"] == 0,
    }


def provider_prices(prices: Mapping[str, float]) -> Callable[[str], float]:
    """A fleet replica's price per hour: its provider's, named by the fleet's replica id."""
    return lambda replica: prices[replica.partition(SEPARATOR)[0]]


def fleet_cost(ledger: ReplicaLedger, fleet: dict[str, Any], cost: dict[str, float]) -> dict[str, float]:
    """`cost` (build_report's) with several providers (demo.run.fleet_report's `fleet`): each replica at its
    provider's price, and what the providers billed by their own rules, not every replica at --price-per-hour in
    10-minute intervals."""
    prices = {name: row["price_per_hour"] for name, row in fleet["providers"].items()}
    return {
        "per_second": round(ledger.cost(provider_prices(prices)), 4),
        "billed_by_the_providers": round(fleet["spend"].get("total", {}).get("last_day", 0.0), 2),
        "always_on_one_gpu_same_span": cost["always_on_one_gpu_same_span"],
    }


class ReportNotWritten(Exception):
    """report.json cannot be removed (a folder in its place: the demo does not start) or written (a full disk: the
    report is printed, NOT OK)."""


def remove_report(path: Path) -> None:
    """An earlier run's report.json, so its "ok" is never taken for this run's."""
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        raise ReportNotWritten(f"cannot remove the earlier {path}: {error.strerror}") from None


def write_report(path: Path, report: dict[str, Any]) -> None:
    """report.json whole, or none: a demo killed while writing it leaves no half of it to be read."""
    try:
        replace_whole(path, json.dumps(report, indent=2), path.with_name(f".{path.name}.partial"))
    except OSError as error:
        raise ReportNotWritten(f"cannot write {path}: {error.strerror}") from None
