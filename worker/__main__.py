"""`python -m worker` / `comfy-worker`: exit 0 idle or stopped, 1 fatal, 2 bad configuration."""

from __future__ import annotations

import asyncio
import sys

from worker.config import ConfigError, load_settings
from worker.logs import configure_logging, register_secret
from worker.service import serve

MISSING_PEER_HINT = (
    "The worker needs a queue manager (QUEUE_MANAGER_URL, e.g. https://queue.example.com) and a ComfyUI "
    "(COMFYUI_URL, default http://127.0.0.1:8188). To try everything on this machine without either, run: ./dev demo"
)


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        if "QUEUE_MANAGER_URL" in str(exc):
            print(MISSING_PEER_HINT, file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if settings.queue_manager_token:
        register_secret(settings.queue_manager_token.get_secret_value())
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
