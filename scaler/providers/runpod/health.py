"""The worker's /health, read through RunPod's HTTP proxy: RunPod probes nothing, so the backend does.

Same semantics as Verda's probe (docs/health-and-metrics.md): only a 503 whose JSON says "unhealthy" means
"restart me"; a 200 is healthy, whatever its phase; anything else (the proxy's 502 while the container starts,
a timeout, a connection error) says nothing about the worker and is not counted. A pod is judged unhealthy
after ``unhealthy_after`` such answers in a row. The probe sends no credentials: the proxy URL is public.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import structlog

from common.http_answers import AnswerTooLarge, request_bounded
from common.urls import direct_transport
from scaler.providers.base import HEALTH_ANSWER_LIMIT_BYTES

log = structlog.get_logger()

PROXY_HEALTH_URL = "https://{pod_id}-{port}.proxy.runpod.net/health"  # RunPod's proxy: https://[POD_ID]-[PORT]...


@dataclass(frozen=True)
class HealthAnswer:
    unhealthy: bool | None  # None: the answer says nothing about the worker
    phase: str | None  # the worker's phase when it answered (starting, idle, busy, draining)
    reason: str | None


class PodHealthProbe:
    def __init__(
        self, url: str = PROXY_HEALTH_URL, *, port: int = 8000, timeout_s: float = 3.0, unhealthy_after: int = 3
    ) -> None:
        self._url = url
        self._port = port
        self._unhealthy_after = unhealthy_after
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            timeout=timeout_s, verify=True, follow_redirects=False, transport=direct_transport(url)
        )
        self._strikes: dict[str, int] = {}
        self.phase: dict[str, str] = {}  # pod id -> the phase its /health last reported

    async def aclose(self) -> None:
        await self._http.aclose()

    async def unhealthy(self, pod_ids: Iterable[str]) -> dict[str, str]:
        """Probe each pod once; the pods judged unhealthy now, with the reason their /health gave. A pod's count
        runs on until ``forget``: judged before the backend may act (before its first apply), it stays judged."""
        ids = list(pod_ids)
        answers = await asyncio.gather(*(self._ask(pod_id) for pod_id in ids))
        for gone in set(self._strikes) - set(ids):
            del self._strikes[gone]
        for gone in set(self.phase) - set(ids):
            del self.phase[gone]
        judged: dict[str, str] = {}
        for pod_id, answer in zip(ids, answers, strict=True):
            if answer.phase is not None:
                self.phase[pod_id] = answer.phase
            if answer.unhealthy is None:
                continue
            strikes = self._strikes[pod_id] = self._strikes.get(pod_id, 0) + 1 if answer.unhealthy else 0
            if strikes >= self._unhealthy_after:
                judged[pod_id] = answer.reason or "unhealthy"
        return judged

    def forget(self, pod_id: str) -> None:
        """The pod judged unhealthy was acted on: a pod still answering afterwards needs a whole count again."""
        self._strikes.pop(pod_id, None)

    async def _ask(self, pod_id: str) -> HealthAnswer:
        # The id is RunPod's answer: quoted, it cannot leave the host name (a "/" or "@" in it sent the probe, and
        # the judgement of the pod, to any address).
        url = self._url.format(pod_id=quote(pod_id, safe=""), port=self._port)
        try:
            response = await request_bounded(
                self._http, "GET", url, peer="RunPod pod /health", limit_bytes=HEALTH_ANSWER_LIMIT_BYTES,
                deadline_s=self._timeout_s,  # the whole answer: a pod dripping bytes would hold the tick
            )
            body = response.json()
        except (httpx.HTTPError, ValueError, RecursionError, AnswerTooLarge):
            return HealthAnswer(None, None, None)
        if not isinstance(body, dict):
            return HealthAnswer(None, None, None)
        if response.status_code == 200:
            return HealthAnswer(False, _text(body.get("phase")), None)
        if response.status_code == 503 and body.get("status") == "unhealthy":
            return HealthAnswer(True, _text(body.get("phase")), _text(body.get("reason")))
        return HealthAnswer(None, None, None)


def _text(value: object) -> str | None:
    return str(value) if value is not None else None
