"""Gauges computed at scrape time from the worker's state, exposed beside the worker's own registry."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from health.verdict import liveness, readiness
from worker.state import WorkerState


class LiveStateCollector(Collector):
    """Values that change with the clock (uptime, heartbeat age), which a stored gauge would show stale."""

    def __init__(self, state: WorkerState, heartbeat_timeout_s: float) -> None:
        self._state = state
        self._heartbeat_timeout_s = heartbeat_timeout_s

    def collect(self) -> Iterator[Metric]:
        state = self._state
        yield _gauge("comfy_worker_uptime_seconds", "Seconds since the worker started.", state.uptime_s())
        yield _gauge(
            "comfy_worker_heartbeat_age_seconds",
            "Seconds since the worker loop last reported progress.", state.heartbeat_age_s(),
        )
        yield _gauge(
            "comfy_worker_consecutive_idle_polls",
            "Polls in a row that found no job (serverless idle exit at the limit).",
            state.consecutive_idle_polls,
        )
        yield _gauge(
            "comfy_worker_max_idle_polls", "Idle-poll limit before a serverless worker exits.",
            state.max_idle_polls,
        )
        yield _gauge(
            "comfy_worker_healthy", "1 when GET /health answers 200, else 0.",
            int(liveness(state, self._heartbeat_timeout_s).healthy),
        )
        yield _gauge("comfy_worker_ready", "1 when GET /ready answers 200, else 0.", int(readiness(state).healthy))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class _WorkerRegistryCollector(Collector):
    """Re-exposes the worker's registry so one scrape returns both without touching the worker's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


def scrape_registry(state: WorkerState, heartbeat_timeout_s: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_WorkerRegistryCollector(state.metrics.registry))
    registry.register(LiveStateCollector(state, heartbeat_timeout_s))
    return registry
