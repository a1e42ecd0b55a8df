"""The image's HEALTHCHECK: GET /health on the port the health server bound, exit 0 on 200 and 1 otherwise.

`python -m health.probe`. With HEALTH_PORT=0 the OS picks the port, so the server writes the one it bound to
HEALTH_PORT_FILE (HealthServer.start) and this reads it there; without that file, HEALTH_PORT. It runs every few
seconds: the standard library only, nothing of the worker imported.
"""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.request
from pathlib import Path

TIMEOUT_S = 4.0  # under the HEALTHCHECK's --timeout, so a hung server is this command's answer, not Docker's kill


def write_port_file(path: Path, port: int) -> None:
    """Whole or not at all: a probe never reads half a number."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(f"{port}\n")
    os.replace(partial, path)


def bound_port(environ: dict[str, str]) -> int:
    """HEALTH_PORT_FILE's port when that file exists, else HEALTH_PORT (8000 unset). ValueError for no port."""
    port_file = environ.get("HEALTH_PORT_FILE", "")
    text = environ.get("HEALTH_PORT", "8000")
    if port_file:
        with contextlib.suppress(FileNotFoundError), open(port_file) as written:  # absent: not bound (yet)
            text = written.read(16)
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"no port to probe: {port} (HEALTH_PORT=0 needs HEALTH_PORT_FILE)")
    return port


def probe(environ: dict[str, str]) -> str | None:
    """None when /health answers 200; otherwise why not."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through the machine's HTTP_PROXY
    try:
        with direct.open(f"http://127.0.0.1:{bound_port(environ)}/health", timeout=TIMEOUT_S):
            return None
    except (OSError, ValueError) as exc:  # HTTPError (a 503) is an OSError
        return f"{type(exc).__name__}: {exc}"


def main() -> int:
    problem = probe(dict(os.environ))
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)  # Docker keeps it in the container's health log
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
