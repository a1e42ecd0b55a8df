"""comfy-supervisor: the container's entry point. Exit codes are the worker's: 0 idle/limit/signal, 1 fatal,
2 configuration (reported before ComfyUI starts, one line per bad variable, no traceback; or, in serverless mode,
a queue token refused on 3 polls in a row); 130 a SIGINT (Ctrl-C) before ComfyUI started, one line, no traceback."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from pathlib import Path

from common.cli import EXIT_CONFIG, interrupted, refuse_arguments

INTERRUPTED_WHEN = "before ComfyUI started"

try:  # Ctrl-C while these load (0.4 s, seconds from a cold disk) says what a Ctrl-C later in the start says
    import structlog

    from common.children import keep_environment_private
    from common.limits import allow_many_connections
    from common.logs import configure_logging, register_secret
    from common.settings import ConfigError, env_name, warn_misspelt_variables
    from health.probe import probe_host
    from supervisor.comfyui_process import first_unprivileged_port, port_taken
    from supervisor.config import COMFYUI_HOST, SupervisorSettings, load_supervisor_settings
    from supervisor.model_paths import write_model_paths
    from supervisor.run import supervise
    from supervisor.scratch import empty_scratch_folders
    from supervisor.scratch_lock import ScratchInUse, lock_scratch
    from supervisor.writable_dirs import (
        SLOW_CHECK_S,
        said_if_slow,
        unreadable_directories,
        unwritable_directories,
        unwritable_file,
    )
    from worker.__main__ import usage as worker_usage
    from worker.config import WorkerSettings, load_settings
    from worker.service import run_process
except KeyboardInterrupt:
    raise SystemExit(interrupted("comfy-supervisor", INTERRUPTED_WHEN)) from None


def load_configuration() -> tuple[SupervisorSettings, WorkerSettings]:
    """Both halves at once, so one message names every bad variable of either."""
    problems: list[str] = []
    config = settings = None
    try:
        config = load_supervisor_settings()
    except ConfigError as exc:
        problems.append(str(exc))
    overrides = {"comfyui_output_dir": config.output_dir, "comfyui_temp_dir": config.temp_dir,
                 "comfyui_input_dir": config.input_dir} if config else {}  # fmt: skip
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        problems.append(str(exc))
    if config is not None and settings is not None and _health_port_clashes(config, settings):
        problems.append(f"Invalid worker configuration:\n  HEALTH_PORT: {settings.health_port} is ComfyUI's port "
                        "(COMFYUI_URL) too: give the health server another one")
    if problems or config is None or settings is None:
        raise ConfigError("\n".join(problems))
    return config, settings


def _health_port_clashes(config: SupervisorSettings, settings: WorkerSettings) -> bool:
    """The health server would listen on ComfyUI's loopback port: whichever binds second dies."""
    every_or_loopback = settings.health_host.strip() in ("", "0.0.0.0", COMFYUI_HOST, "localhost")
    return every_or_loopback and settings.health_port == config.comfyui_port


def directory_problems(config: SupervisorSettings, settings: WorkerSettings) -> list[str]:
    """A line per folder the container cannot use: every job would fail there, in a container reported ready."""
    writes = {"OUTPUTS_PATH": settings.outputs_path, "SCRATCH_DIR": config.scratch_dir}
    if config.comfyui_output_dir is not None:  # the operator's folder, not under SCRATCH_DIR: ComfyUI saves there
        writes["COMFYUI_OUTPUT_DIR"] = config.comfyui_output_dir
    problems = unwritable_directories(writes)
    if config.comfyui_input_dir is not None:
        problems += unreadable_directories({"COMFYUI_INPUT_DIR": config.comfyui_input_dir})
    return problems + _port_file_problems(settings)


def _port_file_problems(settings: WorkerSettings) -> list[str]:
    """With HEALTH_PORT=0 the image's HEALTHCHECK finds the port in HEALTH_PORT_FILE only: none, or one the health
    server cannot write, is a replica unhealthy for ever. With a fixed port the HEALTHCHECK falls back on it."""
    if settings.health_port != 0:
        return []
    if settings.health_port_file is None:
        return ["HEALTH_PORT=0 with HEALTH_PORT_FILE empty: the image's HEALTHCHECK finds the port the OS picked in "
                "that file only, and would report this replica unhealthy for ever. Fix: set HEALTH_PORT_FILE (the "
                "image's is /tmp/comfy-worker-health-port) or a fixed HEALTH_PORT."]
    widest = f"65535 {probe_host(settings.health_host)}\n".encode()  # what the health server writes there
    problem = unwritable_file("HEALTH_PORT_FILE", settings.health_port_file, widest)
    if problem is None:
        return []
    return [f"{problem} HEALTH_PORT=0 needs it: the image's HEALTHCHECK finds the port the OS picked there only "
            "(or set a fixed HEALTH_PORT)."]


def remove_stale_port_file(settings: WorkerSettings) -> None:
    """A HEALTH_PORT_FILE a killed run left (/tmp survives a restart in place) names its port, which another
    process may hold now: until the health server writes its own, the HEALTHCHECK finds no port rather than that."""
    if settings.health_port_file is not None:
        with contextlib.suppress(OSError):  # a folder there: the health server says so when it cannot write it
            settings.health_port_file.unlink(missing_ok=True)


def prepare_directories(config: SupervisorSettings) -> None:
    """ComfyUI's writable directories and its model paths file; an unwritable SCRATCH_DIR is a config error."""
    for directory in (config.output_dir, config.comfyui_dir / "input", config.comfyui_dir / "user"):
        directory.mkdir(parents=True, exist_ok=True)
    write_model_paths(config.model_paths_file, config.models_dir)


def comfyui_port_refused(config: SupervisorSettings) -> int | None:
    """None when ComfyUI can listen on its port; else the exit code, logged. A process already listening there (a
    ComfyUI left over from an earlier run) would answer the worker, and run its jobs, in place of the one this start
    is about to launch; a port this process may not bind is the configuration's fault, which no restart mends."""
    taken = port_taken(COMFYUI_HOST, config.comfyui_port)
    if taken is None:
        return None
    log, error = structlog.get_logger(), taken.strerror or type(taken).__name__
    if taken.errno in (errno.EACCES, errno.EPERM):
        log.error("supervisor.comfyui_port_privileged", port=config.comfyui_port, error=error, uid=os.getuid(),
                  why=_privileged_port_why("ComfyUI", "COMFYUI_URL", 8188))
        return EXIT_CONFIG
    log.error(
        "supervisor.comfyui_port_taken", port=config.comfyui_port, error=error,
        why="another process listens there, maybe a ComfyUI left over from an earlier run: the worker would "
        "send it jobs in place of the ComfyUI started now; stop it, or give COMFYUI_URL another port",
    )  # fmt: skip
    return 1


def health_port_refused(settings: WorkerSettings) -> int | None:
    """None unless HEALTH_PORT is a port this process may not bind (below 1024 as the image's uid 10001): then the
    exit code, logged. The health server would fail only after ComfyUI started, and exit 1, restarted for ever."""
    port = settings.health_port
    if port == 0 or port >= first_unprivileged_port():
        return None
    refused = port_taken(COMFYUI_HOST, port)  # the right to a port is the same on every address
    if refused is None or refused.errno not in (errno.EACCES, errno.EPERM):
        return None  # taken or free: the health server's own bind, on HEALTH_HOST, says which
    structlog.get_logger().error(
        "supervisor.health_port_privileged", port=port, error=refused.strerror or type(refused).__name__,
        uid=os.getuid(), why=_privileged_port_why("the health server", "HEALTH_PORT", 8000),
    )  # fmt: skip
    return EXIT_CONFIG


def _privileged_port_why(server: str, variable: str, default: int) -> str:
    return (f"ports below {first_unprivileged_port()} need root or CAP_NET_BIND_SERVICE, which this container lacks: "
            f"{server} could not listen there; give {variable} a port from 1024 up (the default is {default})")


def usage() -> str:
    lines = ["usage: comfy-supervisor  (the container's entry point: ComfyUI and the worker; configured by environment "
             "variables, see docs/container.md)", ""]
    for name, field in SupervisorSettings.model_fields.items():
        lines.append(f"  {env_name(SupervisorSettings, name):<28} {field.default}")
    return "\n".join(lines) + "\n\nand the worker's:\n" + worker_usage()


def main() -> int:
    # `docker run <image> --help` lands here: say what to set, start nothing (the configuration may be complete).
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(usage())
        return 0
    # `docker run <image> bash` meant a shell: it started ComfyUI and a worker taking jobs
    refused = refuse_arguments("comfy-supervisor", "it is configured by environment variables (--help lists them). "
                               "For a shell in the image: docker run --entrypoint bash <image>")
    if refused is not None:
        return refused
    for sig in (signal.SIGTERM, signal.SIGHUP):  # as Python does SIGINT: until the worker takes them
        signal.signal(sig, _stop_before_start)
    try:
        return _checked_start()
    except KeyboardInterrupt:  # raised only until the worker takes SIGINT: before ComfyUI starts
        return interrupted("comfy-supervisor", INTERRUPTED_WHEN)
    except StoppedBeforeStart as stop:  # nothing runs yet: a stop like any other, exit 0
        sys.stderr.write(f"comfy-supervisor: stopped ({stop}) {INTERRUPTED_WHEN}; exiting\n")
        return 0


class StoppedBeforeStart(BaseException):  # not an Exception: no `except Exception` of the start may take it
    """A stop signal before the worker takes the stop signals (its default action: 143, without a word)."""


def _stop_before_start(signum: int, _frame: object) -> None:
    raise StoppedBeforeStart(signal.Signals(signum).name)


def _checked_start() -> int:
    """Check the configuration and the folders, take SCRATCH_DIR, start."""
    try:
        config, settings = load_configuration()
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_CONFIG
    problems = directory_problems(config, settings)
    if problems:
        sys.stderr.write("\n".join(problems) + "\n")
        return EXIT_CONFIG
    configure_logging(settings.log_format, settings.log_level)
    warn_misspelt_variables(SupervisorSettings, WorkerSettings)  # SERVERLESS_MOD=true: a replica that never exits
    allow_many_connections()
    keep_environment_private()  # ComfyUI, started without the secrets, must not read them at /proc/<ppid>/environ
    for secret in settings.secrets:
        register_secret(secret)
    log = structlog.get_logger()
    try:
        with _logged_if_slow("locking", config.scratch_dir):
            scratch_lock, unlocked = lock_scratch(config.scratch_dir)
    except ScratchInUse as exc:
        log.error("supervisor.scratch_in_use", variable="SCRATCH_DIR", error=str(exc))
        return EXIT_CONFIG
    if unlocked is not None:
        log.warning("supervisor.scratch_not_locked", error=unlocked,
                    why="a second container on this SCRATCH_DIR would not be refused")
    try:
        return _start(config, settings)
    finally:
        if scratch_lock is not None:
            scratch_lock.close()


def _logged_if_slow(step: str, path: Path) -> contextlib.AbstractContextManager[None]:
    return said_if_slow(lambda: structlog.get_logger().warning(
        "supervisor.start_step_slow", step=step, variable="SCRATCH_DIR", path=str(path), waited_s=SLOW_CHECK_S,
        why="a network mount that does not answer? The start waits for it",
    ))  # fmt: skip


def _start(config: SupervisorSettings, settings: WorkerSettings) -> int:
    """With SCRATCH_DIR ours: drop a killed run's HEALTH_PORT_FILE, check ComfyUI's port and the health server's, empty
    and prepare the scratch folders, supervise."""
    log = structlog.get_logger()
    remove_stale_port_file(settings)
    refused = comfyui_port_refused(config)
    if refused is None:
        refused = health_port_refused(settings)
    if refused is not None:
        return refused
    with _logged_if_slow("emptying ComfyUI's folders in", config.comfyui_dir):
        empty_scratch_folders(config, settings.outputs_path)  # first: a full scratch disk must not fail what follows
    try:
        prepare_directories(config)
    except OSError as exc:
        log.error("supervisor.config_error", variable="SCRATCH_DIR or COMFYUI_OUTPUT_DIR", error=str(exc))
        return EXIT_CONFIG
    if not config.models_dir.is_dir():
        log.warning("supervisor.models_dir_missing", models_dir=str(config.models_dir))
    try:
        return run_process(lambda worker: supervise(config, settings, worker), settings)
    except OSError as exc:  # e.g. HEALTH_PORT already taken, COMFYUI_COMMAND not executable
        log.error("supervisor.failed", error=f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
