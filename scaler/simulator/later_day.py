"""A later day of a deployment: the scaler starts it with what it kept from yesterday, not knowing nothing.

The live scaler keeps its PolicyState through the night (in memory; in SCALER_STATE_FILE across a restart, which
saves and loads every field the policy reads) and reads run times and waits from the queue manager's last
completed jobs, which it keeps for days (FINISHED_JOB_RETENTION_S). So on every day but a deployment's first, the
first block is planned with yesterday's job lengths and learned pre-warm. Yesterday is the same workload with
another seed, simulated to midnight; today runs on the next day's clock with what the scaler carried.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from common.timespans import DAY_S
from scaler.policy import PolicyState
from scaler.simulator.platform import RECENT_COMPLETIONS, PlatformModel, SimOutcome, Simulation
from scaler.simulator.policies import Ours
from scaler.simulator.workloads import Workload, built_in

YESTERDAY_SEED_OFFSET = 1_000  # yesterday's arrivals: the workload's seed + this
LATER_DAY_SUFFIX = "@day2"


@dataclass(frozen=True, slots=True)
class Carried:
    """What the scaler knows at midnight after yesterday: its state, and the completions the queue lists."""

    state: PolicyState = field(default_factory=PolicyState)
    recent_durations_s: tuple[float, ...] = ()
    recent_waits_s: tuple[float, ...] = ()


def yesterday_of(workload_name: str, seed: int) -> Workload:
    """Yesterday's arrivals, simulated to midnight (the scaler ticks through the night as it does live)."""
    workload = built_in(workload_name, seed + YESTERDAY_SEED_OFFSET)
    if workload.horizon_s > DAY_S:
        raise ValueError(f"{workload_name}: a later day needs a workload of one day at most")
    return dataclasses.replace(workload, horizon_s=DAY_S)


def carried_over(controller: Ours, yesterday: Workload, platform: PlatformModel, seed: int) -> Carried:
    """Run ``controller`` through yesterday; what it and the queue manager hold at midnight."""
    outcome = Simulation(yesterday, controller, platform, seed + YESTERDAY_SEED_OFFSET).run()
    durations, waits = listed_completions(outcome)
    return Carried(controller.state, durations, waits)


def listed_completions(outcome: SimOutcome) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The run times and waits of the last completed jobs, as the live scaler reads them from
    GET /api/jobs?status=completed (newest first, RECENT_COMPLETIONS of them; scaler.queue_status.job_timings):
    each job's last attempt, failed jobs not listed."""
    done = sorted((job for job in outcome.jobs if job.finished_s is not None), key=lambda job: job.finished_s or 0.0)
    newest = done[-RECENT_COMPLETIONS:]
    waits = [(job.attempt_started_s, job.attempt_started_s - job.submit_s) for job in newest]
    return tuple(job.duration_s for job in newest), tuple(wait for _, wait in sorted(waits))


def simulate_later_day(
    workload: Workload, controller: Ours, platform: PlatformModel, seed: int, carried: Carried
) -> SimOutcome:
    """``workload`` under ``controller`` starting from ``carried``, on the clock its state was kept on (yesterday's
    + a day): with ``Carried()``'s blanks, the first day's run exactly."""
    today = dataclasses.replace(controller, state=carried.state, clock_offset_s=controller.clock_offset_s + DAY_S)
    return Simulation(workload, today, platform, seed, carried.recent_durations_s, carried.recent_waits_s).run()
