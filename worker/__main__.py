"""`python -m worker` / `comfy-worker`: exit 0 idle or stopped, 1 fatal, 2 bad configuration (or a refused token),
130 a SIGINT (Ctrl-C) before the worker took it, one line, no traceback."""

from __future__ import annotations

import sys

from common.cli import EXIT_CONFIG, interrupted, refuse_arguments

try:  # Ctrl-C while these load (0.6 s) says what a Ctrl-C later in the start says
    import structlog

    from common.limits import allow_many_connections
    from common.logs import configure_logging, register_secret
    from common.settings import ConfigError, env_name, warn_misspelt_variables
    from common.text import escape_controls
    from common.urls import IN_CLEAR, credentials_in_clear, redact_url
    from worker.config import WorkerSettings, load_settings
    from worker.service import run_process, serve
except KeyboardInterrupt:
    raise SystemExit(interrupted("comfy-worker")) from None

MISSING_PEER_HINT = (
    "The worker needs a queue manager (QUEUE_MANAGER_URL, e.g. https://queue.example.com) and a ComfyUI "
    "(COMFYUI_URL, default http://127.0.0.1:8188). To try everything on this machine without either, run: ./dev demo"
)


def usage() -> str:
    lines = ["usage: comfy-worker  (configured by environment variables or a .env file; see docs/worker.md)", ""]
    for name, field in WorkerSettings.model_fields.items():
        default = "required" if field.is_required() else "generated" if field.default_factory else field.default
        lines.append(f"  {env_name(WorkerSettings, name):<28} {default}")
    return "\n".join(lines)


def main() -> int:
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(usage())
        return 0
    # `comfy-worker --queue-url …` ran on QUEUE_MANAGER_URL's value (or its default) unsaid
    refused = refuse_arguments("comfy-worker", "it is configured by environment variables or a .env file (--help "
                               "lists them)")
    if refused is not None:
        return refused
    try:
        return _start()
    except KeyboardInterrupt:  # raised only until serve() takes SIGINT
        return interrupted("comfy-worker")


def _start() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(escape_controls(str(exc), keep_lines=True), file=sys.stderr)  # it may quote a variable's value
        if "QUEUE_MANAGER_URL" in str(exc):
            print(MISSING_PEER_HINT, file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_format, settings.log_level)
    warn_misspelt_variables(WorkerSettings)
    allow_many_connections()
    for secret in settings.secrets:
        register_secret(secret)
    _warn_credentials_in_clear(settings)
    return run_process(lambda worker: serve(settings, worker), settings)


def _warn_credentials_in_clear(settings: WorkerSettings) -> None:
    """Warned, not refused as a deploy is: a docker-compose service name on a private network is common."""
    url = settings.queue_base_url
    if credentials_in_clear(url, bool(settings.queue_manager_token)):
        structlog.get_logger().warning(
            "Queue manager credentials travel in clear", variable="QUEUE_MANAGER_URL",
            queue_manager_url=redact_url(url),
            fix=f"QUEUE_MANAGER_URL {IN_CLEAR}; keep plain http:// only on a private network you trust",
        )


if __name__ == "__main__":
    sys.exit(main())
