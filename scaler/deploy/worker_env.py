"""The container's environment, checked at deploy time with the settings its worker reads at start."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from common.settings import problems_in
from worker.config import WorkerSettings


def worker_env_problems(values: Mapping[str, str], unknown: Collection[str] = ()) -> list[str]:
    """A line per variable the worker would refuse at start, in ``values`` (the container's environment).

    Such a worker exits at once, and the replica is restarted, on a billed GPU, again and again. A variable in
    ``unknown`` (a secret that already exists in Verda, its value not known here) is not judged.
    """
    problems = problems_in(WorkerSettings, values)
    return [f"{problem} (every replica's worker would refuse this at start and exit)"
            for problem in problems if problem.split(":", 1)[0] not in unknown]
