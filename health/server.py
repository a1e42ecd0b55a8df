"""HTTP health server on the worker's own event loop: /health, /ready, /metrics, /status.

Every handler only reads WorkerState; none calls ComfyUI or the queue, so a probe answers at once even
while ComfyUI is still loading or the queue manager is down.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from aiohttp import web

from common.limits import PROBE_HEADS
from common.metrics_answer import metrics_response
from common.waiting_connections import WaitingConnections
from health.live_metrics import scrape_registry
from health.probe import write_port_file
from health.status import status_document
from health.verdict import Verdict, liveness, readiness
from worker.state import WorkerState

log = structlog.get_logger()


class HealthServer:
    def __init__(
        self,
        state: WorkerState,
        *,
        host: str = "0.0.0.0",
        port: int = 8000,
        heartbeat_timeout_s: float = 120.0,
        port_file: Path | None = None,
    ) -> None:
        self._state = state
        self._host = host
        self._port = port
        self._port_file = port_file  # where the image's HEALTHCHECK (health/probe.py) reads the bound port
        self._written_port_file: Path | None = None  # only what this server wrote is its to remove
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._scrape_registry = scrape_registry(state, heartbeat_timeout_s)
        self._runner: web.AppRunner | None = None
        self._waiting = WaitingConnections("health", PROBE_HEADS)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._waiting.middleware])
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        return app

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        self._runner = await self._waiting.start_runner(self._app())
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        address = self._runner.addresses[0]
        host, port = address[:2]
        if len(address) == 4 and address[3]:  # a link-local IPv6 address is reached through its interface only
            host = f"{host}%{address[3]}"
        log.info("health.started", host=self._host, port=port)
        if self._port_file is not None:
            try:
                write_port_file(self._port_file, port, host)
                self._written_port_file = self._port_file
            except (OSError, ValueError) as exc:  # ValueError: a path with no file name (HEALTH_PORT_FILE=.)
                said = {"path": str(self._port_file), "error": f"{type(exc).__name__}: {exc}"}
                if self._port == 0:
                    log.error("Could not write HEALTH_PORT_FILE: with HEALTH_PORT=0 the image's HEALTHCHECK cannot "
                              "find the port, and reports this replica unhealthy", **said)
                else:
                    log.error("Could not write HEALTH_PORT_FILE: the image's HEALTHCHECK probes HEALTH_PORT instead",
                              **said)
        return port

    async def stop(self) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        port_file, self._written_port_file = self._written_port_file, None
        if port_file is not None:  # a later server may bind that port: no probe may take it for this one
            try:
                port_file.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("Could not remove HEALTH_PORT_FILE", path=str(port_file), error=str(exc))
        await runner.cleanup()
        log.info("health.stopped")

    async def _health(self, _request: web.Request) -> web.Response:
        return _verdict_response(liveness(self._state, self._heartbeat_timeout_s), self._state)

    async def _ready(self, _request: web.Request) -> web.Response:
        return _verdict_response(readiness(self._state), self._state)

    async def _metrics(self, request: web.Request) -> web.Response:
        return metrics_response(self._scrape_registry, request.headers.get("Accept", ""))

    async def _status(self, _request: web.Request) -> web.Response:
        return web.json_response(status_document(self._state, self._heartbeat_timeout_s))


def _verdict_response(verdict: Verdict, state: WorkerState) -> web.Response:
    body: dict[str, object] = {"status": verdict.status, "phase": state.phase.value}
    if verdict.reason is not None:
        body["reason"] = verdict.reason
    return web.json_response(body, status=verdict.http_status)
