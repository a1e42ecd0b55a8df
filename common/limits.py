"""Process limits every server raises at start."""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger()

# Past the kernel's default ceiling (fs.nr_open) the raise fails; a million connections is plenty anyway.
MAX_OPEN_FILES = 1 << 20


def allow_many_connections() -> None:
    """Raise the soft open-file limit to the hard one. Each connection holds a file descriptor, and containers
    often start at 1024: a thousand idle clients then left a server unable to accept any connection, /health
    included, for as long as they stayed (aiohttp closes an idle one after an hour)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            log.warning("open_files_limit_not_raised", soft=soft, hard=hard, error=str(exc))
            return
        log.info("open_files_limit_raised", soft=soft, to=wanted)
