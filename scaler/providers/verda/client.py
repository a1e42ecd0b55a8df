"""Async client for Verda's container-deployments API.

OAuth2 client credentials, one re-authentication on a 401, and transport retries (tenacity) on 408/429/5xx
and connection errors. The official SDK sets no timeout and never retries, so this client exists instead of
wrapping it. Secrets and tokens are held as pydantic SecretStr so they cannot leak through a repr, a log line
or an exception.

The token is never a read's first answer when it can be helped: `fetch_token_ahead` asks for it before the first
read, and a token nine tenths through its life is renewed in the background while the reads go on with it. A
fleet gives a read a quarter of the tick (3.75 s): at 2 s an answer, a token request first cut the read off.
Only a read without a valid token waits for one. Every caller shares the one token request under way, and that
request outlives a caller cut off by its deadline, so the next tick finds the token it fetched.

A create is not retried blindly: Verda has answered 500 to a POST that did create the deployment, so before
each retry the client looks for what it was creating and counts it as done when it is there. A DELETE only
starts the deletion; the client then polls until the deployment answers 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import structlog
from pydantic import SecretStr

from common.http_answers import API_ANSWER_BYTES, request_bounded
from common.log_throttle import LogThrottle, held_back_logger
from common.logs import error_text, forget_secret, register_secret, scrubbed_excerpt
from common.settings import quoted
from common.urls import direct_transport
from scaler.providers.base import MAX_LISTED_REPLICAS, listed_once
from scaler.providers.http import TransientRetry, parse_timestamp, retry_after_seconds

log = structlog.get_logger()

DEFAULT_BASE_URL = "https://api.verda.com/v1"
DEPLOYMENTS = "/container-deployments"
# Verda's CLI rule for deployment names (a DNS label), at most 63 characters.
DEPLOYMENT_NAME_RULE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DEPLOYMENT_NAME_MAX = 63
DELETE_WAIT_S = 60.0  # how long Verda's side waits for a deletion (its `timeout` query parameter, in ms)
DELETE_FIRST_POLL_S = 0.25  # most deletions are quick: poll soon, then back off to DELETE_POLL_S
DELETE_POLL_S = 5.0
DELETE_DEADLINE_S = 300.0
MIN_TOKEN_LIFETIME_S = 60.0
TOKEN_WARN_EVERY_S = 3600.0
REFRESH_AT_FRACTION = 0.9  # from there the token is renewed in the background; it serves until it expires
RETRYABLE_STATUSES = frozenset({408, 429})
ERROR_TEXT_LIMIT = 200
ERROR_CODE_LIMIT = 60  # Verda's codes are words such as not_found
MAX_PLAUSIBLE_REPLICAS = 10_000  # SCALER_MAX_REPLICAS is at most 100; a larger count read back is a broken answer


Number = TypeVar("Number", int, float)

CREDENTIALS_HINT = "(check VERDA_CLIENT_ID / VERDA_CLIENT_SECRET)"


class VerdaAPIError(Exception):
    """An error answer from Verda: HTTP status plus Verda's `code` (lower-cased) and `message`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        retry_after_s: float | None = None,
        request: str = "",
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code.lower()
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s
        self.request = request  # "PATCH /v1/container-deployments/x": which call Verda refused

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES or self.status >= 500

    def __str__(self) -> str:
        where = f" on {self.request}" if self.request else ""
        # Verda's 401 is always the credentials (the token request's, or a token issued for them): say which
        # settings, in every line that shows it (the scaler's decisions, `status`, stop, deploy).
        hint = f" {CREDENTIALS_HINT}" if self.status == 401 else ""
        return f"Verda API error {self.status} {self.code}{where}: {self.message}{hint}"


@dataclass(frozen=True)
class Replica:
    id: str
    status: str
    started_at: datetime | None


@dataclass(frozen=True)
class ComputeResource:
    name: str
    size: int
    available: bool  # is_available; what Verda does with a compute listed unavailable is undocumented


@dataclass(frozen=True)
class ContainerType:
    name: str
    model: str
    gpu_count: int
    serverless_price: float
    serverless_spot_price: float
    currency: str


@dataclass
class _Token:
    access: SecretStr
    refresh: SecretStr | None
    refresh_at: float
    expires_at: float  # counted from when it was asked for: Verda's clock started no earlier


def _lifetime_s(expires_in: Any, short_warnings: LogThrottle) -> float:
    """A token's lifetime; one Verda does not state as a positive number of seconds is renewed when refused (401),
    not before every request as a lifetime of 0 would have it. One stated shorter than MIN_TOKEN_LIFETIME_S
    (1e-300) is taken as that: a token was asked for before every read."""
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and 0 < expires_in < math.inf:
        if expires_in >= MIN_TOKEN_LIFETIME_S:
            return float(expires_in)
        if (since := short_warnings.occurred()) is not None:  # it is so at every renewal, once a minute
            log.warning("verda_token_lifetime_short", expires_in=expires_in, taken_as_s=MIN_TOKEN_LIFETIME_S,
                        more_since_last=since - 1, hint="a token Verda refuses before then is renewed at once")
        return MIN_TOKEN_LIFETIME_S
    log.warning("verda_token_lifetime_unknown", expires_in=scrubbed_excerpt(str(expires_in), 40),
                hint="the token is renewed when Verda refuses it")
    return math.inf


def _values(token: _Token | None) -> list[str]:
    secrets = [token.access, token.refresh] if token is not None else []
    return [str(secret.get_secret_value()) for secret in secrets if secret is not None]


def _log_token_failure(request: asyncio.Task[_Token]) -> None:
    """A token request that failed: said here too, for one asked in the background that no read waited for
    (a read that did wait fails with the error itself)."""
    if not request.cancelled() and (error := request.exception()) is not None:
        log.warning("verda_token_request_failed", error=error_text(error),
                    hint="a token still valid serves the reads; without one they fail with this error and ask again")


def error_from_response(response: httpx.Response) -> VerdaAPIError:
    retry_after_s = retry_after_seconds(response)
    request = f"{response.request.method} {response.request.url.path}"
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested past what the parser reads
        return VerdaAPIError(
            response.status_code,
            "non_json_response",
            scrubbed_excerpt(response.text, ERROR_TEXT_LIMIT),
            retry_after_s=retry_after_s,
            request=request,
        )
    if isinstance(body, dict) and ("code" in body or "message" in body):
        return VerdaAPIError(  # quoted in part: an error of megabytes was logged whole at every tick
            response.status_code,
            scrubbed_excerpt(str(body.get("code") or "unknown"), ERROR_CODE_LIMIT),
            scrubbed_excerpt(str(body.get("message") or ""), ERROR_TEXT_LIMIT),
            details=body.get("details"),
            retry_after_s=retry_after_s,
            request=request,
        )
    return VerdaAPIError(
        response.status_code,
        "unexpected_error_body",
        scrubbed_excerpt(response.text, ERROR_TEXT_LIMIT),
        retry_after_s=retry_after_s,
        request=request,
    )


def _unexpected(path: str, detail: str) -> VerdaAPIError:
    return VerdaAPIError(200, "unexpected_answer", f"GET {path}: {detail}")


def _number(path: str, field: str, value: Any, kind: type[Number]) -> Number:
    """``value`` as a ``kind``; an error naming the field when it is none (true, null, "abc", an object)."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        with contextlib.suppress(ValueError, OverflowError):
            return kind(value)
    raise _unexpected(path, f"{field}={scrubbed_excerpt(repr(value), 60)} is not a number")


def _container_type(path: str, entry: dict[str, Any], currency: str) -> ContainerType:
    name = scrubbed_excerpt(str(entry.get("name", "")), 60)
    gpu = entry.get("gpu")
    gpu_count = (gpu.get("number_of_gpus") if isinstance(gpu, dict) else None) or 1
    prices = [_number(path, f"{name}: {key}", entry.get(key), float)
              for key in ("serverless_price", "serverless_spot_price")]
    return ContainerType(
        name=str(entry.get("name", "")),
        model=str(entry.get("model", "")),
        gpu_count=_number(path, f"{name}: gpu.number_of_gpus", gpu_count, int),
        serverless_price=prices[0],
        serverless_spot_price=prices[1],
        currency=str(entry.get("currency", currency)),
    )


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, VerdaAPIError):
        return exc.retryable
    return isinstance(exc, httpx.TransportError)


def _path(*segments: str) -> str:
    return "/".join(quote(segment, safe="") for segment in segments)


def check_deployment_name(name: str) -> str:
    """The name itself, or ValueError saying Verda's rule."""
    if len(name) > DEPLOYMENT_NAME_MAX or not DEPLOYMENT_NAME_RULE.fullmatch(name):
        raise ValueError(
            f"deployment name {quoted(name)} must be at most {DEPLOYMENT_NAME_MAX} characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def container_image(container: dict[str, Any]) -> str:
    """A container's image reference: Verda answers it as {"image": …, "last_updated_at": …}, we send a string."""
    image = container.get("image")
    return str(image.get("image", "")) if isinstance(image, dict) else str(image or "")


def is_replica_count(value: Any) -> bool:
    """A whole number from 0 to MAX_PLAUSIBLE_REPLICAS; not true, which Python counts as 1."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PLAUSIBLE_REPLICAS


def replica_bounds(scaling: Any) -> tuple[int, int] | None:
    """(min_replica_count, max_replica_count) from a scaling object; None when either is missing or no count."""
    if not isinstance(scaling, dict):
        return None
    low, high = scaling.get("min_replica_count"), scaling.get("max_replica_count")
    return (low, high) if is_replica_count(low) and is_replica_count(high) else None


def priced_compute(name: str, deployment: dict[str, Any]) -> tuple[str, int, bool]:
    """(compute name, GPUs per replica, spot) of deployment ``name`` as Verda answers it: what its price depends on.
    An error naming the field when one is of another kind: is_spot "false" was priced as spot, a string compute
    failed as an AttributeError naming neither Verda nor the field."""
    compute, spot = deployment.get("compute"), deployment.get("is_spot", False)
    compute_name = compute.get("name") if isinstance(compute, dict) else None
    size = compute.get("size", 1) if isinstance(compute, dict) else None
    for field, value, kind, fits in (
        ("compute.name", compute_name, "a name", isinstance(compute_name, str) and compute_name),
        ("compute.size", size, "a GPU count", isinstance(size, int) and not isinstance(size, bool) and size >= 1),
        ("is_spot", spot, "true or false", isinstance(spot, bool)),
    ):
        if not fits:
            shown = scrubbed_excerpt(repr(value), 60)
            raise _unexpected(f"{DEPLOYMENTS}/{_path(name)}", f"{field}={shown} is not {kind}")
    return compute_name, size, spot


class VerdaClient:
    """Verda API client. Use as `async with VerdaClient(id, secret) as verda: ...`."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 30,
        max_attempts: int = 5,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        answer_limit_bytes: int = API_ANSWER_BYTES,
    ) -> None:
        self._client_id = client_id
        self._answer_limit_bytes = answer_limit_bytes
        self._timeout_s = timeout_s
        self._client_secret = SecretStr(client_secret)
        self._clock = clock
        self._sleep = sleep
        self._retry = TransientRetry(
            is_retryable=_is_retryable,
            describe=lambda exc: str(exc) if isinstance(exc, VerdaAPIError) else type(exc).__name__,
            event="verda_request_retry",
            max_attempts=max_attempts,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            sleep=sleep,
        )
        self._token: _Token | None = None
        self._retired_token: _Token | None = None
        self._token_request: asyncio.Task[_Token] | None = None  # the one under way, shared by every caller
        self._short_lifetime_warnings = LogThrottle(
            TOKEN_WARN_EVERY_S,
            clock,
            report_held_back=held_back_logger(log, "warning", "verda_token_lifetime_short_held_back"),
        )
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s, verify=True, transport=direct_transport(base_url)
        )

    def __repr__(self) -> str:
        return f"VerdaClient(base_url={self.base_url!r}, client_id={self._client_id!r})"

    @property
    def base_url(self) -> str:
        return str(self._http.base_url).rstrip("/")

    async def __aenter__(self) -> VerdaClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._token_request is not None:
            self._token_request.cancel()
            await asyncio.gather(self._token_request, return_exceptions=True)
        self._short_lifetime_warnings.flush()  # the hour's count, not lost with the process
        await self._http.aclose()

    # --- authentication -------------------------------------------------------------------------

    async def _post_token(self, payload: dict[str, str]) -> httpx.Response:
        return await self._bounded("POST", "/oauth2/token", json=payload)

    def _store_token(self, response: httpx.Response, asked_at: float) -> _Token:
        if response.is_error:
            raise error_from_response(response)
        data = self._parse(response)
        access = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(access, str) or not access:
            raise VerdaAPIError(200, "unexpected_answer", "POST /oauth2/token: no access_token string in the answer")
        refresh = data.get("refresh_token")
        lifetime_s = _lifetime_s(data.get("expires_in"), self._short_lifetime_warnings)
        token = _Token(
            access=SecretStr(access),
            refresh=SecretStr(refresh) if isinstance(refresh, str) and refresh else None,
            refresh_at=asked_at + REFRESH_AT_FRACTION * lifetime_s,
            expires_at=asked_at + lifetime_s,
        )
        # Verda may quote a token in an error message: the scrubber knows the tokens in use and the ones just
        # replaced (an answer under way may still carry them); older ones are forgotten, so the list stays short.
        for old in _values(self._retired_token):
            forget_secret(old)
        for value in _values(token):
            register_secret(value)  # not one too short to mask (a token "e" would mask every e in every line)
        self._token, self._retired_token = token, self._token
        return token

    async def _authenticate(self) -> _Token:
        log.info("verda_authenticating", client_id=self._client_id)
        asked_at = self._clock()
        response = await self._post_token(
            {
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client_secret.get_secret_value(),
            }
        )
        return self._store_token(response, asked_at)

    async def _refresh(self, token: _Token) -> _Token:
        if token.refresh is None:
            return await self._authenticate()
        log.info("verda_refreshing_token")
        asked_at = self._clock()
        response = await self._post_token(
            {"grant_type": "refresh_token", "refresh_token": token.refresh.get_secret_value()}
        )
        if response.status_code in (400, 401):
            log.info("verda_refresh_rejected", status=response.status_code)
            return await self._authenticate()
        return self._store_token(response, asked_at)

    def _new_token(self, *, authenticate: bool = False) -> asyncio.Task[_Token]:
        """The token request under way, or a new one: a refresh of the token in hand, or (none in hand, or
        ``authenticate``) the client credentials. Its own task, so a caller cut off does not cut it off."""
        if self._token_request is None or self._token_request.done():
            token = self._token
            fetch = self._authenticate() if token is None or authenticate else self._refresh(token)
            self._token_request = asyncio.create_task(fetch)
            self._token_request.add_done_callback(_log_token_failure)
        return self._token_request

    def fetch_token_ahead(self) -> asyncio.Task[_Token] | None:
        """Ask for a token now, in the background, unless one in hand is not yet due for renewal: the first read
        then needs no token request of its own. The request under way (awaiting it is optional), or None."""
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return None
        return self._new_token()

    async def _access_token(self) -> SecretStr:
        """The token in hand while it is valid (one due for renewal is renewed beside the read); else the token
        request's answer, shared with every other caller waiting for one."""
        token = self._token
        if token is not None and self._clock() < token.expires_at:
            self.fetch_token_ahead()
            return token.access
        return (await asyncio.shield(self._new_token())).access

    async def _replace_rejected_token(self, rejected: SecretStr) -> SecretStr:
        """A new token after a 401: the one another caller got meanwhile, the request under way, or a new
        authentication (only one at a time). The refused token serves no other read: they wait for the new one."""
        token = self._token
        if token is None or token.access == rejected:
            if token is not None:
                token.expires_at = -math.inf
            token = await asyncio.shield(self._new_token(authenticate=True))
        return token.access

    # --- requests -------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, token: SecretStr, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
        return await self._bounded(method, path, headers=headers, **kwargs)

    async def _bounded(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Every answer is read at most to the limit: past it, AnswerTooLarge (not retried); and within the request's
        timeout as a whole, not only between two bytes: past it, httpx.ReadTimeout (retried)."""
        deadline_s = kwargs.get("timeout", self._timeout_s)
        return await request_bounded(
            self._http, method, path, peer="Verda", limit_bytes=self._answer_limit_bytes, deadline_s=deadline_s,
            **kwargs,
        )

    async def _send_authorized(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        token = await self._access_token()
        response = await self._send(method, path, token, **kwargs)
        if response.status_code == 401:
            log.info("verda_token_rejected", method=method, path=path)
            token = await self._replace_rejected_token(token)
            response = await self._send(method, path, token, **kwargs)
        if response.is_error:
            raise error_from_response(response)
        return response

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async for attempt in self._retry.attempts():
            with attempt:
                return await self._send_authorized(method, path, **kwargs)
        raise AssertionError("unreachable: tenacity reraises the last error")

    @staticmethod
    def _parse(response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except (ValueError, RecursionError):
            text = scrubbed_excerpt(response.text, ERROR_TEXT_LIMIT)
            raise VerdaAPIError(response.status_code, "non_json_response", text) from None

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._parse(await self._request(method, path, **kwargs))

    async def _create(self, path: str, body: dict[str, Any], existing: Callable[[], Awaitable[Any]]) -> Any:
        """POST `body`; before each retry, and on a 409 after a failed try, `existing()` looks for what the
        POST creates and a non-None answer counts as done (the failed try did create it)."""
        async for attempt in self._retry.attempts():
            with attempt:
                retry = attempt.retry_state.attempt_number > 1
                if retry and (found := await existing()) is not None:
                    log.warning("verda_create_already_done", path=path, attempt=attempt.retry_state.attempt_number)
                    return found
                try:
                    return self._parse(await self._send_authorized("POST", path, json=body))
                except VerdaAPIError as error:
                    if retry and error.status == 409 and (found := await existing()) is not None:
                        log.warning("verda_create_already_done", path=path, status=409)
                        return found
                    raise
        raise AssertionError("unreachable: tenacity reraises the last error")

    # --- deployments ----------------------------------------------------------------------------

    async def list_deployments(self) -> list[dict[str, Any]]:
        return await self._json("GET", DEPLOYMENTS)

    async def get_deployment(self, name: str) -> dict[str, Any]:
        """The deployment as Verda answers it: no `scaling` (see get_scaling), each image an object. Any other
        shape than an object with a list of objects as `containers` is an error naming the call."""
        path = f"{DEPLOYMENTS}/{_path(name)}"
        data = await self._json("GET", path)
        if not isinstance(data, dict):
            raise _unexpected(path, f"not an object: {scrubbed_excerpt(str(data), 100)}")
        containers = data.get("containers")
        if containers is not None and not (
            isinstance(containers, list) and all(isinstance(container, dict) for container in containers)
        ):
            raise _unexpected(path, f"containers={scrubbed_excerpt(str(containers), 60)} is not a list of objects")
        return data

    async def find_deployment(self, name: str) -> dict[str, Any] | None:
        """The deployment, or None when Verda answers 404."""
        try:
            return await self.get_deployment(name)
        except VerdaAPIError as error:
            if error.status == 404:
                return None
            raise

    async def create_deployment(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create; a retry first looks the deployment up, and one that exists already counts as created."""
        name = str(body.get("name", ""))
        created = await self._create(DEPLOYMENTS, body, lambda: self.find_deployment(name))
        return created if isinstance(created, dict) else {}

    async def update_deployment(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH: only the top-level keys in `body` change. The deployment as Verda answers it, {} when the answer
        is no object."""
        updated = await self._json("PATCH", f"{DEPLOYMENTS}/{_path(name)}", json=body)
        return updated if isinstance(updated, dict) else {}

    async def delete_deployment(
        self, name: str, *, deadline_s: float = DELETE_DEADLINE_S, poll_s: float = DELETE_POLL_S
    ) -> bool:
        """Delete and wait until the deployment answers 404. False when it was not there to begin with.

        Verda waits up to its `timeout` (ms) before answering and the deletion may still be under way after
        that, so the DELETE is sent once (a second one would fail on a deployment being deleted) and the
        deployment is polled until it is gone; a server error or a timeout on the DELETE is polled through
        too, and so is a 409 (the deletion a run before started). TimeoutError after `deadline_s`.
        """
        path = f"{DEPLOYMENTS}/{_path(name)}"
        try:
            await self._send_authorized(
                "DELETE", path, params={"timeout": int(DELETE_WAIT_S * 1000)}, timeout=DELETE_WAIT_S + 15
            )
        except VerdaAPIError as error:
            if error.status == 404:
                return False
            if error.status == 409:  # a deletion already under way (one interrupted, or timed out, before)
                log.info("verda_delete_under_way", deployment=name, error=str(error))
            elif not error.retryable:
                raise
            else:
                log.warning("verda_delete_answer_failed", deployment=name, error=str(error))
        except httpx.TransportError as error:
            log.warning("verda_delete_answer_failed", deployment=name, error=type(error).__name__)
        deadline = self._clock() + deadline_s
        wait_s = min(DELETE_FIRST_POLL_S, poll_s)
        while True:
            try:
                await self._send_authorized("GET", path)
            except VerdaAPIError as error:
                if error.status == 404:
                    return True
                if not error.retryable:
                    raise
            except httpx.TransportError:
                pass
            if self._clock() >= deadline:
                raise TimeoutError(f"deployment {name} still exists {deadline_s:.0f} s after DELETE")
            log.info("verda_delete_waiting", deployment=name, wait_s=wait_s)
            await self._sleep(wait_s)
            wait_s = min(wait_s * 2, poll_s)

    async def get_status(self, name: str) -> str:
        """The deployment status as Verda spells it, lower-cased. An answer without one is an error naming the
        field: read as "unknown", a paused deployment looked running and the loop wrote to it."""
        path = f"{DEPLOYMENTS}/{_path(name)}/status"
        data = await self._json("GET", path)
        status = data.get("status") if isinstance(data, dict) else None
        if not isinstance(status, str) or not status:
            shown = scrubbed_excerpt(repr(status), 60)
            raise _unexpected(path, f"status={shown} is not a status ({scrubbed_excerpt(str(data), 100)})")
        return status.lower()

    async def get_scaling(self, name: str) -> Any:
        """The scaling options as Verda answers them, unchecked: the kill switch pins over any answer."""
        return await self._json("GET", f"{DEPLOYMENTS}/{_path(name)}/scaling")

    async def get_scaling_options(self, name: str) -> dict[str, Any]:
        """The scaling options; an error naming the call when the answer is not an object, and naming the field
        when a replica bound is there but no count: a bound of true was sent back to Verda in the deploy's PATCH."""
        scaling = await self.get_scaling(name)
        path = f"{DEPLOYMENTS}/{_path(name)}/scaling"
        if not isinstance(scaling, dict):
            raise _unexpected(path, f"not an object: {scrubbed_excerpt(str(scaling), 100)}")
        for key in ("min_replica_count", "max_replica_count"):
            value = scaling.get(key)
            if value is not None and not is_replica_count(value):
                raise _unexpected(path, f"{key}={scrubbed_excerpt(repr(value), 60)} is not a replica count")
        return scaling

    async def get_replica_bounds(self, name: str) -> tuple[int, int]:
        """(min_replica_count, max_replica_count) as Verda holds them; an error naming the field when either is
        not a whole number from 0 to MAX_PLAUSIBLE_REPLICAS (a string, null, -1, true): taken as bounds, such an
        answer was logged as a console edit (scaling_drift) and written over at every tick."""
        path = f"{DEPLOYMENTS}/{_path(name)}/scaling"
        scaling = await self.get_scaling_options(name)
        for key in ("min_replica_count", "max_replica_count"):
            if scaling.get(key) is None:
                raise _unexpected(path, f"{key}=None is not a replica count")
        return scaling["min_replica_count"], scaling["max_replica_count"]

    async def update_scaling(self, name: str, scaling: dict[str, Any]) -> dict[str, Any]:
        """PATCH the scaling options: Verda changes only the keys sent (the Go SDK sends every key optional)."""
        return await self._json("PATCH", f"{DEPLOYMENTS}/{_path(name)}/scaling", json=scaling)

    async def set_replica_bounds(self, name: str, min_replicas: int, max_replicas: int) -> bool:
        """Set min/max replica counts, nothing else. True when it wrote, False when Verda already held them."""
        if not 0 <= min_replicas <= max_replicas:
            raise ValueError(f"replica bounds need 0 <= min <= max, got min={min_replicas} max={max_replicas}")
        try:
            scaling = await self.get_scaling(name)
        except VerdaAPIError as exc:  # a 2xx that is not JSON holds no bounds: they are written over it
            if exc.code != "non_json_response":
                raise
            scaling = None
        if replica_bounds(scaling) == (min_replicas, max_replicas):
            return False
        await self.update_scaling(name, {"min_replica_count": min_replicas, "max_replica_count": max_replicas})
        log.info("verda_replica_bounds_set", deployment=name, min=min_replicas, max=max_replicas)
        return True

    async def get_replicas(self, name: str) -> list[Replica]:
        """``{"list": [replica, …]}`` as the official SDK reads it. Any other shape is an error, never "no
        replicas": that would stop the billing and look like replicas that never started. So is a list longer than
        MAX_LISTED_REPLICAS: charged, it made a tick take minutes."""
        path = f"{DEPLOYMENTS}/{_path(name)}/replicas"
        data = await self._json("GET", path)
        entries = data.get("list") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise _unexpected(path, f"expected {{\"list\": [replica objects]}}, got {scrubbed_excerpt(str(data), 100)}")
        if len(entries) > MAX_LISTED_REPLICAS:
            listed = f"{len(entries)} replicas listed: more than {MAX_LISTED_REPLICAS} is not a plausible list"
            raise _unexpected(path, listed)
        # The spend ledger charges a replica by its id and start: replicas without one would share a charge.
        if not all(isinstance(entry.get("id"), str | int) and str(entry["id"]) for entry in entries):
            raise _unexpected(path, f"a replica without an id: {scrubbed_excerpt(str(entries), 100)}")
        replicas = [
            Replica(
                id=str(entry["id"]),
                status=str(entry.get("status", "unknown")).lower(),
                started_at=parse_timestamp(entry.get("started_at")),
            )
            for entry in entries
        ]
        return listed_once(replicas, lambda replica: replica.id, peer="Verda", request=f"GET {path}")

    async def pause(self, name: str) -> None:
        await self._request("POST", f"{DEPLOYMENTS}/{_path(name)}/pause")

    async def resume(self, name: str) -> None:
        await self._request("POST", f"{DEPLOYMENTS}/{_path(name)}/resume")

    async def restart(self, name: str) -> None:
        await self._request("POST", f"{DEPLOYMENTS}/{_path(name)}/restart")

    # --- secrets --------------------------------------------------------------------------------

    async def list_secrets(self) -> list[str]:
        """Names of the account's secrets (Verda never returns values)."""
        data = await self._json("GET", "/secrets")
        if not isinstance(data, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in data
        ):
            raise _unexpected("/secrets", f'expected [{{"name": …}}, …], got {scrubbed_excerpt(str(data), 100)}')
        return [entry["name"] for entry in data]

    async def create_secret(self, name: str, value: str) -> None:
        """Create; a retry first lists the secrets, and one that exists already counts as created."""

        async def existing() -> bool | None:
            return True if name in await self.list_secrets() else None

        await self._create("/secrets", {"name": name, "value": value}, existing)

    async def delete_secret(self, name: str, *, force: bool = False) -> None:
        await self._request("DELETE", f"/secrets/{_path(name)}", params={"force": str(force).lower()})

    async def list_volumes(self) -> dict[str, str]:
        """The account's volumes (GET /volumes): id -> type, "NVMe_Shared" for a shared filesystem (SFS)."""
        data = await self._json("GET", "/volumes")
        if not isinstance(data, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("id"), str) for entry in data
        ):
            raise _unexpected("/volumes", f'expected [{{"id": …}}, …], got {scrubbed_excerpt(str(data), 100)}')
        return {entry["id"]: str(entry.get("type")) for entry in data}

    async def list_registry_credentials(self) -> list[str]:
        """Names of the account's container registry credentials (GET /container-registry-credentials)."""
        path = "/container-registry-credentials"
        data = await self._json("GET", path)
        if not isinstance(data, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in data
        ):
            raise _unexpected(path, f'expected [{{"name": …}}, …], got {scrubbed_excerpt(str(data), 100)}')
        return [entry["name"] for entry in data]

    # --- catalogue ------------------------------------------------------------------------------

    async def list_compute_resources(self) -> list[ComputeResource]:
        """Each compute Verda offers serverless containers (name, GPUs per replica, whether available now: only an
        is_available of false reads as not); any other shape is an error naming the call."""
        path = "/serverless-compute-resources"
        data = await self._json("GET", path)
        if not isinstance(data, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("name"), str)
            and isinstance(entry.get("size"), int) and not isinstance(entry["size"], bool)
            for entry in data
        ):
            raise _unexpected(path, f'expected [{{"name": …, "size": …}}, …], got {scrubbed_excerpt(str(data), 100)}')
        return [ComputeResource(entry["name"], entry["size"], entry.get("is_available") is not False) for entry in data]

    async def list_container_types(self, currency: str = "usd") -> list[ContainerType]:
        """The price list. Any other shape, or a price or GPU count that is no number, is an error naming the field:
        a price of true was read as 1.0 an hour, and a missing one failed as a bare KeyError naming neither."""
        path = "/container-types"
        data = await self._json("GET", path, params={"currency": currency})
        if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
            raise _unexpected(path, f"expected [container type objects], got {scrubbed_excerpt(str(data), 100)}")
        return [_container_type(path, entry, currency) for entry in data]

    async def price_per_hour(self, compute_name: str, *, spot: bool = False, size: int = 1) -> float:
        """Hourly price of one replica of `size` GPUs of `compute_name` (e.g. "H100")."""
        wanted = compute_name.lower()
        for kind in await self.list_container_types():
            if wanted in (kind.model.lower(), kind.name.lower()) and kind.gpu_count == size:
                return kind.serverless_spot_price if spot else kind.serverless_price
        raise LookupError(f"no container type for compute {compute_name!r} x{size}")
