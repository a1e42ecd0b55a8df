"""What a simulation run means in money and waiting: the numbers, a terminal table, JSON, a PNG chart."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.timespans import HOUR_S
from scaler.simulator.platform import PlatformModel, Sample, SimOutcome


@dataclass(frozen=True, slots=True)
class PolicyReport:
    workload: str
    policy: str
    simulated_hours: float
    billed_gpu_hours: float
    cost_usd: float
    jobs_total: int
    jobs_done: int
    jobs_unfinished: int
    jobs_failed: int
    wait_p50_s: float
    wait_p95_s: float
    wait_max_s: float
    jobs_interrupted: int
    replica_starts: int
    cold_starts: int
    spot_reclaims: int
    cost_vs_clairvoyant: float | None = None
    cost_vs_plan: float | None = None
    seed: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(workload: str, policy: str, outcome: SimOutcome, platform: PlatformModel) -> PolicyReport:
    """Queue wait is what a user waits beyond the job's own run: finish - submit - duration.

    A job unfinished at the horizon, or failed after its last attempt (handed back too often), counts as a
    wait of the whole horizon: never left out, always worst.
    """
    finished = [job for job in outcome.jobs if job.finished_s is not None]
    waits = sorted(job_waits(outcome))
    gpu_hours = outcome.billed_intervals * platform.billing_interval_s / HOUR_S
    return PolicyReport(
        workload=workload,
        policy=policy,
        simulated_hours=round(outcome.horizon_s / HOUR_S, 3),
        billed_gpu_hours=round(gpu_hours, 3),
        cost_usd=round(gpu_hours * platform.price_per_hour, 2),
        jobs_total=len(outcome.jobs),
        jobs_done=len(finished),
        jobs_unfinished=sum(1 for job in outcome.jobs if job.finished_s is None and not job.failed),
        jobs_failed=sum(1 for job in outcome.jobs if job.failed),
        wait_p50_s=round(percentile(waits, 50), 1),
        wait_p95_s=round(percentile(waits, 95), 1),
        wait_max_s=round(waits[-1], 1) if waits else 0.0,
        jobs_interrupted=sum(1 for job in outcome.jobs if job.interruptions),
        replica_starts=outcome.replica_starts,
        cold_starts=outcome.cold_starts,
        spot_reclaims=outcome.spot_reclaims,
    )


def job_waits(outcome: SimOutcome) -> list[float]:
    return [
        job.finished_s - job.submit_s - job.duration_s if job.finished_s is not None else outcome.horizon_s
        for job in outcome.jobs
    ]


def percentile(ordered: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile: a value some job actually waited."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def comparison(reports: Sequence[PolicyReport], baseline: str = "naive", candidate: str = "ours") -> str | None:
    """One line per workload: how ``candidate`` compares with ``baseline`` in cost and p95 wait."""
    by_key = {(report.workload, report.policy): report for report in reports}
    lines = []
    for workload in dict.fromkeys(report.workload for report in reports):
        base, ours = by_key.get((workload, baseline)), by_key.get((workload, candidate))
        if base is None or ours is None:
            continue
        lines.append(
            f"{workload}: {candidate} vs {baseline}: cost x{_ratio(ours.cost_usd, base.cost_usd)}, "
            f"p95 wait x{_ratio(ours.wait_p95_s, base.wait_p95_s)} "
            f"(${ours.cost_usd:.2f} vs ${base.cost_usd:.2f}, {ours.wait_p95_s:.0f} s vs {base.wait_p95_s:.0f} s)"
        )
    return "\n".join(lines) or None


def _ratio(value: float, reference: float) -> str:
    if reference == 0:
        return "1.00" if value == 0 else "inf"
    return f"{value / reference:.2f}"


def print_table(console: Console, reports: Sequence[PolicyReport]) -> None:
    table = Table(title="Simulated cost and queue wait")
    columns = ("workload", "seed", "policy", "GPU-h", "cost $", "done", "unfinished", "p50 s", "p95 s", "max s",
               "interrupted", "starts", "cold starts", "x clairv.", "x plan")
    for column in columns:
        table.add_column(column, justify="left" if column in ("workload", "policy") else "right")
    for report in reports:
        table.add_row(
            report.workload, str(report.seed), report.policy, f"{report.billed_gpu_hours:.2f}",
            f"{report.cost_usd:.2f}",
            str(report.jobs_done), _unfinished(report), f"{report.wait_p50_s:.0f}",
            f"{report.wait_p95_s:.0f}", f"{report.wait_max_s:.0f}", str(report.jobs_interrupted),
            str(report.replica_starts), str(report.cold_starts),
            _times(report.cost_vs_clairvoyant), _times(report.cost_vs_plan),
        )
    console.print(table)


def print_summary(console: Console, reports: Sequence[PolicyReport]) -> None:
    """Per workload and policy over the seeds: mean cost, the p95/max range and the worst ratios."""
    table = Table(title="Over all seeds")
    for column in ("workload", "policy", "seeds", "mean cost $", "p95 s (min-max)", "max s (worst)",
                   "interrupted", "failed", "x clairv. (worst)", "x plan (worst)"):
        table.add_column(column, justify="left" if column in ("workload", "policy") else "right")
    groups: dict[tuple[str, str], list[PolicyReport]] = {}
    for report in reports:
        groups.setdefault((report.workload, report.policy), []).append(report)
    for (workload, policy), group in groups.items():
        ratios = [r.cost_vs_clairvoyant for r in group if r.cost_vs_clairvoyant is not None]
        plans = [r.cost_vs_plan for r in group if r.cost_vs_plan is not None]
        table.add_row(
            workload, policy, str(len(group)), f"{sum(r.cost_usd for r in group) / len(group):.2f}",
            f"{min(r.wait_p95_s for r in group):.0f}-{max(r.wait_p95_s for r in group):.0f}",
            f"{max(r.wait_max_s for r in group):.0f}", str(sum(r.jobs_interrupted for r in group)),
            str(sum(r.jobs_failed for r in group)),
            _times(max(ratios) if ratios else None), _times(max(plans) if plans else None),
        )
    console.print(table)


def _unfinished(report: PolicyReport) -> str:
    """Jobs not done at the horizon, and among them those the queue failed after their last attempt."""
    left = report.jobs_unfinished + report.jobs_failed
    return f"{left} ({report.jobs_failed} failed)" if report.jobs_failed else str(left)


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def _busy_span_h(series: Sequence[tuple[str, Sequence[Sample]]]) -> tuple[float, float]:
    """The hours in which any policy had work, padded, so a quiet night does not squash the day."""
    busy = [s.t for _, samples in series for s in samples if s.pending or s.running]
    end = max(s.t for _, samples in series for s in samples)
    if not busy:
        return 0.0, end / HOUR_S
    return max(0.0, min(busy) - 1800.0) / HOUR_S, min(end, max(busy) + 1800.0) / HOUR_S


def write_chart(path: Path, title: str, series: Sequence[tuple[str, Sequence[Sample]]]) -> None:
    """Queue depth and replicas over time, one panel per policy. Needs matplotlib (extra ``charts``)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(len(series), 1, figsize=(11, 2.4 * len(series) + 0.6), sharex=True,
                                   squeeze=False)
    twins = []
    for axis, (policy, samples) in zip(axes[:, 0], series, strict=True):
        hours = [sample.t / HOUR_S for sample in samples]
        axis.fill_between(hours, [s.pending for s in samples], step="post", alpha=0.35, label="queued jobs")
        axis.step(hours, [s.running for s in samples], where="post", linewidth=0.8, label="running jobs")
        # Replicas get their own axis: a 500-job backlog would flatten them to nothing.
        replica_axis = axis.twinx()
        replica_axis.step(hours, [s.replicas for s in samples], where="post", linewidth=1.4,
                          color="tab:red", label="replicas (right axis)")
        replica_axis.set_ylim(0, max(1, max(s.replicas for s in samples)) * 1.15)
        replica_axis.set_ylabel("replicas", color="tab:red")
        twins.append(replica_axis)
        axis.set_title(policy, loc="left", fontsize=10)
        axis.set_ylabel("jobs")
        axis.grid(alpha=0.3)
    handles = [handle for axis in (axes[0, 0], twins[0]) for handle in axis.get_legend_handles_labels()[0]]
    axes[0, 0].legend(handles=handles, loc="upper right", fontsize=8, ncol=3)
    axes[0, 0].set_xlim(*_busy_span_h(series))
    axes[-1, 0].set_xlabel("hours since start")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    pyplot.close(figure)
