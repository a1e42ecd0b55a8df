"""The image's HEALTHCHECK: GET /health on the port the health server bound, exit 0 on 200 and 1 otherwise.

`python -m health.probe`. With HEALTH_PORT=0 the OS picks the port, so the server writes the one it bound to
HEALTH_PORT_FILE (HealthServer.start), with the address it listens on, and this reads them there; without that
file, HEALTH_PORT on HEALTH_HOST. A server listening on every address (0.0.0.0, ::) is probed on loopback; one
bound to a single address (HEALTH_HOST=10.0.0.5) only answers there. It runs every few seconds: the standard
library only, nothing of the worker imported.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import stat
import sys
import urllib.request
from pathlib import Path

TIMEOUT_S = 4.0  # under the HEALTHCHECK's --timeout, so a hung server is this command's answer, not Docker's kill
LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # a server on every address answers on loopback


def write_port_file(path: Path, port: int, host: str) -> None:
    """The port and the address a probe reaches the server on. Whole or not at all: a probe never reads half."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        partial.write_text(f"{port} {probe_host(host)}\n")
        os.replace(partial, path)
    except OSError:  # a folder where the file should be, a full disk: no temporary file left at every start
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise


def probe_host(bound: str) -> str:
    """Where a server listening on ``bound`` (HEALTH_HOST, or the address it bound) answers this machine."""
    return LOOPBACK.get(bound, bound)


def bound_address(environ: dict[str, str]) -> tuple[str, int]:
    """HEALTH_PORT_FILE's port and address when that file exists, else HEALTH_PORT (8000 unset) on HEALTH_HOST
    (every address unset). ValueError for no port. Names in any case, as the worker's settings read them."""
    environ = {name.upper(): value for name, value in environ.items()}  # the last of two spellings wins, as there
    port_file = environ.get("HEALTH_PORT_FILE", "")
    text = f"{environ.get('HEALTH_PORT', '8000')} {probe_host(environ.get('HEALTH_HOST', '').strip())}"
    if port_file:
        # Absent: not bound (yet). Unreadable (a folder in its place, a file above it): the server could not write
        # it either, and said so: it listens on HEALTH_PORT. Not a file (a FIFO, which a plain open waits on for a
        # writer): the server replaces it with one when it binds.
        try:
            fd = os.open(port_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    text = os.read(fd, 128).decode()
            finally:
                os.close(fd)
        except TimeoutError:  # main's deadline, on a hung file system: the probe's answer, not a cause to go on
            raise
        except OSError:
            pass
    port_text, host = [*text.split(), "", ""][:2]
    number = float(port_text)  # as the worker's settings read HEALTH_PORT: ' 8000 ' and '8000.0' are 8000
    if not (number.is_integer() and 0 < number < 65536):
        raise ValueError(f"no port to probe: {port_text} (HEALTH_PORT=0 needs HEALTH_PORT_FILE)")
    return probe_host(host), int(number)


def health_url(environ: dict[str, str]) -> str:
    """The URL of /health on the server ``bound_address`` finds. ValueError for no port."""
    host, port = bound_address(environ)
    netloc = f"[{host}]" if ":" in host else host
    return f"http://{netloc}:{port}/health"


def probe(environ: dict[str, str]) -> str | None:
    """None when /health answers 200; otherwise why not."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through the machine's HTTP_PROXY
    try:
        with direct.open(health_url(environ), timeout=TIMEOUT_S):
            return None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # HTTPError (a 503) is an OSError
        return f"{type(exc).__name__}: {exc}"


def _out_of_time(_signum: int, _frame: object) -> None:
    raise TimeoutError(f"no answer within {TIMEOUT_S:g} s")


def main() -> int:
    # TIMEOUT_S bounds each connect and read, not the whole: a server sending its answer a byte at a time kept
    # the probe past Docker's --timeout, which then killed it without a word.
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
    problem = probe(dict(os.environ))
    signal.setitimer(signal.ITIMER_REAL, 0)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)  # Docker keeps it in the container's health log
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
