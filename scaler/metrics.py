"""The scaler's Prometheus metrics, in a registry of its own, and the tiny HTTP server that exposes them."""

from __future__ import annotations

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

from common.limits import PROBE_HEADS
from common.metrics_answer import metrics_response
from common.waiting_connections import WaitingConnections
from scaler.policy import Reason, ScalingConfig

disable_created_metrics()
log = structlog.get_logger()

READ_SOURCES = ("queue", "backend")
# comfy_scaler_queue_manager_healthy before the first tick's /health read and whenever it reads no status.
QUEUE_MANAGER_HEALTH_UNKNOWN = -1


class ScalerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.desired_replicas = Gauge(
            "comfy_scaler_desired_replicas", "Replica count the scaler last decided.", registry=r
        )
        self.actual_replicas = Gauge(
            "comfy_scaler_actual_replicas", "Replicas the platform reported at the last successful read.", registry=r
        )
        self.pending_jobs = Gauge("comfy_scaler_pending_jobs", "pending_jobs at the last queue read.", registry=r)
        self.running_jobs = Gauge("comfy_scaler_running_jobs", "running_jobs at the last queue read.", registry=r)
        self.decisions = Counter(
            "comfy_scaler_decisions", "Decisions made, by reason (scale_up, steady, hold_...).", ["reason"], registry=r
        )
        self.read_errors = Counter(
            "comfy_scaler_read_errors", "Failed reads of an input, by source (queue|backend).", ["source"], registry=r
        )
        self.apply_errors = Counter(
            "comfy_scaler_apply_errors", "Failed attempts to write the replica count.", registry=r
        )
        self.applies = Counter(
            "comfy_scaler_applies", "Replica count writes that changed the platform.", registry=r
        )
        self.drift = Counter(
            "comfy_scaler_drift", "Ticks that found the platform's replica bounds changed outside the scaler.",
            registry=r,
        )
        self.consecutive_failures = Gauge(
            "comfy_scaler_consecutive_failures", "Ticks in a row whose inputs could not be read.", registry=r
        )
        self.estimated_spend = Gauge(
            "comfy_scaler_estimated_spend", "Committed spend (currency of the price) over the window.",
            ["window"], registry=r,
        )
        self.last_decision = Gauge(
            "comfy_scaler_last_decision_timestamp_seconds", "When the last decision was made (epoch s).", registry=r
        )
        self.interval = Gauge(
            "comfy_scaler_interval_seconds", "Seconds between ticks (SCALER_INTERVAL_S).", registry=r
        )
        self.queue_manager_healthy = Gauge(
            "comfy_scaler_queue_manager_healthy",
            "The queue manager's GET /health at the last tick: 1 healthy, 0 unhealthy, -1 unread.", registry=r,
        )
        self.queue_manager_healthy.set(QUEUE_MANAGER_HEALTH_UNKNOWN)
        # Exported at 0 from the start: a series born at 1 shows Prometheus no increase, and the first read error
        # (or decision of a reason) after each start was missing from every rate() and increase().
        for source in READ_SOURCES:
            self.read_errors.labels(source=source)
        for reason in Reason:
            self.decisions.labels(reason=reason)
        # The limits, beside the figures they bound, so an alert can compare the two (deploy/monitoring).
        self.max_replicas = Gauge("comfy_scaler_max_replicas", "The most replicas the scaler may ask for.", registry=r)
        self.budget = Gauge(
            "comfy_scaler_budget", "Spend limit over the window (hour|day); absent when none is set.",
            ["window"], registry=r,
        )

    def set_limits(self, config: ScalingConfig) -> None:
        self.max_replicas.set(config.max_replicas)
        self.set_budgets({"hour": config.max_spend_per_hour, "day": config.max_spend_per_day})

    def set_budgets(self, budgets: dict[str, float | None]) -> None:
        for window, limit in budgets.items():
            if limit is not None:
                self.budget.labels(window=window).set(limit)


class ProviderMetrics:
    """The fleet's per-provider figures, in the scaler's registry (``SCALER_PROVIDERS`` set)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.target_replicas = Gauge(
            "comfy_scaler_provider_target_replicas", "Replicas the fleet asks of the provider.", ["provider"],
            registry=r,
        )
        self.replicas = Gauge(
            "comfy_scaler_provider_replicas",
            "Replicas the provider reports, by state (live|ready); NaN while it cannot be read.",
            ["provider", "state"], registry=r,
        )
        self.degraded = Gauge(
            "comfy_scaler_provider_degraded", "1 while the provider is degraded (its shortfall goes elsewhere).",
            ["provider"], registry=r,
        )
        self.degradations = Counter(
            "comfy_scaler_provider_degradations",
            "Times the provider was marked degraded, by reason (quota_reached|errors|start_deadline|paused).",
            ["provider", "reason"], registry=r,
        )
        self.moves = Counter(
            "comfy_scaler_provider_moves",
            "Changes to a provider's replica count, by reason (place|fallback|scale_down|drain|degraded_release).",
            ["provider", "reason"], registry=r,
        )
        self.spend = Gauge(
            "comfy_scaler_provider_spend",
            "Billed cost by the provider's own rule, by window (last_hour|last_day|today); provider=total sums all.",
            ["provider", "window"], registry=r,
        )
        self.price = Gauge(
            "comfy_scaler_provider_price_per_hour", "Hourly price of one replica on the provider.", ["provider"],
            registry=r,
        )
        self.fallback_engaged = Gauge(
            "comfy_scaler_fallback_engaged", "1 while replicas run on a provider because a cheaper one is degraded.",
            registry=r,
        )
        self.budget_capped = Counter(
            "comfy_scaler_provider_budget_capped", "Ticks on which the budget held back new replicas on a provider.",
            ["provider"], registry=r,
        )


class MetricsServer:
    """Serves ``GET /metrics`` from ``metrics.registry``; ``start()`` returns the bound port."""

    def __init__(self, metrics: ScalerMetrics, *, host: str = "0.0.0.0", port: int = 9110) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        # The limits of the worker's health server: a client dripping its head held it for an hour.
        self._waiting = WaitingConnections("scaler_metrics", PROBE_HEADS)

    async def start(self) -> int:
        app = web.Application(middlewares=[self._waiting.middleware])
        app.router.add_get("/metrics", self._serve_metrics)
        self._runner = await self._waiting.start_runner(app)
        await web.TCPSite(self._runner, self._host, self._port).start()
        port = self._runner.addresses[0][1]
        log.info("scaler_metrics_listening", host=self._host, port=port)
        return port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        return metrics_response(self._metrics.registry, request.headers.get("Accept", ""))
