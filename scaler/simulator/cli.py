"""``comfy-scaler simulate``: run workloads against policies and report cost and queue wait.

The ``ours`` policy is the live scaler's own ``decide``; every ScalingConfig field is a flag
(``--stabilization-window-s 120``). See docs/simulator.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

from rich.console import Console

from common.cli import integer, number
from common.handbacks import MAX_SHUTDOWN_HANDBACKS
from common.timespans import HOUR_S
from scaler.billing import BillingAnchor
from scaler.policy import PRICE_RANGE, ScalingConfig, is_a_price
from scaler.simulator.clairvoyant import best_plan, work_floor_intervals
from scaler.simulator.later_day import (
    LATER_DAY_SUFFIX,
    YESTERDAY_SEED_OFFSET,
    carried_over,
    simulate_later_day,
    yesterday_of,
)
from scaler.simulator.platform import PlatformModel, SimOutcome, Simulation, Victim
from scaler.simulator.policies import Ours, check_policy, parse_policy, split_spec
from scaler.simulator.report import (
    PolicyReport,
    comparison,
    print_summary,
    print_table,
    summarize,
    write_chart,
)
from scaler.simulator.workloads import BUILT_IN, Workload, built_in, load_trace
from scaler.timetable import parse_timetable

DEFAULT_POLICIES = ("always-on:1", "naive", "ours")
SEED_RANGE = re.compile(r"[0-9]{1,18}(-[0-9]{1,18})?")
MAX_SEEDS = 1_000  # a workshop day takes about a second a policy: 1000 seeds are a quarter of an hour each
# ... but the x clairv. column plans a clairvoyant a row (12-27 s a workshop day): the defaults took 41 s a seed
# here, 1000 seeds about 11 hours. With the column, at most this many rows (30-70 min; at --tick-s 5 about 80):
MAX_CLAIRVOYANT_ROWS = 150
# A clairvoyant's plan costs about one replay per tick: a workshop day's took 10 s at --tick-s 15, 33 s at 5, 110 s at
# 2, over 150 s at 1 (the defaults' three rows over 400 s a seed). Below this tick, only without a clairvoyant:
MIN_CLAIRVOYANT_TICK_S = 5.0


def run_policy(
    workload: Workload,
    policy: str,
    config: ScalingConfig | None = None,
    platform: PlatformModel | None = None,
    seed: int = 0,
    later_day: bool = False,
) -> tuple[PolicyReport, SimOutcome]:
    """``later_day``: ``ours`` starts the day with what it kept from yesterday (scaler.simulator.later_day), the
    row named POLICY@day2."""
    platform = platform or PlatformModel()
    kind, arg, config = split_spec(policy, config or ScalingConfig())
    if not config.timetable and workload.timetable:
        config = dataclasses.replace(config, timetable=workload.timetable)  # the organiser declares it
    if kind == "clairvoyant":
        p95 = float(arg) if arg else config.target_wait_s or 120.0
        _plan, outcome = best_plan(workload, platform, config.max_replicas, p95, seed=seed)
    elif later_day:
        controller = parse_policy(policy, config)
        if not isinstance(controller, Ours):
            raise ValueError(f"{policy!r}: only ours carries anything from one day to the next")
        carried = carried_over(controller, yesterday_of(workload.name, seed), platform, seed)
        outcome = simulate_later_day(workload, parse_policy(policy, config), platform, seed, carried)
    else:
        outcome = Simulation(workload, parse_policy(policy, config), platform, seed).run()
    report = summarize(workload.name, policy + LATER_DAY_SUFFIX * later_day, outcome, platform)
    return dataclasses.replace(report, seed=seed), outcome


def with_clairvoyant_ratio(
    report: PolicyReport, workload: Workload, platform: PlatformModel, config: ScalingConfig, seed: int
) -> PolicyReport:
    """The report with cost / clairvoyant's at the report's own p95 and max wait, same cap and model.

    ``cost_vs_clairvoyant`` compares with the clairvoyant's replay; ``cost_vs_plan`` with what its plan
    bills in the planner's own arithmetic (where it chooses which replica leaves): the stricter reference.
    Both compare billed hours, which are the cost at any price, free (0) or a fraction of a cent included.
    """
    _kind, _arg, config = split_spec(report.policy.removesuffix(LATER_DAY_SUFFIX), config)
    plan, outcome = best_plan(workload, platform, config.max_replicas, report.wait_p95_s, report.wait_max_s,
                              seed=seed)
    reference = summarize(workload.name, "clairvoyant", outcome, platform)
    plan_hours = plan.intervals * platform.billing_interval_s / HOUR_S
    return dataclasses.replace(
        report,
        cost_vs_clairvoyant=_ratio(report.billed_gpu_hours, reference.billed_gpu_hours),
        cost_vs_plan=_ratio(report.billed_gpu_hours, plan_hours),
    )


def _ratio(hours: float, reference_hours: float) -> float | None:
    """None when the reference bills nothing: no ratio (JSON has no infinity)."""
    return round(hours / reference_hours, 3) if reference_hours else None


def simulate_main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    console = Console(stderr=args.json == "-")
    if not console.is_terminal:
        console.width = 200
    try:
        if not is_a_price(args.price_per_hour):  # the bill's, and the policy's unless --price-per-replica-hour
            raise ValueError(f"--price-per-hour {args.price_per_hour:g}: {PRICE_RANGE}")
        config = _config_from(args)
        seeds = _seeds(args.seeds) if args.seeds is not None else [args.seed]
        trace = _trace(args.trace) if args.trace else None
        runs = [(seed, trace) for seed in seeds] if trace else [
            (seed, built_in(name, seed)) for seed in seeds for name in args.workload or ["workshop"]
        ]
        if args.later_day and args.trace:
            raise ValueError("--later-day needs a built-in workload: yesterday is the same workload with the seed "
                             f"+ {YESTERDAY_SEED_OFFSET}, and a trace has no other day to be yesterday")
        for policy in args.policy or DEFAULT_POLICIES:
            try:
                check_policy(policy, config)
            except ValueError as error:
                raise ValueError(f"--policy {error}") from None
            if args.clairvoyant_ratio and split_spec(policy, config)[2].max_replicas < 1:
                raise ValueError(f"{policy!r}: with max_replicas 0 no clairvoyant can be planned for the x clairv. "
                                 "column: add --no-clairvoyant-ratio")
        rows = len(runs) * sum(2 if args.later_day and policy.partition(":")[0] == "ours" else 1
                               for policy in args.policy or DEFAULT_POLICIES)
        if args.clairvoyant_ratio and rows > MAX_CLAIRVOYANT_ROWS:
            raise ValueError(f"--seeds, --workload and --policy make {rows} rows, each planning a clairvoyant for the "
                             f"x clairv. column (12-27 s a workshop day): at most {MAX_CLAIRVOYANT_ROWS}; add "
                             "--no-clairvoyant-ratio, or run fewer")
        platform = PlatformModel(
            cold_start_s=args.cold_start_s,
            health_check_delay_s=args.health_check_delay_s,
            tick_s=args.tick_s,
            billing_anchor=BillingAnchor(args.verda_billing_anchor),
            price_per_hour=args.price_per_hour,
            spot_reclaims_per_hour=args.spot_reclaims_per_hour,
            scale_down_victim=Victim(args.scale_down_victim),
            max_shutdown_handbacks=args.max_shutdown_handbacks,
        )
        plans = args.clairvoyant_ratio or any(p.partition(":")[0] == "clairvoyant" for p in args.policy or ())
        if plans and args.tick_s < MIN_CLAIRVOYANT_TICK_S:
            raise ValueError(f"--tick-s {args.tick_s:g}: a clairvoyant (the x clairv. column, or the policy) is "
                             f"planned at a tick of {MIN_CLAIRVOYANT_TICK_S:g} s or more (at 1 s, minutes a row); "
                             "add --no-clairvoyant-ratio (and no clairvoyant policy) for a shorter tick")
        for flag, target in (("--json", args.json), ("--chart", args.chart)):
            if target and target != "-":
                _check_writable(flag, Path(target))
    except (ValueError, OSError) as error:
        parser.error(str(error))
    reports: list[PolicyReport] = []
    charts: list[tuple[Workload, list[tuple[str, list]]]] = []
    began = time.perf_counter()
    for seed, workload in runs:
        series = []
        for policy in args.policy or DEFAULT_POLICIES:
            for later_day in (False, True) if args.later_day and policy.partition(":")[0] == "ours" else (False,):
                report, outcome = run_policy(workload, policy, config, platform, seed, later_day)
                if args.clairvoyant_ratio:
                    report = with_clairvoyant_ratio(report, workload, platform, config, seed)
                reports.append(report)
                series.append((report.policy, outcome.samples))
        if seed == seeds[0]:
            charts.append((workload, series))
        floor = work_floor_intervals(workload, platform)
        console.print(f"{workload.name} seed {seed}: work floor {floor} intervals "
                      f"(${floor * platform.billing_interval_s / HOUR_S * platform.price_per_hour:.2f})")
    elapsed_ms = (time.perf_counter() - began) * 1000

    print_table(console, reports)
    if len(seeds) > 1:
        print_summary(console, reports)
    summary = comparison(reports)
    if summary:
        console.print(summary)
    console.print(f"simulated {len(reports)} runs in {elapsed_ms:.0f} ms (seeds {', '.join(map(str, seeds))})")
    try:
        if args.json:
            _write_json(args.json, seeds, config, platform, reports)
        if args.chart:
            return _write_charts(console, Path(args.chart), charts)
    except OSError as error:  # checked before the runs, so the disk filled or the folder went since
        console.print(f"[red]could not write {error.filename or 'the results'}: {error.strerror or error}[/red]")
        return 1
    return 0


def _trace(name: str) -> Workload:
    try:
        return load_trace(Path(name))
    except OSError as error:  # not there, not readable, a name too long
        raise ValueError(f"--trace {name}: {error.strerror or error}") from None
    except ValueError as error:  # its own words start with the file's name
        raise ValueError(f"--trace {error}") from None


def _check_writable(flag: str, path: Path) -> None:
    """Before the runs (the workshop's five seeds take minutes): a result that cannot be written is refused now."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{flag} {path}: cannot create its folder ({error.strerror or error})") from None
    try:
        writable = not path.is_dir() and os.access(path.parent, os.W_OK) and (
            not path.exists() or os.access(path, os.W_OK))
    except OSError as error:  # a name too long
        raise ValueError(f"{flag} {path}: {error.strerror or error}") from None
    if not writable:
        raise ValueError(f"{flag} {path}: not a file this user can write")


def _write_json(
    target: str, seeds: list[int], config: ScalingConfig, platform: PlatformModel, reports: list[PolicyReport]
) -> None:
    document = {
        "seeds": seeds,
        "scaling_config": dataclasses.asdict(config),
        "platform": dataclasses.asdict(platform),
        "results": [report.as_dict() for report in reports],
    }
    text = json.dumps(document, indent=2, default=str)
    if target == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(target).write_text(text + "\n")


def _write_charts(console: Console, path: Path, charts: list[tuple[Workload, list[tuple[str, list]]]]) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        console.print("[red]charts need matplotlib: pip install 'comfyui-serverless-worker[charts]'[/red]")
        return 1
    for workload, series in charts:
        target = path if len(charts) == 1 else path.with_name(f"{path.stem}-{workload.name}{path.suffix}")
        write_chart(target, f"{workload.name}: queue depth and replicas", series)
        console.print(f"chart written to {target}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-scaler simulate",
        # Its 42 options spelt out took 38 lines before the error of a mistyped one: --help lists them.
        usage="%(prog)s [options]",
        description="Simulate workloads under scaling policies; report billed cost and queue wait.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--workload", action="append", choices=sorted(BUILT_IN),
                        help="built-in workload (repeatable; default workshop)")
    source.add_argument("--trace", type=_named, help="CSV with columns submit_s,duration_s (seconds)")
    parser.add_argument("--policy", action="append",
                        help="always-on:N, naive, naive-job-limit-1, ours or clairvoyant[:P95_S] (repeatable; "
                             "default always-on:1, naive, ours)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=integer, default=1)
    seeds.add_argument("--seeds", help="several seeds, e.g. 1-5 or 1,2,7: a row per seed plus a summary")
    parser.add_argument("--json", type=_named, metavar="PATH", help="write results as JSON to PATH ('-' for stdout)")
    parser.add_argument("--chart", type=_named, metavar="PATH", help="write a PNG chart (needs matplotlib)")
    parser.add_argument("--later-day", action="store_true",
                        help="also run each ours policy on a later day, with what the scaler kept from yesterday "
                             f"(the same workload, seed + {YESTERDAY_SEED_OFFSET}): rows named POLICY@day2")
    parser.add_argument("--clairvoyant-ratio", action=argparse.BooleanOptionalAction, default=True,
                        help="plan the clairvoyant at each row's p95 and max wait for the x clairv. column")
    platform = parser.add_argument_group("platform model")
    platform.add_argument("--price-per-hour", type=number, default=2.30, help="USD per replica-hour")
    platform.add_argument("--cold-start-s", type=number, default=30.0,
                          help="image pull + ComfyUI start + model load")
    platform.add_argument("--health-check-delay-s", type=number, default=5.0)
    platform.add_argument("--tick-s", type=number, default=15.0, help="scaler / Verda evaluation interval")
    platform.add_argument("--verda-billing-anchor", choices=[a.value for a in BillingAnchor],
                          default=BillingAnchor.STARTED_AT.value, help="how Verda really bills, in the model")
    platform.add_argument("--spot-reclaims-per-hour", type=number, default=0.0, help="per replica")
    platform.add_argument("--scale-down-victim", choices=[v.value for v in Victim], default=Victim.WORST.value,
                          help="who leaves on a scale-down: the worst case, idle workers retiring themselves, "
                               "or idle first (the RunPod backend's choice)")
    platform.add_argument("--max-shutdown-handbacks", type=integer, default=MAX_SHUTDOWN_HANDBACKS,
                          help="the queue's bound on one job's replica-stop hand-backs: then it fails (0: none)")
    ours = parser.add_argument_group("ours: ScalingConfig overrides")
    for config_field in dataclasses.fields(ScalingConfig):
        flag = "--" + config_field.name.replace("_", "-")
        default = config_field.default
        if isinstance(default, bool):
            ours.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, BillingAnchor):
            ours.add_argument(flag, choices=[a.value for a in BillingAnchor], default=None)
        elif config_field.name == "timetable":
            ours.add_argument(flag, type=parse_timetable, default=None,
                              help="HH:MM-HH:MM[*N],... (default: the workload's own, if it has one)")
        elif config_field.name == "target_wait_s":
            ours.add_argument(flag, type=_optional_seconds, default=None,
                              help=f"default {default}; 'none': one replica per job in flight")
        elif isinstance(default, int):
            ours.add_argument(flag, type=integer, default=None, help=f"default {default}")
        else:
            ours.add_argument(flag, type=number, default=None, help=f"default {default}")
    return parser


def _named(text: str) -> str:
    """A file's name, never blank: `--json "$OUT"` with OUT unset wrote nothing, and `--trace ""` ran the workshop."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: name the file, or leave the flag out")
    return text


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        if not SEED_RANGE.fullmatch(part.strip()):
            raise ValueError(f"--seeds {text!r}: use e.g. 1-5 or 1,2,7")
        first, _, last = part.strip().partition("-")
        if last and int(last) < int(first):
            raise ValueError(f"--seeds {text!r}: {part.strip()} runs backwards: write the first seed first, e.g. 1-5")
        if len(seeds) + int(last or first) - int(first) + 1 > MAX_SEEDS:
            raise ValueError(f"--seeds {text!r}: at most {MAX_SEEDS} seeds in one run")
        seeds += range(int(first), int(last or first) + 1)
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"--seeds {text!r}: a seed twice would count twice in the summary")
    return seeds


def _optional_seconds(text: str) -> float | str:
    return "none" if text.lower() == "none" else number(text)


def _config_from(args: argparse.Namespace) -> ScalingConfig:
    overrides = {
        config_field.name: getattr(args, config_field.name)
        for config_field in dataclasses.fields(ScalingConfig)
        if getattr(args, config_field.name) is not None
    }
    if overrides.get("target_wait_s") == "none":
        overrides["target_wait_s"] = None
    overrides.setdefault("price_per_replica_hour", args.price_per_hour)
    return ScalingConfig(**overrides)

