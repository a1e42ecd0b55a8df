"""RunPod pods as a scaler backend: one pod per replica, created and terminated through REST API v2.

Why pods and not a serverless endpoint: docs/providers.md (RunPod section). The scaler pins a count; this
backend keeps exactly that many of its pods alive (PROVISIONING, STARTING or RUNNING), recognised by name
(``<name>-<8 hex>``). A pod whose container stopped or failed (EXITED, ERROR) is terminated and replaced at
the next observe, as Verda or Kubernetes would restart it. Scale-down stops a pod (the container's own
shutdown, so the worker can hand its job back) and then terminates it (a stopped pod keeps its disk, which is
billed). Pods still starting go first (no job on them yet), then those whose worker said it was idle at its
last /health, busy ones last; the newest first within each. A create refused for capacity,
access or balance (400, 402, 403) reports ``quota_reached`` until a create succeeds again, so the scaler
holds and a fallback can take over.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

import httpx
import structlog

from common.http_answers import AnswerTooLarge
from common.logs import scrubbed_excerpt
from scaler.policy import PAUSED, QUOTA_REACHED
from scaler.providers.base import BackendView, FirstSeen, stop_rank
from scaler.providers.runpod.client import DEAD_STATUSES, CreateUnconfirmedError, Pod, RunPodAPIError, RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from scaler.settle import settled

log = structlog.get_logger()
T = TypeVar("T")

HEALTHY = "healthy"
REFUSAL_STATUSES = frozenset({400, 402, 403})
NAME_RULE = re.compile(r"^[a-z0-9][a-z0-9-]{0,53}$")
LISTING_LAG_S = 120.0  # a created pod not listed after this is taken as lost, and made again
STOP_LAG_S = 120.0  # a pod still live this long after its stop was asked is terminated without its stop
TERMINATE_LAG_S = 300.0  # a dead pod still listed this long after RunPod answered its DELETE: said, as an error
TERMINATE_RETRY_S = 600.0  # ... and from then on its DELETE is asked again this often, not at every observe
QUOTED_TEXT_LIMIT = 300  # characters logged of a text RunPod (an id, a status) or a pod's /health (a reason) gives
READY_PHASES = frozenset({"idle", "busy"})  # the worker's /health phases of a pod that takes jobs
# Pods created, stopped or terminated at once. RunPod limits requests per account and minute, hour and day (quotas it
# announces in RateLimit-Policy), not how many are in flight: the bound spreads a large wake-up's or scale-down's burst
# without changing how many calls it takes. 10 is twice the default SCALER_RUNPOD_MAX_REPLICAS: such a fleet is asked
# for, or stopped by the kill switch, in one round, the time of one call, where one after another it took the sum.
CALL_CONCURRENCY = 10


class RunPodBackend:
    """Owns ``client`` (closed by ``aclose``). ``pod_body`` is the POST /pods body without ``name``."""

    def __init__(
        self,
        client: RunPodClient,
        name: str,
        pod_body: Mapping[str, Any],
        *,
        clock: Callable[[], float] = time.time,
        health: PodHealthProbe | None = None,
    ) -> None:
        if not NAME_RULE.fullmatch(name):
            raise ValueError(f"RunPod pod name prefix {name!r} must be 1-54 characters of [a-z0-9-]")
        if "name" in pod_body:
            raise ValueError("pod_body must not carry a name: the backend names each pod")
        self.client = client
        self.name = name
        self.pod_body = dict(pod_body)
        self._clock = clock
        self._first_seen = FirstSeen()
        self._own = re.compile(rf"^{re.escape(name)}-[0-9a-f]{{8}}$")
        self._desired: int | None = None  # None until the first apply: never touch pods before being told
        self._paused = False
        self.refusal: str | None = None  # why RunPod last refused to create a pod, until a create succeeds
        self.pods: tuple[Pod, ...] = ()  # this backend's pods as last read, with their RunPod status
        # Pods asked for here that GET /pods does not list yet (name -> when asked): counted as there for
        # LISTING_LAG_S, so a listing that lags behind the creates does not make the same pods again at every tick.
        # A name goes in before its POST is sent: a create cut off before its answer (the fleet's per-call timeout,
        # a lost connection) may have made the pod, and forgotten, it was made again (4 pods for a max of 3).
        self._unlisted: dict[str, float] = {}
        # Pods asked to stop (id -> when first asked): RunPod may accept a stop that never happens, and asked again
        # at every observe, such a pod ran on, billed, for as long as the scaler did.
        self._stopping: dict[str, float] = {}
        # Dead pods whose DELETE RunPod answered, accepted or 404 (id -> when first), and those still listed
        # TERMINATE_LAG_S after it (id -> when to ask again): asked at every observe, such a pod's disk was billed
        # with no end, unsaid.
        self._terminated_at: dict[str, float] = {}
        self._terminate_again_at: dict[str, float] = {}
        # Pods listed live whose DELETE RunPod answered 404 (a listing that lags behind pods gone): counted live,
        # such a pod held a replica's place (and its price) that nothing filled; handled as a dead one instead.
        self._not_found: set[str] = set()
        self.health = health if health is not None else PodHealthProbe()

    def __repr__(self) -> str:
        return f"RunPodBackend(name={self.name!r}, desired={self._desired}, paused={self._paused})"

    async def observe(self) -> BackendView:
        """The pods as RunPod lists them, after replacing dead ones. A failed repair is logged, not raised:
        the observation stands, and the next observe tries again."""
        pods = await self._our_pods()
        if self._desired is not None:
            try:
                # At zero every pod is on its way out: no pod's /health is asked (the kill switch, an idle queue).
                wrote = await self._restart_unhealthy(pods) if self._target() else False
                wrote |= await self._reconcile(pods if not wrote else await self._our_pods())
            except (RunPodAPIError, CreateUnconfirmedError, httpx.HTTPError, AnswerTooLarge) as error:
                log.warning("runpod_reconcile_failed", error=_error_text(error))
                wrote = True
            if wrote:
                pods = await self._our_pods()
        else:
            # Not told a count yet (a scaler just restarted): nothing is touched, but the pods left running are
            # asked their /health, or they count as 0 ready at the first apply and a drain cuts them at once.
            await self.health.unhealthy(pod.id for pod in self._probed(pods))
        live = self._live(pods)
        # Billing begins at creation, as far as the API tells; a pod listed without it, when first listed so.
        replicas = self._first_seen.replicas([(pod.id, pod.created_at) for pod in live], self._clock())
        # Listed is not serving: a pod stuck provisioning, or whose worker never leaves "starting", must count
        # as not ready, or the fleet never degrades RunPod for it and drains the replicas that do serve.
        ready = sum(1 for pod in live if pod.status == "RUNNING" and self.health.phase.get(pod.id) in READY_PHASES)
        return BackendView(replicas=replicas, status=self._status(len(live)), ready=ready)

    async def apply(self, desired: int) -> bool:
        if desired < 0:
            raise ValueError(f"desired replicas must be >= 0, got {desired}")
        self._desired = desired
        return await self._reconcile(await self._our_pods())

    async def pause(self) -> None:
        """Terminate every pod of this backend and hold zero until ``resume`` (RunPod has no paused state)."""
        self._paused = True
        await self._reconcile(await self._our_pods())

    async def terminate_live(self) -> list[str]:
        """Terminate as they are the pods the last read listed live: what the kill switch does with a stop RunPod
        accepted and did not carry out. The ids whose DELETE RunPod accepted; once every pod was tried, the first
        failure raised (each logged)."""
        live = self._live(self.pods)
        accepted = await _each_pod((pod.id, partial(self._terminate_tracked, pod)) for pod in live)
        return [pod.id for pod, done in zip(live, accepted, strict=True) if done]

    async def resume(self) -> None:
        self._paused = False
        if self._desired is not None:
            await self._reconcile(await self._our_pods())

    async def aclose(self) -> None:
        await self.health.aclose()
        await self.client.aclose()

    @property
    def cost_per_hour(self) -> float:
        """What the pods as last read cost per hour together, as RunPod bills them (each pod's ``cost``)."""
        return sum(pod.cost_per_hour for pod in self._live(self.pods))

    async def price_per_hour(self) -> float:
        """List price in USD per hour of one pod of ``pod_body`` (GPU price x count, in its cloud)."""
        gpu = self.pod_body.get("gpu") or {}
        price = await self.client.gpu_price_per_hour(str(gpu.get("id", "")), cloud=self.pod_body.get("cloud", "SECURE"))
        return price * int(gpu.get("count", 1))

    # --- reconcile ------------------------------------------------------------------------------

    def _status(self, live: int) -> str:
        """``quota_reached`` while RunPod refuses pods still wanted. Once the count asked for is there (a fleet
        lowers a refusing provider's count to what it has), the last refusal answers nothing asked: reported
        still, it degraded RunPod again at every back-off's end before a pod was asked of it, for good."""
        if self._paused:
            return PAUSED
        wanted = self._target() > live + len(self._unlisted)
        return QUOTA_REACHED if self.refusal is not None and wanted else HEALTHY

    async def _our_pods(self) -> list[Pod]:
        pods = await self.client.list_pods(self.own)
        self.pods = tuple(pods)
        listed, now = {pod.name for pod in pods}, self._clock()
        self._unlisted = {name: at for name, at in self._unlisted.items()
                          if name not in listed and now - at < LISTING_LAG_S}
        ids = {pod.id for pod in pods}
        self._stopping = {pod_id: at for pod_id, at in self._stopping.items() if pod_id in ids}
        self._terminated_at = {pod_id: at for pod_id, at in self._terminated_at.items() if pod_id in ids}
        self._terminate_again_at = {pod_id: at for pod_id, at in self._terminate_again_at.items() if pod_id in ids}
        self._not_found &= ids
        return pods

    def own(self, name: str) -> bool:
        """A pod of this backend's, by its name; other pods of the account are never touched."""
        return self._own.fullmatch(name) is not None

    def _live(self, pods: Iterable[Pod]) -> list[Pod]:
        return [pod for pod in pods if pod.live and pod.id not in self._not_found]

    def _target(self) -> int:
        return 0 if self._paused or self._desired is None else self._desired

    async def _reconcile(self, pods: list[Pod]) -> bool:
        """Terminate dead and surplus pods, create missing ones. True when anything was written."""
        target = self._target()
        now = self._clock()
        dead = [pod for pod in pods if (pod.status in DEAD_STATUSES or pod.id in self._not_found)
                and now >= self._terminate_again_at.get(pod.id, -math.inf)]
        for pod in dead:
            # Not one the scaler stopped, which ended as asked (runpod_pod_stopping said it), nor one said already.
            if pod.id not in self._stopping and pod.id not in self._terminated_at:
                log.warning("runpod_pod_replaced", pod=_said(pod.id), status=_said(pod.status))
        live = self._live(pods)
        surplus = _surplus(live, target, self.health.phase)
        for pod in surplus:
            if pod.id not in self._stopping:  # said when its stop is first asked, not at every observe it takes
                log.info("runpod_pod_stopping", pod=_said(pod.id), status=_said(pod.status),
                         phase=_said(self.health.phase.get(pod.id)), target=target)
        terminated = await _each_pod([*((pod.id, partial(self._terminate_tracked, pod)) for pod in dead),
                                      *((pod.id, partial(self._stop_then_terminate, pod)) for pod in surplus)])
        created = await self._create_missing(target - len(live) - len(self._unlisted))
        return created or bool(surplus) or any(terminated)

    def _probed(self, pods: Iterable[Pod]) -> list[Pod]:
        """The running pods whose /health is asked: not one whose DELETE RunPod answered (accepted, or 404 though
        listed), which a lagging listing shows RUNNING on; probed, it was stopped and deleted again as unhealthy."""
        return [pod for pod in pods if pod.status == "RUNNING" and pod.id not in self._terminated_at
                and pod.id not in self._not_found]

    async def _restart_unhealthy(self, pods: list[Pod]) -> bool:
        """What Verda does on failed probes: a pod whose /health says "unhealthy" again and again is replaced."""
        running = {pod.id: pod for pod in self._probed(pods)}
        judged = await self.health.unhealthy(running)
        for pod_id, reason in judged.items():
            log.warning("runpod_pod_unhealthy", pod=_said(pod_id), reason=_said(reason))
        await _each_pod((pod_id, partial(self._replace_unhealthy, running[pod_id])) for pod_id in judged)
        return bool(judged)

    async def _replace_unhealthy(self, pod: Pod) -> None:
        await self._stop_then_terminate(pod)
        self.health.forget(pod.id)

    async def _terminate(self, pod: Pod) -> bool:
        accepted = await self.client.terminate_pod(pod.id)
        if not accepted and pod.live:
            self._not_found.add(pod.id)
        return accepted

    async def _terminate_tracked(self, pod: Pod) -> bool:
        """Terminate a dead pod, or a live one whose stop was not taken: said once, as an error, when it is still
        listed TERMINATE_LAG_S after RunPod first answered its DELETE (accepted it, or 404: not found though
        listed), then asked only every TERMINATE_RETRY_S."""
        accepted = await self._terminate(pod)
        now = self._clock()
        first = self._terminated_at.setdefault(pod.id, now)
        if now - first >= TERMINATE_LAG_S:
            if pod.id not in self._terminate_again_at:
                log.error("runpod_pod_not_terminated", pod=_said(pod.id), status=_said(pod.status),
                          delete_answer="accepted" if accepted else "404 not found",
                          first_terminated_s_ago=round(now - first), retry_every_s=TERMINATE_RETRY_S,
                          hint="RunPod answers its DELETE and keeps listing the pod, maybe billed (a dead one's disk, "
                               "a live one's GPU): terminate it in RunPod's console")
            self._terminate_again_at[pod.id] = now + TERMINATE_RETRY_S
        return accepted

    async def _stop_then_terminate(self, pod: Pod) -> None:
        """Stop first so the container gets its normal shutdown; terminate once it is down. A pod still stopping
        is terminated by the next reconcile, which finds it EXITED; one still live STOP_LAG_S after its first stop
        is terminated as it is."""
        now = self._clock()
        asked_at = self._stopping.setdefault(pod.id, now)
        if now - asked_at >= STOP_LAG_S:
            if pod.id not in self._terminated_at:
                log.warning("runpod_pod_stop_not_taken", pod=_said(pod.id), status=_said(pod.status),
                            stop_asked_s_ago=round(now - asked_at),
                            hint="terminated without its stop: a job it still ran is not handed back")
            if now >= self._terminate_again_at.get(pod.id, -math.inf):
                await self._terminate_tracked(pod)
            return
        stopped = await self.client.stop_pod(pod.id)
        if stopped is None or stopped.status in DEAD_STATUSES:
            await self._terminate(pod)

    async def _create_missing(self, missing: int) -> bool:
        """Ask for ``missing`` pods at once; True when any was made. Once RunPod refuses one, no pod is asked for
        beyond those already in flight. While it refuses, one create asks whether it still does before the others
        follow: each observe's one call, not one per missing pod, to notice that capacity is back."""
        refused = asyncio.Event()  # set by this reconcile's first refusal
        made: list[bool] = []
        if self.refusal is not None and missing > 0:
            made = await _each_pod(self._creates(1, refused))
        made += await _each_pod(self._creates(missing - len(made), refused))
        return any(made)

    def _creates(self, count: int, refused: asyncio.Event) -> list[tuple[str, Callable[[], Awaitable[bool]]]]:
        names = (f"{self.name}-{secrets.token_hex(4)}" for _ in range(count))
        return [(name, partial(self._create, name, refused)) for name in names]

    async def _create(self, name: str, refused: asyncio.Event) -> bool:
        if refused.is_set():  # waited for a slot while another create was refused
            return False
        self._unlisted[name] = self._clock()
        try:
            pod = await self.client.create_pod({"name": name, **self.pod_body})
        except RunPodAPIError as error:
            if 400 <= error.status < 500 and error.status != 408:  # RunPod answered that it made nothing
                del self._unlisted[name]
            if error.status not in REFUSAL_STATUSES:
                raise
            if self.refusal is None:
                log.warning("runpod_create_refused", status=error.status, detail=error.detail)
            self.refusal = f"{error.status} {error.detail}"
            refused.set()
            return False
        if self.refusal is not None and not refused.is_set():  # unless another pod of this reconcile was refused
            log.info("runpod_create_accepted_again", previous_refusal=self.refusal)
            self.refusal = None
        log.info("runpod_pod_created", pod=_said(pod.id), name=name)
        return True


async def _each_pod(calls: Iterable[tuple[str, Callable[[], Awaitable[T]]]]) -> list[T]:
    """Each call (the pod's id, or a new pod's name, and the call) made, at most CALL_CONCURRENCY at once; each
    failure logged with its pod, then the first raised: a pod refusing its stop must not keep the others running,
    and billed, nor go unnamed. Cancelled, it ends every call under way before it returns."""
    slots = asyncio.Semaphore(CALL_CONCURRENCY)
    calls = list(calls)

    async def bounded(call: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await call()

    results = await settled(bounded(call) for _, call in calls)
    failures = [(pod, result) for (pod, _), result in zip(calls, results, strict=True) if isinstance(result, Exception)]
    for pod, error in failures:
        log.warning("runpod_pod_call_failed", pod=_said(pod), error=_error_text(error))
    if failures:
        raise failures[0][1]
    return results  # type: ignore[return-value]  # no Exception left


def _said(text: str | None) -> str | None:
    """A pod's id, status, phase or reason for a log line: RunPod's answers and the pod's /health may give any
    length."""
    return None if text is None else scrubbed_excerpt(text, QUOTED_TEXT_LIMIT)


def _error_text(error: Exception) -> str:
    """What RunPod answered (RunPodAPIError: status, request, problem detail) or the error's own text; never the
    API key, which travels only in a header."""
    return str(error) or type(error).__name__


def _surplus(live: list[Pod], target: int, phases: Mapping[str, str]) -> list[Pod]:
    """Which pods to terminate to get down to ``target``: pods not yet running first, then by their worker's last
    phase (``stop_rank``), the newest first within each."""
    excess = len(live) - target
    if excess <= 0:
        return []
    ranked = sorted(live, key=lambda pod: (pod.status == "RUNNING", stop_rank(phases.get(pod.id)), -_created(pod)))
    return ranked[:excess]


def _created(pod: Pod) -> float:
    return pod.created_at.timestamp() if pod.created_at is not None else float("inf")

