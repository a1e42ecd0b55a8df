"""ComfyUI's HTTP API and websocket, as recorded from ComfyUI 0.8.0 (docs/comfyui-protocol.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import structlog

from common.http_answers import AnswerTooLarge, read_at_most
from common.logs import scrub, scrubbed_excerpt
from common.urls import direct_transport, redact_url

log = structlog.get_logger()

# The most of one answer from ComfyUI (an HTTP body, a websocket message) the worker holds in memory. Real ones
# are KB to a few MB: /history/{id} and /queue repeat the workflow (at most 10 MiB, the queue manager's
# MAX_WORKFLOW_BYTES) beside the prompt's outputs and messages; events are small (previews are downscaled to
# --preview-size, 512 px). More is a workflow making ComfyUI say it (a node's text output is in both the history
# and the `executed` event), not read: a 60 MB one took the worker from 61 to 290 MiB RSS (bench/
# comfyui_reply_memory.py). One bound for both, or the larger would still decide.
MAX_COMFYUI_MESSAGE_BYTES = 32 << 20
# A result file over GET /view (up to GBs) is read in pieces of this size, each of which, or the rest of the file,
# must come within the HTTP timeout as a whole answer must: 32 MiB in 30 s, about 1 MiB/s, where loopback serves
# 700 MiB/s. A ComfyUI or proxy dripping the file held the job for as long as it dripped.
VIEW_PIECE_BYTES = 32 << 20
# A proxy in front of ComfyUI declining to wait for the request (408) or to take it now (429): no word on the file.
NOT_NOW_STATUSES = frozenset({408, 429})
# A proxy in front of ComfyUI refusing the worker (ComfyUI asks no credentials; its /view says 403 only to a path out
# of its folders, which the worker never asks for): the replica's configuration, not the job, is at fault.
REFUSED_CALLER_STATUSES = frozenset({401, 403})
# However little is left of a wait for a silent ComfyUI, one HTTP question (a probe, a status check during a job)
# gets at least this long: on loopback an answering ComfyUI takes milliseconds.
MIN_QUESTION_S = 1.0
# The key in a prompt's extra_data that names the queue manager's job it runs (ComfyUI lists extra_data in /queue).
JOB_ID_KEY = "comfyui_serverless_job_id"
# ... and the worker that submitted it (WORKER_ID): a restarted worker finds what its killed run left running.
WORKER_ID_KEY = "comfyui_serverless_worker_id"


class ComfyUIUnavailable(Exception):
    """ComfyUI did not answer, or answered with a server error."""


class ViewRefusedWorker(ComfyUIUnavailable):
    """GET /view answered REFUSED_CALLER_STATUSES: a proxy refusing the worker, or only that file's name (a filter
    on what a user named it); ``view_refuses_worker`` tells which."""


class PromptRefusedWorker(ComfyUIUnavailable):
    """POST /prompt answered REFUSED_CALLER_STATUSES: a proxy refusing the worker, or only that workflow (a filter on
    what a user wrote); ``prompt_refuses_worker`` tells which."""


class UploadRefusedWorker(ComfyUIUnavailable):
    """POST /upload/image answered REFUSED_CALLER_STATUSES: a proxy refusing the worker, or only that image (a filter
    on what a user sent); ``upload_refuses_worker`` tells which."""


class PromptsNotStopped(ComfyUIUnavailable):
    """``stop_prompts_of`` could not stop some of the prompts, the others stopped: ``running`` holds the ids of those
    it found running, whose history entries and files are left once they end."""

    def __init__(self, message: str, running: set[str]) -> None:
        super().__init__(message)
        self.running = running


class ComfyUIServerError(ComfyUIUnavailable):
    """ComfyUI answered with a server error (5xx): an exception in its handler, told in its own log."""


class PromptRejected(Exception):
    """POST /prompt refused the workflow; the message lists the error and every node error."""


class UploadRefused(Exception):
    """POST /upload/image refused a job's image (4xx): the job's input, not ComfyUI, is at fault."""


class FileNotServed(Exception):
    """GET /view refused a file the prompt's history names (4xx but NOT_NOW_STATUSES and REFUSED_CALLER_STATUSES):
    the job's output, not ComfyUI, is at fault."""


class ReplyTooLarge(Exception):
    """An answer over MAX_COMFYUI_MESSAGE_BYTES, abandoned at that size: from /history or /prompt the workflow's
    doing (they repeat what it made and sent), so the job fails; from /system_stats or /queue (every client's
    prompts), not: those raise ComfyUIUnavailable instead."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"ComfyUI's answer to {what} is larger than {MAX_COMFYUI_MESSAGE_BYTES / (1 << 20):g} MiB, the most the "
            "worker reads"
        )


@dataclass(frozen=True)
class Reply:
    status_code: int
    content: bytes | bytearray

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return bytes(self.content).decode("utf-8", errors="replace")


def describe_prompt_error(body: object) -> str:
    """Turn ComfyUI's 400 body into one readable paragraph: the error, then each node, input and reason."""
    if not isinstance(body, dict):
        return f"ComfyUI rejected the workflow: {scrubbed_excerpt(str(body), 500)}"
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    parts = [f"ComfyUI rejected the workflow: {error.get('message') or 'validation failed'}"]
    if error.get("details") and error.get("details") != error.get("message"):
        parts[0] += f" ({error['details']})"
    node_errors = body.get("node_errors") if isinstance(body.get("node_errors"), dict) else {}
    for node_id, node in node_errors.items():
        class_type = node.get("class_type", "?") if isinstance(node, dict) else "?"
        items = node.get("errors") if isinstance(node, dict) else None
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            extra = item.get("extra_info") if isinstance(item.get("extra_info"), dict) else {}
            input_name = extra.get("input_name")
            where = f"node {node_id} ({class_type})" + (f" input '{input_name}'" if input_name else "")
            detail = item.get("details")
            parts.append(f"{where}: {item.get('message', 'error')}" + (f": {detail}" if detail else ""))
    return "; ".join(parts)


def _extra_data(item: object) -> dict[str, Any]:
    """The extra_data of a queue item or a history entry's "prompt" ([number, prompt id, workflow, extra_data,
    outputs to execute]): element 3, or nothing."""
    extra_data = item[3] if isinstance(item, list) and len(item) > 3 else None
    return extra_data if isinstance(extra_data, dict) else {}


class ComfyUIClient:
    def __init__(self, base_url: str, *, timeout_s: float = 30.0, worker_id: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self.worker_id = worker_id  # marks every prompt it submits (WORKER_ID_KEY)
        # identity: a compressed answer could unpack to far more than the bytes read (ComfyUI compresses on
        # request with --enable-compress-response-body); on loopback it saves nothing anyway.
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, headers={"Accept-Encoding": "identity"},
            transport=direct_transport(self.base_url),
        )
        self._ws_session: aiohttp.ClientSession | None = None

    @property
    def timeout_s(self) -> float:
        """HTTP_TIMEOUT_S: of each answer, and of each VIEW_PIECE_BYTES of a result file."""
        return self._timeout_s

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._ws_session:
            await self._ws_session.close()

    @contextlib.asynccontextmanager
    async def _stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """The answer with its body unread; ComfyUIUnavailable for no answer or a server error."""
        try:
            async with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 500:
                    raise ComfyUIServerError(f"ComfyUI {method} {path} answered HTTP {response.status_code}")
                yield response
        except httpx.HTTPError as exc:
            # Redacted: the reason reaches /ready, /status and the job's hand-back reason, which no log scrubber sees.
            raise ComfyUIUnavailable(
                f"ComfyUI at {redact_url(self.base_url)} unreachable: {_why(exc)}"
            ) from exc

    async def _request(self, method: str, path: str, **kwargs: Any) -> Reply:
        """The answer, read into memory up to MAX_COMFYUI_MESSAGE_BYTES; ReplyTooLarge before more is read.
        ComfyUIUnavailable unless it all came within the timeout: httpx's bounds each read, and a ComfyUI (or a
        proxy) dripping a byte at a time held the caller for as long as it liked."""
        timeout_s = kwargs.get("timeout", self._timeout_s)
        try:
            async with asyncio.timeout(timeout_s), self._stream(method, path, **kwargs) as response:
                try:
                    body = await read_at_most(response, MAX_COMFYUI_MESSAGE_BYTES)
                except AnswerTooLarge:
                    raise ReplyTooLarge(f"{method} {path}") from None
                return Reply(response.status_code, body)
        except TimeoutError:
            raise ComfyUIUnavailable(
                f"ComfyUI {method} {path}: no whole answer within {timeout_s:g} s (HTTP_TIMEOUT_S)"
            ) from None

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        """ComfyUI's JSON answer; ComfyUIUnavailable for any other status than 200: ComfyUI answers these
        questions so, and a proxy's 4xx ({"error": ...}) read as an empty history or queue lost the prompt."""
        response = await self._request(method, path, **kwargs)
        if response.status_code != 200:
            quoted = scrubbed_excerpt(response.text, 200)
            raise ComfyUIUnavailable(f"ComfyUI {method} {path} answered HTTP {response.status_code}: {quoted}")
        try:
            return response.json()
        except ValueError as exc:
            quoted = scrubbed_excerpt(repr(response.text), 200)
            raise ComfyUIUnavailable(f"ComfyUI {method} {path} answered non-JSON: {quoted}") from exc

    async def system_stats(self, timeout_s: float | None = None) -> dict[str, Any]:
        """ComfyUI's stats; ``timeout_s`` instead of the client's HTTP timeout, for a probe with a deadline."""
        try:
            return await self._json("GET", "/system_stats", **({} if timeout_s is None else {"timeout": timeout_s}))
        except ReplyTooLarge as exc:  # no workflow writes in these: ComfyUI itself is misbehaving
            raise ComfyUIUnavailable(str(exc)) from exc

    async def probe(self, deadline: float) -> dict[str, Any]:
        """/system_stats, given what is left until ``deadline`` (time.monotonic), at least MIN_QUESTION_S and at
        most the HTTP timeout: a hung ComfyUI would hold a probe for the whole HTTP timeout."""
        return await self.system_stats(min(self._timeout_s, max(MIN_QUESTION_S, deadline - time.monotonic())))

    async def wait_until_up(
        self, timeout_s: float, *, interval_s: float = 1.0,
        on_waiting: Callable[[float, str], None] | None = None, report_every_s: float = 60.0,
    ) -> dict[str, Any]:
        """Poll /system_stats until it answers (its stats) or the deadline passes (ComfyUIUnavailable, the last probe's
        error). No probe outlasts the deadline by more than MIN_QUESTION_S: a hung ComfyUI would hold each one for the
        HTTP timeout. The caller cancels it on a stop. on_waiting(waited_s, error) is called at the first unanswered
        probe, then every report_every_s."""
        started = time.monotonic()
        deadline = started + timeout_s
        next_report = started
        while True:
            try:
                return await self.probe(deadline)
            except ComfyUIUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise ComfyUIUnavailable(str(exc)) from None  # the caller says how long it waited
                if on_waiting is not None and time.monotonic() >= next_report:
                    on_waiting(time.monotonic() - started, str(exc))
                    next_report = time.monotonic() + report_every_s
            await asyncio.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))

    async def queue_prompt(
        self, workflow: dict[str, Any], client_id: str, prompt_id: str, *, job_id: str | None = None
    ) -> dict[str, Any]:
        """Submit; ``job_id`` and this client's ``worker_id`` go into the prompt's ``extra_data``, so a later
        attempt of the job, or a restart of the worker, can find this prompt in ComfyUI's queue (``prompts_of``)."""
        request: dict[str, Any] = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        marks = {JOB_ID_KEY: job_id, WORKER_ID_KEY: self.worker_id}
        if extra_data := {key: value for key, value in marks.items() if value is not None}:
            request["extra_data"] = extra_data
        body = json.dumps(request).encode()
        headers = {"Content-Type": "application/json"}
        response = await self._request("POST", "/prompt", content=body, headers=headers)
        try:
            payload = response.json()
        except ValueError:
            payload = response.text
        if response.status_code == 400:
            raise PromptRejected(describe_prompt_error(payload))
        if response.status_code == 413:
            raise PromptRejected(
                f"workflow too large ({len(body)} bytes): ComfyUI refuses request bodies over its "
                "--max-upload-size (100 MB unless the operator changed it); large inputs belong in files, "
                "not inline in the workflow"
            )
        if response.status_code in REFUSED_CALLER_STATUSES:
            raise PromptRefusedWorker(_refused_worker("POST /prompt", response.status_code))
        if response.status_code != 200 or not isinstance(payload, dict):
            quoted = scrubbed_excerpt(str(payload), 200)
            raise ComfyUIUnavailable(f"ComfyUI POST /prompt answered HTTP {response.status_code}: {quoted}")
        return payload

    async def upload_image(self, filename: str, data: bytes, subfolder: str = "") -> None:
        """Save ``data`` as ``subfolder/filename`` in ComfyUI's input folder, replacing a file of that name, as
        ComfyUI's upload button does (server.py image_upload). UploadRefused for a 4xx but NOT_NOW_STATUSES and
        REFUSED_CALLER_STATUSES (UploadRefusedWorker); ComfyUIUnavailable for no whole answer within the HTTP
        timeout, a server error (5xx), a proxy's NOT_NOW_STATUSES or an answer not of its shape or past
        MAX_COMFYUI_MESSAGE_BYTES."""
        form = {"type": "input", "overwrite": "true", "subfolder": subfolder}
        files = {"image": (filename, data, "application/octet-stream")}
        try:
            response = await self._request("POST", "/upload/image", data=form, files=files)
        except ComfyUIServerError as exc:  # it raises on a failed write, e.g. to a read-only COMFYUI_INPUT_DIR
            raise ComfyUIServerError(
                f"{exc} (its log has the reason): it could not save the image in its input folder; if "
                "COMFYUI_INPUT_DIR is a read-only volume, mount it read-write or unset it on replicas that take "
                "jobs carrying images (docs/container.md, 'Workflows that load files')"
            ) from None
        except ReplyTooLarge as exc:  # its answer names the file saved: no workflow makes it larger, ComfyUI is broken
            raise ComfyUIUnavailable(str(exc)) from None
        if response.status_code in REFUSED_CALLER_STATUSES:
            raise UploadRefusedWorker(_refused_worker("POST /upload/image", response.status_code))
        refused = 400 <= response.status_code < 500 and response.status_code not in NOT_NOW_STATUSES
        if refused:  # ComfyUI 0.8.0 says nothing more than the status
            said = f": {scrubbed_excerpt(response.text, 200)}" if response.content else " with no reason"
            raise UploadRefused(f"ComfyUI refused the image (POST /upload/image answered HTTP "
                                f"{response.status_code}{said})")
        try:
            saved = response.json() if response.status_code == 200 else None
        except ValueError:
            saved = None
        if not isinstance(saved, dict) or saved.get("name") != filename:
            quoted = scrubbed_excerpt(response.text, 200)
            raise ComfyUIUnavailable(f"ComfyUI POST /upload/image answered HTTP {response.status_code}: {quoted}")

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished prompt's history entry, or None while it is queued, running or unknown."""
        payload = await self._json("GET", f"/history/{prompt_id}")
        entry = payload.get(prompt_id) if isinstance(payload, dict) else None
        return entry if isinstance(entry, dict) else None

    async def history_of(self, key: str, value: str, max_items: int) -> dict[str, dict[str, Any]]:
        """The entries among ComfyUI's latest ``max_items`` of history whose ``extra_data`` holds ``value`` at
        ``key`` (see ``prompts_of``), oldest first: the prompts a killed run left finished."""
        payload = await self._json("GET", "/history", params={"max_items": max_items})
        if not isinstance(payload, dict):
            raise ComfyUIUnavailable(f"ComfyUI GET /history answered a JSON {type(payload).__name__}, not its history")

        def marked(entry: object) -> bool:
            return _extra_data(entry.get("prompt") if isinstance(entry, dict) else None).get(key) == value

        return {str(prompt_id): entry for prompt_id, entry in payload.items() if marked(entry)}

    async def queued_prompt_ids(self) -> tuple[set[str], set[str]]:
        """(running, pending) prompt ids."""
        running, pending = await self._queue()
        return {prompt_id for prompt_id, _ in running}, {prompt_id for prompt_id, _ in pending}

    async def prompts_of(self, key: str, value: str) -> tuple[set[str], set[str]]:
        """(running, pending) ids of the prompts whose ``extra_data`` holds ``value`` at ``key``: JOB_ID_KEY for
        a job's, WORKER_ID_KEY for a worker's (see ``queue_prompt``)."""
        running, pending = await self._queue()

        def marked(items: list[tuple[str, dict[str, Any]]]) -> set[str]:
            return {prompt_id for prompt_id, extra_data in items if extra_data.get(key) == value}

        return marked(running), marked(pending)

    async def stop_prompts_of(self, key: str, value: str) -> tuple[set[str], set[str]]:
        """Delete the pending and interrupt the running prompts marked ``value`` at ``key`` (``prompts_of``): what
        a killed worker left in ComfyUI. Their (running, pending) ids; PromptsNotStopped naming every prompt that
        could not be stopped, once all were tried."""
        running, pending = await self.prompts_of(key, value)
        stops = [(self.delete_pending, prompt_id) for prompt_id in pending]
        stops += [(self.interrupt, prompt_id) for prompt_id in running]
        failures = []
        for stop, prompt_id in stops:
            try:
                await stop(prompt_id)
            except ComfyUIUnavailable as exc:
                failures.append(f"prompt {prompt_id}: {exc}")
        if failures:
            raise PromptsNotStopped(
                f"could not stop {len(failures)} of {len(stops)} prompts: {'; '.join(failures)}", running
            )
        return running, pending

    async def _queue(self) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
        """(running, pending) as (prompt id, extra_data): elements 1 and 3 of each queue item. ComfyUIUnavailable
        for an answer past the bound: it lists every client's prompts, so whether one is there cannot be told, and
        no workflow is to blame (one is at most 10 MiB)."""
        try:
            payload = await self._json("GET", "/queue")
        except ReplyTooLarge as exc:
            raise ComfyUIUnavailable(str(exc)) from exc
        if not isinstance(payload, dict):
            raise ComfyUIUnavailable(f"ComfyUI GET /queue answered a JSON {type(payload).__name__}, not its queue")

        def items(listed: object) -> list[tuple[str, dict[str, Any]]]:
            if not isinstance(listed, list):
                return []
            return [(str(item[1]), _extra_data(item)) for item in listed if isinstance(item, list) and len(item) > 1]

        return items(payload.get("queue_running")), items(payload.get("queue_pending"))

    async def save_user_file(self, folder: str, name: str, content: bytes, timeout_s: float) -> int:
        """POST /userdata/{folder}%2F{name}: the file in ComfyUI's per-user store (the default user's), written over;
        the answer's status (200 saved)."""
        return (await self._request("POST", _user_file(folder, name), content=content, timeout=timeout_s)).status_code

    async def delete_user_file(self, folder: str, name: str, timeout_s: float) -> None:
        await self._request("DELETE", _user_file(folder, name), timeout=timeout_s)

    async def list_user_files(self, folder: str, timeout_s: float) -> Reply:
        """GET /userdata?dir=folder with each file's size and modification time (ComfyUI's clock)."""
        return await self._request("GET", "/userdata", params={"dir": folder, "full_info": "true"}, timeout=timeout_s)

    async def interrupt(self, prompt_id: str) -> None:
        await self._command("/interrupt", {"prompt_id": prompt_id})

    async def delete_pending(self, prompt_id: str) -> None:
        await self._command("/queue", {"delete": [prompt_id]})

    async def _command(self, path: str, body: dict[str, Any]) -> None:
        """POST ``body``; ComfyUIUnavailable unless it answered 200, as ComfyUI does: a proxy's 4xx stopped nothing."""
        async with self._stream("POST", path, json=body) as response:
            if response.status_code != 200:  # the answer's body says nothing: left unread
                raise ComfyUIUnavailable(f"ComfyUI POST {path} answered HTTP {response.status_code}")

    async def delete_history(self, prompt_id: str, timeout_s: float) -> None:
        """Drop the prompt's history entry (ComfyUI keeps 10,000, each with its whole workflow). Deleting one
        ComfyUI never had, or already dropped, is no error. ComfyUIUnavailable for no 200 within timeout_s."""
        try:
            async with asyncio.timeout(timeout_s), self._stream(
                "POST", "/history", json={"delete": [prompt_id]}, timeout=timeout_s
            ) as response:
                if response.status_code != 200:
                    raise ComfyUIUnavailable(f"ComfyUI POST /history answered HTTP {response.status_code}")
        except TimeoutError:
            raise ComfyUIUnavailable(f"ComfyUI POST /history: no answer within {timeout_s:.1f} s") from None

    async def download(self, filename: str, subfolder: str, folder_type: str) -> AsyncIterator[bytes]:
        """The file's bytes as they come; ComfyUIUnavailable unless each VIEW_PIECE_BYTES of them (or the rest of
        the file) came within the HTTP timeout. Only the waits for ComfyUI count, not the caller's between chunks."""
        chunks = self._view(filename, subfolder, folder_type)
        left_s, piece = self._timeout_s, 0
        try:
            while True:
                started = time.monotonic()
                async with asyncio.timeout(left_s):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    return
                left_s -= time.monotonic() - started
                piece += len(chunk)
                if piece >= VIEW_PIECE_BYTES:
                    left_s, piece = self._timeout_s, 0
                yield chunk
        except TimeoutError:
            raise ComfyUIUnavailable(
                f"ComfyUI GET /view {filename!r}: less than {VIEW_PIECE_BYTES >> 20} MiB, and not the whole file, "
                f"came within {self._timeout_s:g} s (HTTP_TIMEOUT_S)"
            ) from None
        finally:
            await chunks.aclose()

    async def _view(self, filename: str, subfolder: str, folder_type: str) -> AsyncIterator[bytes]:
        params = {"filename": filename, "subfolder": subfolder, "type": folder_type}
        try:
            async with self._http.stream("GET", "/view", params=params) as response:
                if response.status_code >= 500 or response.status_code in NOT_NOW_STATUSES:
                    raise ComfyUIUnavailable(f"ComfyUI GET /view {filename!r} answered HTTP {response.status_code}")
                if response.status_code in REFUSED_CALLER_STATUSES:
                    raise ViewRefusedWorker(_refused_worker(f"GET /view {filename!r}", response.status_code))
                if response.status_code != 200:
                    raise FileNotServed(f"ComfyUI GET /view {filename!r} answered HTTP {response.status_code}")
                async for chunk in response.aiter_bytes(1 << 16):
                    yield chunk
        except httpx.HTTPError as exc:
            raise ComfyUIUnavailable(f"ComfyUI GET /view {filename!r} failed: {type(exc).__name__}: {exc}") from exc

    async def view_refuses_worker(self) -> int | None:
        """The status refusing GET /view naming no file (REFUSED_CALLER_STATUSES), which ComfyUI answers 404: then
        it is the worker, not a file's name, that is refused. None for any other answer, or none."""
        return await self._refuses_worker("GET", "/view")

    async def prompt_refuses_worker(self) -> int | None:
        """The status refusing POST /prompt with no workflow (REFUSED_CALLER_STATUSES), which ComfyUI answers 400
        (no_prompt): then it is the worker, not a workflow, that is refused. None for any other answer, or none."""
        return await self._refuses_worker("POST", "/prompt", json={})

    async def upload_refuses_worker(self) -> int | None:
        """The status refusing POST /upload/image with no image (REFUSED_CALLER_STATUSES), which ComfyUI answers 400:
        then it is the worker, not an image, that is refused. None for any other answer, or none."""
        return await self._refuses_worker("POST", "/upload/image", data={"type": "input"})

    async def _refuses_worker(self, method: str, path: str, **kwargs: Any) -> int | None:
        try:
            status = (await self._request(method, path, **kwargs)).status_code
        except (ComfyUIUnavailable, ReplyTooLarge):
            return None
        return status if status in REFUSED_CALLER_STATUSES else None

    async def connect_websocket(self, client_id: str, *, timeout_s: float = 10.0) -> aiohttp.ClientWebSocketResponse:
        if self._ws_session is None or self._ws_session.closed:
            self._ws_session = aiohttp.ClientSession()
        url = self.base_url.replace("http", "ws", 1) + "/ws"
        try:
            connecting = self._ws_session.ws_connect(
                url, params={"clientId": client_id}, max_msg_size=MAX_COMFYUI_MESSAGE_BYTES
            )
            return await asyncio.wait_for(connecting, timeout_s)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ComfyUIUnavailable(f"ComfyUI websocket unreachable: {_why(exc)}") from exc


class EventSocket:
    """The worker's one websocket, reused across prompts as ComfyUI's own front-end does: events carry their
    prompt_id. A reconnect keeps the clientId, so ComfyUI goes on addressing the same client."""

    def __init__(self, comfy: ComfyUIClient) -> None:
        self.comfy = comfy
        self.client_id = uuid.uuid4().hex
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    @property
    def is_open(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def ensure_open(self, timeout_s: float = 10.0) -> None:
        if not self.is_open:
            self._ws = await self.comfy.connect_websocket(self.client_id, timeout_s=timeout_s)

    async def receive(self, timeout_s: float | None = None) -> aiohttp.WSMessage:
        """The next frame; TimeoutError after timeout_s of silence; a CLOSED frame when not open."""
        if self._ws is None:
            return aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None)
        return await self._ws.receive(timeout=timeout_s)

    async def close(self) -> None:
        if self._ws is not None:
            ws, self._ws = self._ws, None
            await ws.close()


def _refused_worker(what: str, status: int) -> str:
    return (f"ComfyUI {what} answered HTTP {status}: something in front of ComfyUI refuses the worker (ComfyUI asks no "
            "credentials); check COMFYUI_URL and its proxy")


def _why(exc: BaseException) -> str:
    """``Type: text`` of a transport error, scrubbed; httpx gives some (a ReadError on a reset) no text at all."""
    return f"{type(exc).__name__}: {scrub(str(exc)) or 'no detail given'}"


def _user_file(folder: str, name: str) -> str:
    """ComfyUI routes /userdata/{file} on one path segment: the folder's slash goes encoded."""
    return f"/userdata/{quote(folder, safe='')}%2F{quote(name, safe='')}"
