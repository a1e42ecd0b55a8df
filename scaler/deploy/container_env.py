"""The container's environment, checked at deploy time with the settings its supervisor and worker read at start."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from common.settings import misspelt_names, problems_in
from supervisor.config import SupervisorSettings
from worker.config import WorkerSettings

# The port the worker's health server listens on when the container is given no HEALTH_PORT.
DEFAULT_HEALTH_PORT: int = WorkerSettings.model_fields["health_port"].default
# Where the worker delivers results when the container is given no OUTPUTS_PATH.
DEFAULT_OUTPUTS_PATH: Path = WorkerSettings.model_fields["outputs_path"].default


class SupervisorSettingsOffImage(SupervisorSettings):
    """The supervisor's settings judged on the deploying machine: COMFYUI_COMMAND's program is installed in the
    image, not here, so it is not looked up (an empty or unparsable command still is refused)."""

    look_up_programs = False


def misspelt_problems(names_by_section: Mapping[str, Iterable[str]]) -> list[str]:
    """A line per variable the spec gives the container (``section`` -> its names) that no setting of the worker
    or the supervisor reads but one typo away from one: every replica would ignore it, and run on the setting's
    default (SERVERLESS_MOD = "true": replicas that never exit; the container only warns, in its log)."""
    return [f"{section}.{variable}: no setting has this name (every replica would ignore it): did you mean {setting}?"
            for section, names in names_by_section.items()
            for variable, setting in misspelt_names(names, SupervisorSettings, WorkerSettings)]


def container_env_problems(values: Mapping[str, str], unknown: Collection[str] = ()) -> list[str]:
    """A line per variable the worker or the supervisor would refuse at start, in ``values`` (the container's
    environment).

    Such a container exits at once, and the replica is restarted, on a billed GPU, again and again. A variable in
    ``unknown`` (a secret that already exists in Verda, its value not known here) is not judged.
    """
    worker = problems_in(WorkerSettings, values)
    supervisor = [problem for problem in problems_in(SupervisorSettingsOffImage, values) if problem not in worker]
    lines = [f"{problem} (every replica's worker would refuse this at start and exit)" for problem in worker]
    lines += [f"{problem} (every replica's supervisor would refuse this at start and exit)" for problem in supervisor]
    return [line for line in lines if line.split(":", 1)[0] not in unknown]
