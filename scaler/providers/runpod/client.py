"""Async client for RunPod's REST API v2 (pods and the GPU catalog).

v2 is the API RunPod keeps: REST v1 and GraphQL (what the official `runpod` package speaks) were retired on
2026-12-01 at the latest (docs/providers.md, RunPod section). The API key is a bearer token held as a SecretStr
and registered with the log scrubber. Reads and deletes are retried on 408/429/5xx and connection errors;
a create is retried only once a fresh listing shows the pod was not made (pod names are unique per attempt),
so a lost answer never doubles a pod.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from pydantic import SecretStr

from common.http_answers import API_ANSWER_BYTES, request_bounded
from common.logs import register_secret, scrubbed_excerpt
from common.urls import direct_transport
from scaler.policy import MAX_PRICE_PER_HOUR, PRICE_RANGE, is_a_price
from scaler.providers.base import MAX_LISTED_REPLICAS, listed_once
from scaler.providers.http import TransientRetry, parse_timestamp, retry_after_seconds

log = structlog.get_logger()

DEFAULT_BASE_URL = "https://api.runpod.io/v2"
RETRYABLE_STATUSES = frozenset({408, 429})
ERROR_TEXT_LIMIT = 200
MAX_QUOTED_ERRORS = 5  # of a problem body's "errors": a create's body has few fields to be wrong
DEAD_STATUSES = frozenset({"EXITED", "ERROR"})  # the container stopped; the pod keeps its disk until terminated
GONE_STATUSES = DEAD_STATUSES | {"TERMINATED"}


class RunPodAPIError(Exception):
    """An error answer from RunPod (RFC 9457 problem body: title, status, detail, errors) and what was asked."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        request: str = "",
        errors: list[str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(status, title, detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.request = scrubbed_excerpt(request, ERROR_TEXT_LIMIT)  # its path holds a pod id, RunPod's, of any length
        self.errors = errors or []
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES or self.status >= 500

    def __str__(self) -> str:
        where = f" on {self.request}" if self.request else ""
        text = f"RunPod API error {self.status}{where}: {self.title}: {self.detail}"
        if self.errors:
            text += " (" + "; ".join(self.errors) + ")"
        if self.status == 401:
            text += " (check RUNPOD_API_KEY)"
        return text


class CreateUnconfirmedError(Exception):
    """A create failed in a way that may have made the pod, and the listing that would tell could not be read.

    Not retried: the next reconcile reads the pods again and counts the pod if it exists.
    """

    def __init__(self, name: str, create_error: Exception, list_error: Exception) -> None:
        super().__init__(
            f"POST /pods for {name} failed ({_describe(create_error)}) and GET /pods failed too"
            f" ({_describe(list_error)}): not retried, the pod may exist"
        )


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, RunPodAPIError) else type(error).__name__


@dataclass(frozen=True)
class Pod:
    id: str
    name: str
    status: str
    created_at: datetime | None
    started_at: datetime | None
    cost_per_hour: float
    gpu_id: str | None
    gpu_count: int

    @property
    def live(self) -> bool:
        """Holding compute (PROVISIONING, STARTING, RUNNING), and so billed. A status RunPod does not document, or
        none at all, counts as live too: taken as gone, the kill switch reported 0 pods while it ran on."""
        return self.status not in GONE_STATUSES


def pod_from_json(data: Any, request: str, where: str = "pod") -> Pod:
    """A pod as RunPod answers it; RunPodAPIError naming the field (``where``: which pod) when a value has the wrong
    type, instead of an AttributeError or a ValueError that says neither the provider nor the field."""
    if not isinstance(data, dict):
        raise _unexpected(request, f"{where} is not an object: {scrubbed_excerpt(str(data), 60)}")
    gpu = data.get("gpu") or {}
    cost = data.get("cost") or 0.0
    count = (gpu.get("count") or 0) if isinstance(gpu, dict) else None
    for name, value, wanted in (("gpu", gpu, dict), ("cost", cost, int | float), ("gpu.count", count, int)):
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise _unexpected(request, f"{where}.{name}={scrubbed_excerpt(repr(value), 60)} is not {_KINDS[name]}")
    # Not is_a_price: a stopped pod's small volume may cost less than its least (0.001 an hour), and is listed.
    if not 0 <= cost <= MAX_PRICE_PER_HOUR:  # NaN, inf, negative: "$nan/h" in `comfy-deploy runpod status`
        raise _unexpected(request, f"{where}.cost={scrubbed_excerpt(repr(cost), 60)} is not {COST_RANGE}")
    return Pod(
        id=str(data.get("id", "")),
        name=str(data.get("name", "")),
        status=str(data.get("status", "UNKNOWN")).upper(),
        created_at=parse_timestamp(data.get("createdAt")),
        started_at=parse_timestamp(data.get("startedAt")),
        cost_per_hour=float(cost),
        gpu_id=gpu.get("id"),
        gpu_count=count,
    )


COST_RANGE = f"an hourly cost from 0 to {MAX_PRICE_PER_HOUR:g}"
_KINDS = {"gpu": "an object", "cost": "a number", "gpu.count": "a whole number"}


def listed_pod(data: Any, index: int, ours: Callable[[str], bool]) -> Pod | None:
    """One pod of GET /pods; None for a pod whose name ``ours`` refuses, read no further: another deployment's pod
    (made by hand, by another tool) of an odd shape failed the whole listing, and the backend and the kill switch
    saw none of their own pods. Its id and name are required: a pod listed without its name is not recognised as
    the backend's own, and the backend created two more pods at every tick while the listing showed none of them."""
    where = f"pods[{index}]"
    if isinstance(data, dict) and isinstance(data.get("name"), str) and not ours(data["name"]):
        return None
    for name in ("id", "name") if isinstance(data, dict) else ():
        if not (isinstance(data.get(name), str) and data[name]):
            value = scrubbed_excerpt(repr(data.get(name)), 60)
            raise _unexpected("GET /pods", f"{where}.{name}={value} is not a non-empty string")
    return pod_from_json(data, "GET /pods", where)


def _unexpected(request: str, detail: str) -> RunPodAPIError:
    return RunPodAPIError(200, "unexpected answer", detail, request=request)


def error_from_response(response: httpx.Response, request: str) -> RunPodAPIError:
    retry_after_s = retry_after_seconds(response)
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested past what the parser reads
        body = None
    if isinstance(body, dict) and ("title" in body or "detail" in body):
        # Each part quoted in part: a problem body of megabytes was logged whole at every tick.
        errors = body.get("errors") if isinstance(body.get("errors"), list) else []
        quoted = [scrubbed_excerpt(str(e), ERROR_TEXT_LIMIT) for e in errors[:MAX_QUOTED_ERRORS]]
        if len(errors) > MAX_QUOTED_ERRORS:
            quoted.append(f"{len(errors) - MAX_QUOTED_ERRORS} more")
        return RunPodAPIError(
            response.status_code,
            scrubbed_excerpt(str(body.get("title") or ""), ERROR_TEXT_LIMIT),
            scrubbed_excerpt(str(body.get("detail") or ""), ERROR_TEXT_LIMIT),
            request=request,
            errors=quoted,
            retry_after_s=retry_after_s,
        )
    return RunPodAPIError(
        response.status_code,
        "unexpected error body",
        scrubbed_excerpt(response.text, ERROR_TEXT_LIMIT),
        request=request,
        retry_after_s=retry_after_s,
    )


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, RunPodAPIError):
        return exc.retryable
    return isinstance(exc, httpx.TransportError)


def _is_rate_limited(exc: BaseException) -> bool:
    return isinstance(exc, RunPodAPIError) and exc.status == 429


class RunPodClient:
    """RunPod API client. Use as `async with RunPodClient(api_key) as runpod: ...`."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 30,
        max_attempts: int = 5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        answer_limit_bytes: int = API_ANSWER_BYTES,
    ) -> None:
        if not api_key:
            raise ValueError("RunPod API key is empty: set RUNPOD_API_KEY")
        register_secret(api_key)
        self._api_key = SecretStr(api_key)
        self._answer_limit_bytes = answer_limit_bytes
        self._timeout_s = timeout_s
        self._retry = TransientRetry(
            is_retryable=_is_retryable,
            describe=_describe,
            event="runpod_request_retry",
            max_attempts=max_attempts,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            sleep=sleep,
        )
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, verify=True, transport=direct_transport(base_url)
        )

    def __repr__(self) -> str:
        return f"RunPodClient(base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        return str(self._http.base_url).rstrip("/")

    async def __aenter__(self) -> RunPodClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- requests -------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        # Read at most to the limit: past it, AnswerTooLarge (not retried); within the timeout as a whole, not
        # only between two bytes: past it, httpx.ReadTimeout (retried).
        response = await request_bounded(
            self._http, method, path, peer="RunPod", limit_bytes=self._answer_limit_bytes,
            deadline_s=self._timeout_s, headers=headers, **kwargs,
        )
        if response.is_error:
            raise error_from_response(response, f"{method} {path}")
        return response

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request that is safe to repeat (a read, a delete): retried on transient failures."""
        async for attempt in self._retry.attempts():
            with attempt:
                return await self._send(method, path, **kwargs)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        return _decode(response, f"{method} {path}")

    # --- pods -----------------------------------------------------------------------------------

    async def list_pods(self, ours: Callable[[str], bool] = lambda name: True) -> list[Pod]:
        """GET /pods: the pods whose name ``ours`` accepts (listed_pod). More than MAX_LISTED_REPLICAS of them is a
        broken answer, an error (a failed read), as the Verda client's replica list: charged, it made a tick take
        minutes."""
        entries = _field(await self._json("GET", "/pods"), "pods", "GET /pods")
        pods = [pod for index, entry in enumerate(entries) if (pod := listed_pod(entry, index, ours)) is not None]
        if len(pods) > MAX_LISTED_REPLICAS:
            listed = f"{len(pods)} pods listed: more than {MAX_LISTED_REPLICAS} is not a plausible list"
            raise _unexpected("GET /pods", listed)
        return listed_once(pods, lambda pod: pod.id, peer="RunPod", request="GET /pods")

    async def get_pod(self, pod_id: str) -> Pod:
        return pod_from_json(await self._json("GET", f"/pods/{quote(pod_id, safe='')}"), "GET /pods/{id}")

    async def create_pod(self, body: dict[str, Any]) -> Pod:
        """POST /pods. On a lost or failed answer the pod list is read again before any retry.

        ``body["name"]`` must be unique to this attempt: it is how a pod created despite an error is found.
        A 429 was refused before it was processed, so it is retried as is.
        """
        name = body["name"]
        async for attempt in self._retry.attempts():
            with attempt:
                try:
                    response = await self._send("POST", "/pods", json=body)
                except (RunPodAPIError, httpx.TransportError) as error:
                    if not _is_retryable(error) or _is_rate_limited(error):
                        raise
                    made = await self._confirm_created(name, error)
                    if made is not None:
                        pod_id = scrubbed_excerpt(made.id, ERROR_TEXT_LIMIT)
                        log.info("runpod_create_confirmed_by_listing", pod=pod_id, name=name)
                        return made
                    raise
                return pod_from_json(_decode(response, "POST /pods"), "POST /pods")
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _confirm_created(self, name: str, create_error: Exception) -> Pod | None:
        try:
            pods = await self.list_pods(lambda listed: listed == name)
        except (RunPodAPIError, httpx.TransportError) as list_error:
            raise CreateUnconfirmedError(name, create_error, list_error) from list_error
        return next((pod for pod in pods if pod.name == name), None)

    async def terminate_pod(self, pod_id: str) -> bool:
        """DELETE /pods/{id}: releases compute and container disk. False when the pod was already gone."""
        try:
            await self._request("DELETE", f"/pods/{quote(pod_id, safe='')}")
        except RunPodAPIError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def stop_pod(self, pod_id: str) -> Pod | None:
        """POST /pods/{id}/action stop: the container is stopped and compute released; the disk stays (billed)
        until the pod is terminated. None when the pod's status allows no stop (409) or it is gone (404). RunPod
        documents a 204 too, which gives no pod: the pod is then read for its status."""
        try:
            response = await self._request("POST", f"/pods/{quote(pod_id, safe='')}/action", json={"action": "stop"})
            if response.status_code == 204:
                return await self.get_pod(pod_id)
        except RunPodAPIError as error:
            if error.status in (404, 409):
                return None
            raise
        return pod_from_json(_decode(response, "POST /pods/{id}/action"), "POST /pods/{id}/action")

    # --- network volumes ------------------------------------------------------------------------

    async def get_network_volume(self, volume_id: str) -> dict[str, Any]:
        """GET /network-volumes/{id}: id, name, size (GB), dataCenter, type."""
        volume = await self._json("GET", f"/network-volumes/{quote(volume_id, safe='')}")
        if not isinstance(volume, dict):
            raise _unexpected("GET /network-volumes/{id}", f"not an object: {scrubbed_excerpt(str(volume), 60)}")
        return volume

    # --- catalogue ------------------------------------------------------------------------------

    async def gpu_price_per_hour(self, gpu_id: str, *, cloud: str = "SECURE") -> float:
        """List price in USD per hour of one GPU of ``gpu_id`` on pods in ``cloud`` (SECURE or COMMUNITY). One that is
        no price (true, read as 1.0; negative, NaN) is an error naming the field, as any other broken answer."""
        request = "GET /catalog/gpus/{id}"
        data = await self._json("GET", f"/catalog/gpus/{quote(gpu_id, safe='')}")
        prices = (data.get("price") if isinstance(data, dict) else None) or {}
        if not isinstance(prices, dict):  # not "none listed": the deploy would blame the operator's runpod.cloud
            raise _unexpected(request, f"price={scrubbed_excerpt(repr(prices), 60)} is not an object")
        key = cloud.lower()
        price = prices.get(key)
        if price is None:
            raise LookupError(f"RunPod lists no {cloud} pod price for GPU {gpu_id!r}")
        if isinstance(price, bool) or not isinstance(price, int | float) or not is_a_price(price):
            raise _unexpected(request, f"price.{key}={scrubbed_excerpt(repr(price), 60)}: a price {PRICE_RANGE}")
        return float(price)


def _decode(response: httpx.Response, request: str) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):
        raise RunPodAPIError(
            response.status_code, "non-JSON answer", scrubbed_excerpt(response.text, ERROR_TEXT_LIMIT), request=request
        ) from None


def _field(data: Any, name: str, request: str) -> list[dict[str, Any]]:
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise _unexpected(request, f"no {name!r} list in the body")
    return value
