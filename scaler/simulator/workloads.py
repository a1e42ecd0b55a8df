"""Job arrivals for the simulator: the built-in workloads and CSV traces. Seeded, so runs repeat exactly."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.small_files import FileTooLarge, NotARegularFile, read_small_file
from common.timespans import DAY_S, HOUR_S
from scaler.timetable import Block

# A trace is simulated tick by tick over its whole span: a month of days at most, no job longer than a day.
MAX_TRACE_SUBMIT_S = 31 * DAY_S
MAX_TRACE_DURATION_S = DAY_S
# Read whole before parsing: /dev/zero, or a file of one endless line, took memory without end. 64 MB is some
# 3 million jobs, more than a month of them simulated in minutes.
MAX_TRACE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class JobSpec:
    submit_s: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    jobs: tuple[JobSpec, ...]
    horizon_s: float
    timetable: tuple[Block, ...] = ()  # what its organiser would declare (SCALER_TIMETABLE)


def workshop(rng: random.Random) -> Workload:
    """20 participants, 09:00-17:00 in 50-minute exercise blocks (lunch at 12), ~2-minute video jobs.

    Each participant submits once in the first minutes of a block, then iterates one to three times.
    """
    block_starts_h = (9, 10, 11, 13, 14, 15, 16)
    block_s = 50 * 60.0
    jobs = []
    for start_h in block_starts_h:
        block_start = start_h * HOUR_S
        for _participant in range(20):
            first = min(rng.expovariate(1 / 120.0), block_s / 2)
            submits = [first]
            submits += [rng.uniform(first + 240.0, block_s) for _ in range(rng.randint(1, 3))]
            jobs += [JobSpec(block_start + at, max(60.0, rng.gauss(120.0, 20.0))) for at in submits]
    # The organiser declares the blocks and 3 replicas warm at each start (20 first jobs over ~5 minutes).
    timetable = tuple(Block(start_h * HOUR_S, start_h * HOUR_S + block_s, 3) for start_h in block_starts_h)
    return Workload("workshop", _sorted(jobs), DAY_S, timetable)


def batch(rng: random.Random) -> Workload:
    """500 images submitted at once (one minute into the run), ~6 s each."""
    jobs = [JobSpec(60.0, rng.uniform(5.0, 7.0)) for _ in range(500)]
    return Workload("batch", _sorted(jobs), 2 * HOUR_S)


def trickle(rng: random.Random) -> Workload:
    """10 jobs a day at random times, ~2 minutes each."""
    jobs = [JobSpec(rng.uniform(0.0, DAY_S - HOUR_S), max(60.0, rng.gauss(120.0, 15.0))) for _ in range(10)]
    return Workload("trickle", _sorted(jobs), DAY_S)


def studio(rng: random.Random) -> Workload:
    """6 artists, 09:00-18:00, long jobs (4-10 min upscales and video); lunch 12:00-13:30 is nearly quiet.

    Each artist submits at exponential gaps (mean 20 min, mean 2 h over lunch). No timetable is declared.
    """
    jobs = []
    for _artist in range(6):
        at = 9 * HOUR_S + rng.uniform(0.0, 900.0)
        while at < 18 * HOUR_S:
            jobs.append(JobSpec(at, rng.uniform(240.0, 600.0)))
            lunch = 12 * HOUR_S <= at < 13.5 * HOUR_S
            at += rng.expovariate(1 / (7200.0 if lunch else 1200.0))
    return Workload("studio", _sorted(jobs), DAY_S)


def mixed_batch(rng: random.Random) -> Workload:
    """300 jobs submitted at once one minute in: most 5 s thumbnails, one in five a 3-minute render."""
    jobs = [JobSpec(60.0, 180.0 if rng.random() < 0.2 else 5.0) for _ in range(300)]
    return Workload("mixed-batch", tuple(jobs), 3 * HOUR_S)


BUILT_IN: dict[str, Callable[[random.Random], Workload]] = {
    "workshop": workshop,
    "batch": batch,
    "trickle": trickle,
    "studio": studio,
    "mixed-batch": mixed_batch,
}


def built_in(name: str, seed: int) -> Workload:
    return BUILT_IN[name](random.Random(f"{name}:{seed}"))


def load_trace(path: Path) -> Workload:
    """A CSV with a header and the columns ``submit_s`` (seconds from the start, at most 31 days) and
    ``duration_s`` (at most a day). Other columns are ignored. The horizon is one hour past the end of the
    last job.
    """
    try:
        data = read_small_file(path, MAX_TRACE_BYTES)
    except FileTooLarge:
        raise ValueError(f"{path}: more than {MAX_TRACE_BYTES} bytes: no trace the simulator can run") from None
    except (IsADirectoryError, NotARegularFile):  # a FIFO held a plain open for good
        raise ValueError(f"{path}: a directory, a FIFO or a device, not a file: no trace") from None
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason}): save it as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return _trace(path, reader)
    except csv.Error as error:  # a field over csv's limit (131072 characters), a quote left open
        raise ValueError(f"{path}: after line {reader.line_num}: {error}") from None


def _trace(path: Path, reader: csv.DictReader) -> Workload:
    missing = {"submit_s", "duration_s"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    twice = sorted(name for name in ("submit_s", "duration_s") if reader.fieldnames.count(name) > 1)
    if twice:  # csv keeps the last one's values, silently
        raise ValueError(f"{path}: column(s) {', '.join(twice)} more than once in the header: which one is meant?")
    jobs = []
    for row in reader:
        line = reader.line_num  # not a count of rows: csv skips blank lines
        job = JobSpec(_seconds(path, line, row, "submit_s"), _seconds(path, line, row, "duration_s"))
        if not 0 <= job.submit_s <= MAX_TRACE_SUBMIT_S:
            cell = row["submit_s"].strip()[:40]
            raise ValueError(f"{path}:{line}: submit_s must be 0-{MAX_TRACE_SUBMIT_S:.0f} s, not {cell!r}")
        if not 0 < job.duration_s <= MAX_TRACE_DURATION_S:
            limit, cell = f"{MAX_TRACE_DURATION_S:.0f}", row["duration_s"].strip()[:40]
            raise ValueError(f"{path}:{line}: duration_s must be > 0 and <= {limit} s, not {cell!r}")
        jobs.append(job)
    if not jobs:
        raise ValueError(f"{path}: no jobs")
    horizon = max(job.submit_s + job.duration_s for job in jobs) + HOUR_S
    return Workload(path.stem, _sorted(jobs), horizon)


def _seconds(path: Path, line: int, row: dict[str, str | None], column: str) -> float:
    text = row[column]
    if text is None:
        raise ValueError(f"{path}:{line}: {column} is missing: the row has fewer fields than the header")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}:{line}: {column} must be a number of seconds, not {text[:40]!r}") from None


def _sorted(jobs: list[JobSpec]) -> tuple[JobSpec, ...]:
    return tuple(sorted(jobs, key=lambda job: job.submit_s))
