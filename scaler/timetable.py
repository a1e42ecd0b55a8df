"""Operator-declared busy blocks (a workshop's timetable): parsed once, asked "pre-warm now?" each tick.

A timetable is a comma-separated list of daily UTC blocks ``HH:MM-HH:MM``, each optionally with the number of
replicas to have warm when it begins, ``*N`` (default: the policy's ``max_replicas``)::

    09:00-09:50*5, 10:00-10:50*5, 13:00-13:50*3

Pure: no clock, no I/O. Times are seconds since the Unix epoch (or, in the simulator, since a midnight).
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass

from common.timespans import DAY_S, HOUR_S

# ASCII digits only (\d took other scripts' too); a count of 3 digits at most (5,000 ended in int()'s own error).
_BLOCK = re.compile(r"^([0-9]{1,2}):([0-9]{2})-([0-9]{1,2}):([0-9]{2})(?:\*([0-9]{1,3}))?$")


@dataclass(frozen=True, slots=True)
class Block:
    start_s: float  # seconds after midnight UTC
    end_s: float
    replicas: int | None = None  # None: max_replicas


def parse_timetable(text: str) -> tuple[Block, ...]:
    """``"09:00-09:50*5, 13:00-13:50"`` -> blocks; a clear ValueError naming the bad entry otherwise."""
    blocks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        match = _BLOCK.match(entry)
        if not match:
            # reprlib: a 100,000-character entry was quoted whole, the reason lost at the end of the line.
            raise ValueError(f"timetable entry {reprlib.repr(entry)}: expected HH:MM-HH:MM or HH:MM-HH:MM*N "
                             "(N: up to 999)")
        start_h, start_m, end_h, end_m, replicas = match.groups()
        start, end = _clock(int(start_h), int(start_m), entry), _clock(int(end_h), int(end_m), entry)
        if end <= start:
            raise ValueError(f"timetable entry {entry!r}: the block must end after it starts (same day, UTC)")
        blocks.append(Block(start, end, int(replicas) if replicas is not None else None))
    return tuple(sorted(blocks, key=lambda block: block.start_s))


def format_timetable(blocks: tuple[Block, ...]) -> str:
    return ", ".join(
        f"{_hhmm(block.start_s)}-{_hhmm(block.end_s)}" + (f"*{block.replicas}" if block.replicas is not None else "")
        for block in blocks
    )


def prewarm_floor(
    blocks: tuple[Block, ...], now: float, lead_s: float, default_replicas: int, late_s: float = 0.0
) -> int:
    """Replicas to have running at ``now``: a block's count from ``lead_s`` before it begins until ``late_s``
    after (a scaler that ticks less often than ``lead_s`` still pre-warms, late).

    Only the start is covered: once a block runs, the wait-target planning sizes the fleet from the queue.
    """
    second_of_day = now % DAY_S
    floor = 0
    for block in blocks:
        # The pre-warm window may begin the day before (a block at 00:01) or end the day after.
        for start in (block.start_s - DAY_S, block.start_s, block.start_s + DAY_S):
            if start - lead_s <= second_of_day < start + late_s:
                floor = max(floor, block.replicas if block.replicas is not None else default_replicas)
    return floor


def opening_start(blocks: tuple[Block, ...], now: float, window_s: float) -> float | None:
    """When the block whose opening (its first ``window_s``, at most the whole block) holds ``now`` began, on
    ``now``'s clock; None outside every opening."""
    second_of_day = now % DAY_S
    for block in blocks:
        if block.start_s <= second_of_day < block.start_s + min(window_s, block.end_s - block.start_s):
            return now - second_of_day + block.start_s
    return None


def _clock(hours: int, minutes: int, entry: str) -> float:
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise ValueError(f"timetable entry {entry!r}: {hours:02d}:{minutes:02d} is not a time of day")
    return hours * HOUR_S + minutes * 60.0


def _hhmm(seconds: float) -> str:
    return f"{int(seconds // HOUR_S):02d}:{int(seconds % HOUR_S // 60):02d}"
