"""How long jobs take, from the queue status counters alone, for queue managers that list no finished jobs.

comfy-multi's ``GET /api/jobs`` without ``user_id`` lists pending jobs only, so ``status=completed`` is always
empty there. Its ``/api/queue/status`` still counts running and finished jobs, and by Little's law the mean
job duration is the replica-seconds spent running jobs divided by the jobs finished in the same window.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 1800.0
MIN_FINISHED = 3


@dataclass
class DurationFromCounters:
    """``observe`` each tick's (now, running, finished) counts; it answers the mean duration once it knows one.

    A finished count that goes down (the manager restarted or trimmed its history) starts the window again.
    """

    window_s: float = WINDOW_S
    min_finished: int = MIN_FINISHED
    _samples: deque[tuple[float, int, int]] = field(default_factory=deque, repr=False)

    def observe(self, now: float, running: int, finished: int) -> float | None:
        if self._samples and (finished < self._samples[-1][2] or now <= self._samples[-1][0]):
            self._samples.clear()
        self._samples.append((now, running, finished))
        # Keep one sample at or before the window's start, so the window is covered whole.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        finished_in_window = finished - self._samples[0][2]
        if finished_in_window < self.min_finished:
            return None
        busy_s = sum(before[1] * (after[0] - before[0]) for before, after in itertools.pairwise(self._samples))
        return busy_s / finished_in_window if busy_s > 0 else None
