"""The container's health server keeps answering with more idle connections than a container's usual soft
open-file limit (1024): Verda restarts a replica whose health check gets no answer."""

from __future__ import annotations

import asyncio
import resource
import signal

import httpx
import pytest

CONTAINER_SOFT_LIMIT = 1024


def _container_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (CONTAINER_SOFT_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


async def test_health_answers_with_more_idle_connections_than_the_soft_open_file_limit(
    base_env, run_supervisor
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * CONTAINER_SOFT_LIMIT:
        pytest.skip(f"the hard open-file limit ({hard}) leaves no room above {CONTAINER_SOFT_LIMIT}")
    supervisor = await run_supervisor(base_env, _container_file_limit)
    await supervisor.wait_until(lambda: supervisor.get("/health"), what="/health to answer")
    port = int(base_env["HEALTH_PORT"])
    idle = []
    try:
        for _ in range(CONTAINER_SOFT_LIMIT + 50):
            idle.append((await asyncio.open_connection("127.0.0.1", port))[1])
        async with httpx.AsyncClient(base_url=supervisor.health_url, timeout=3) as client:
            assert (await client.get("/health")).status_code == 200
    finally:
        for writer in idle:
            writer.close()
    assert "open_files_limit_raised" in supervisor.output
    supervisor.signal(signal.SIGTERM)
    assert await supervisor.wait() == 0
    assert "out of system resource" not in supervisor.output
