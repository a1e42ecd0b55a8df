"""A ComfyUI 0.8.0 simulator: the HTTP + websocket API of a real ComfyUI server, replaying the
shapes, ordering, history lag and interrupt semantics recorded in
`tests/fixtures/comfyui-0.8.0/`, with fault hooks for tests (dropped sockets, crashes,
runtime errors, frozen nodes, answers of the wrong shape).

In-process: `async with ComfyUISimulator(tmp_path / "output") as sim: ... sim.url ...`.
As a child process in place of ComfyUI: `python -m standins.comfyui --listen H --port N ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import errno
import glob
import hashlib
import heapq
import itertools
import json
import math
import mimetypes
import os
import signal
import struct
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib import parse

import aiohttp
import structlog
from aiohttp import web

from common.urls import host_port
from standins.comfyui_nodes import (
    EXECUTE_FRAMES,
    Image,
    NodeDef,
    NodeEnv,
    NodeError,
    NodeResult,
    build_catalogue,
    png_bytes,
    validate_prompt,
)
from standins.faults import reshaped

log = structlog.get_logger()

COMFYUI_VERSION = "0.8.0"
MAX_HISTORY = 10_000
# Run as a process (the demo, `python -m standins.comfyui`), records for assertions are bounded to the latest.
CLI_RECORDS_KEPT = 1000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
PREVIEW_IMAGE_EVENT = 1  # binary frame: event type, then image format (2 = PNG), then the image
PNG_FORMAT = 2


T = TypeVar("T")


class Records(list[T]):
    """A list of what the simulator received, for tests to assert on; with a limit, only the latest are kept."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = limit

    def append(self, item: T) -> None:
        super().append(item)
        self._trim()

    def extend(self, items: Iterable[T]) -> None:
        super().extend(items)
        self._trim()

    def _trim(self) -> None:
        if self.limit is not None and len(self) > self.limit:
            del self[: len(self) - self.limit]


@dataclass(frozen=True)
class ReceivedPrompt:
    """One `POST /prompt` with a JSON body, as received, and what the simulator answered."""

    body: Any
    status: int
    prompt_id: str | None

    @property
    def client_id(self) -> str | None:
        return self.body.get("client_id") if isinstance(self.body, dict) else None

    @property
    def extra_data(self) -> dict[str, Any]:
        return self.body.get("extra_data", {}) if isinstance(self.body, dict) else {}


@dataclass(frozen=True)
class ReceivedUpload:
    """One `POST /upload/image`: the status answered and, when saved, the answer and the file's size."""

    status: int
    answer: dict[str, Any] | None
    bytes: int


@dataclass(frozen=True)
class ReceivedInterrupt:
    body: dict[str, Any]
    running_prompt_id: str | None
    honoured: bool


@dataclass
class InjectedError:
    """Raise `exception_message` in the first matching node of the next `prompts` prompts."""

    exception_message: str
    exception_type: str = "RuntimeError"
    class_type: str | None = None
    node_id: str | None = None
    prompts: int | None = 1  # None: every prompt from now on

    def matches(self, node_id: str, class_type: str) -> bool:
        return self.node_id in (None, node_id) and self.class_type in (None, class_type)


class _Interrupted(Exception):
    pass


@dataclass(order=True)
class _QueueEntry:
    number: float
    seq: int
    item: list = field(compare=False)  # [number, prompt_id, prompt, extra_data, outputs_to_execute]


@dataclass
class _ServerState:
    """Everything that dies with the ComfyUI process."""

    number: int = 0
    seq: itertools.count = field(default_factory=itertools.count)
    pending: list[_QueueEntry] = field(default_factory=list)
    running: _QueueEntry | None = None
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[str, NodeResult] = field(default_factory=dict)
    client_id: str | None = None
    last_node_id: str | None = None
    interrupt: bool = False
    free_flags: dict[str, bool] = field(default_factory=dict)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


class _ExecutionOrder:
    """ComfyUI's `ExecutionList`: dependency order, output nodes first among the ready ones. A cached node is
    scheduled only when asked for by name (an output); one that is merely upstream is read from the cache."""

    def __init__(self, prompt: dict[str, Any], catalogue: dict[str, NodeDef], cached: Collection[str]) -> None:
        self.prompt = prompt
        self.catalogue = catalogue
        self.cached = cached
        self.pending: dict[str, None] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, None]] = {}

    def add(self, node_id: str) -> None:
        stack, links = [node_id], []
        while stack:
            current = stack.pop()
            if current in self.pending:
                continue
            self.pending[current] = None
            self.block_count[current] = 0
            self.blocking[current] = {}
            for value in self.prompt[current]["inputs"].values():
                if _is_link(value) and value[0] not in self.cached:
                    stack.append(value[0])
                    links.append((value[0], current))
        for source, target in links:
            self.add(source)
            if target not in self.blocking[source]:
                self.blocking[source][target] = None
                self.block_count[target] += 1

    def _is_output(self, node_id: str) -> bool:
        return self.catalogue[self.prompt[node_id]["class_type"]].output_node

    def next(self) -> str | None:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            if any(self._is_output(b2) for b in self.blocking[node_id] for b2 in self.blocking[b]):
                return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id):
            self.block_count[blocked] -= 1


@dataclass
class _PromptRun:
    """One execution of one prompt: what `PromptExecutor.execute` keeps."""

    prompt_id: str
    prompt: dict[str, Any]
    client_id: str | None
    signatures: dict[str, str]
    messages: list[list[Any]] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    values: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    injected: InjectedError | None = None


class ComfyUISimulator:
    def __init__(
        self,
        output_dir: Path,
        temp_dir: Path | None = None,
        *,
        input_dir: Path | None = None,
        node_seconds: dict[str, float] | None = None,
        default_node_seconds: float = 0.0,
        history_lag_s: float = 0.05,
        checkpoints: tuple[str, ...] | list[str] = ("broken.safetensors",),
        send_previews: bool = False,
        cache_outputs: bool = True,
        max_upload_size_mb: float = 100,
        read_only_input: bool = False,
        argv: list[str] | None = None,
        records_kept: int | None = None,
        user_dir: Path | None = None,
    ) -> None:
        self.output_dir = Path(output_dir).resolve()
        # ComfyUI's --user-directory: its user data store (/userdata) keeps the default user's files in "default".
        self.user_dir = Path(user_dir).resolve() if user_dir else self.output_dir.parent / "user"
        self.temp_dir = Path(temp_dir).resolve() if temp_dir else self.output_dir.parent / "temp"
        self.input_dir = Path(input_dir).resolve() if input_dir else self.output_dir.parent / "input"
        self.node_seconds: dict[str, float] = dict(node_seconds or {})
        self.default_node_seconds = default_node_seconds
        self.history_lag_s = history_lag_s
        self.send_previews = send_previews
        self.cache_outputs = cache_outputs
        # ComfyUI's --max-upload-size (MB, default 100) is its aiohttp client_max_size: larger bodies get 413.
        self.max_upload_bytes = round(max_upload_size_mb * 1024 * 1024)
        # Its feature flags give the product as is: 104857600 for the default (an int), 104857600.0 for a float.
        self.feature_flags = {"supports_preview_metadata": True, "max_upload_size": max_upload_size_mb * 1024 * 1024,
                              "extension": {"manager": {"supports_v4": True}}}  # fmt: skip
        # The input folder on a read-only volume (COMFYUI_INPUT_DIR mounted :ro): an upload's write raises EROFS.
        self.read_only_input = read_only_input
        self.argv = argv or ["main.py"]
        self.catalogue = build_catalogue(checkpoints)
        # Records for assertions; they survive crashes and restarts. A long-running process (the demo, the CLI)
        # keeps only the last `records_kept` of each: every prompt holds its whole workflow.
        self.prompts_received: Records[ReceivedPrompt] = Records(records_kept)
        self.interrupts_received: Records[ReceivedInterrupt] = Records(records_kept)
        self.free_requests: Records[dict[str, Any]] = Records(records_kept)
        self.view_requests: Records[dict[str, str]] = Records(records_kept)
        self.history_deletes: Records[str] = Records(records_kept)  # prompt ids POST /history was asked to delete
        self.uploads_received: Records[ReceivedUpload] = Records(records_kept)
        self.ws_connections: Counter[str] = Counter()
        self.injected_errors: list[InjectedError] = []
        self.url = ""
        self.port = 0
        self._freeze: tuple[str | None, str | None] | None = None
        self._history_post_fault: int | str | None = None
        self._slow_paths: dict[str, float] = {}
        self._reshapes: dict[str, Callable[[Any], Any]] = {}
        self._refuse_websockets = False
        self._connections_to_lose: dict[str, tuple[int, bool]] = {}
        self._thaw = asyncio.Event()
        self._frozen = asyncio.Event()
        self._state = _ServerState()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self._sockets: dict[str, tuple[web.WebSocketResponse, asyncio.BaseTransport | None]] = {}
        self._outbox: asyncio.Queue[tuple[Any, Any, str | None]] = asyncio.Queue()
        self._wakeup = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start (or restart after `crash`/`stop`) with the empty state of a fresh process."""
        for folder in (self.output_dir, self.temp_dir, self.input_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._make_3d_folder()
        self._state = _ServerState()
        self._outbox = asyncio.Queue()
        self._wakeup = asyncio.Event()
        self._runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{host_port(host, self.port)}"
        self._tasks = [asyncio.create_task(self._execute_queue()), asyncio.create_task(self._publish())]
        log.info("comfyui_sim.started", url=self.url)
        return self.url

    async def stop(self) -> None:
        """Graceful shutdown: websockets get a close frame."""
        await self._cancel_tasks()
        for ws, _ in list(self._sockets.values()):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        await self._cleanup_runner()

    async def crash(self) -> None:
        """The process dies: listener gone, every connection reset, running prompt and state lost."""
        await self._cancel_tasks()
        if self._runner is not None and self._runner.server is not None:
            for site in list(self._runner.sites):
                await site.stop()
            for connection in self._runner.server.connections:
                if connection.transport is not None:
                    connection.transport.abort()
        await self._cleanup_runner()
        log.info("comfyui_sim.crashed")

    async def __aenter__(self) -> ComfyUISimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _cleanup_runner(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._sockets.clear()

    # --- fault hooks -------------------------------------------------------------------------

    async def drop_websockets(self) -> None:
        """Reset every client socket without a close frame; prompts keep running."""
        for _, transport in list(self._sockets.values()):
            if transport is not None:
                transport.abort()
        self._sockets.clear()

    def inject_error(
        self,
        exception_message: str,
        *,
        exception_type: str = "RuntimeError",
        class_type: str | None = None,
        node_id: str | None = None,
        prompts: int | None = 1,
    ) -> InjectedError:
        """Make the next `prompts` prompts fail at the first node matching class_type/node_id
        (any node if neither is given). ComfyUI appends a newline to the message it reports."""
        injected = InjectedError(exception_message, exception_type, class_type, node_id, prompts)
        self.injected_errors.append(injected)
        return injected

    def send_sync(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """What a custom node may do with `PromptServer.instance.send_sync`: any event to one client, or to every
        socket when sid is None. An int event is a binary frame of that type (1: preview image), `data` bytes."""
        self._send(event, data, sid)

    def freeze(self, *, class_type: str | None = None, node_id: str | None = None) -> None:
        """The next matching node hangs inside Python (ignoring interrupts) until `release()`."""
        self._freeze = (class_type, node_id)
        self._thaw.clear()
        self._frozen.clear()

    def break_history_posts(self, *, status: int | None = None, hang: bool = False) -> None:
        """POST /history answers `status` without deleting anything, or never answers (hang), until called
        with neither."""
        self._history_post_fault = "hang" if hang else status

    def slow_down(self, path: str, seconds: float) -> None:
        """Requests to ``path`` (with or without the /api prefix) are answered ``seconds`` late, as by a ComfyUI whose
        event loop a custom node holds; 0 answers at once again."""
        self._slow_paths[path] = seconds

    def reshape(self, route: str, rewrite: Callable[[Any], Any] | None) -> None:
        """The JSON answers of ``route`` (as routed: "/queue", "/history/{prompt_id}"; with or without the /api
        prefix) become ``rewrite(answer)``, as from a ComfyUI that a custom node or a proxy in front of it broke;
        None answers as ComfyUI again."""
        route = _without_api_prefix(route)
        if rewrite is None:
            self._reshapes.pop(route, None)
        else:
            self._reshapes[route] = rewrite

    def refuse_websockets(self, refuse: bool = True) -> None:
        """GET /ws answers 403 without upgrading, as a proxy that forbids websockets does; HTTP still answers."""
        self._refuse_websockets = refuse

    def lose_connections(self, path: str, times: int = 1, *, carried_out: bool = False) -> None:
        """The next ``times`` requests to ``path`` (with or without the /api prefix) get their connection reset
        without an answer: before ComfyUI reads them (a lost request), or with ``carried_out`` once it carried them
        out (a lost answer, as when a proxy's connection drops)."""
        self._connections_to_lose[_without_api_prefix(path)] = (times, carried_out)

    def release(self) -> None:
        self._freeze = None
        self._thaw.set()

    async def wait_until_frozen(self) -> None:
        await self._frozen.wait()

    @property
    def running_prompt_id(self) -> str | None:
        return self._state.running.item[1] if self._state.running else None

    # --- HTTP --------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        routes = [
            ("GET", "/ws", self._websocket),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/prompt", self._get_prompt),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("POST", "/history", self._post_history),
            ("POST", "/interrupt", self._post_interrupt),
            ("POST", "/free", self._post_free),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload_image),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_one),
            ("GET", "/userdata", self._list_userdata),
            ("GET", "/userdata/{file}", self._get_userdata),
            ("POST", "/userdata/{file}", self._post_userdata),
            ("DELETE", "/userdata/{file}", self._delete_userdata),
        ]
        middlewares = [self._answer_late, self._lose_connection, self._answer_reshaped]
        app = web.Application(client_max_size=self.max_upload_bytes, middlewares=middlewares)
        for prefix in ("/api", ""):
            for method, path, handler in routes:
                app.router.add_route(method, prefix + path, handler)
        return app

    @web.middleware
    async def _answer_late(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if seconds := self._slow_paths.get(_without_api_prefix(request.path), 0.0):
            await asyncio.sleep(seconds)
        return await handler(request)

    @web.middleware
    async def _lose_connection(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = _without_api_prefix(request.path)
        times, carried_out = self._connections_to_lose.get(path, (0, False))
        if times <= 0:
            return await handler(request)
        self._connections_to_lose[path] = (times - 1, carried_out)
        response = await handler(request) if carried_out else web.Response()
        if request.transport is not None:
            request.transport.abort()
        return response

    @web.middleware
    async def _answer_reshaped(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        resource = request.match_info.route.resource
        rewrite = self._reshapes.get(_without_api_prefix(resource.canonical)) if resource else None
        return reshaped(response, rewrite) if rewrite else response

    def _queue_remaining(self) -> int:
        return len(self._state.pending) + (1 if self._state.running else 0)

    def _queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self._queue_remaining()}}

    def _queue_updated(self) -> None:
        self._send("status", {"status": self._queue_info()})

    async def _system_stats(self, request: web.Request) -> web.Response:
        ram_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        ram_free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        return web.json_response({
            "system": {
                "os": sys.platform,
                "ram_total": ram_total,
                "ram_free": ram_free,
                "comfyui_version": COMFYUI_VERSION,
                "required_frontend_version": "1.35.9",
                "installed_templates_version": "0.7.67",
                "required_templates_version": "0.7.67",
                "python_version": sys.version,
                "pytorch_version": "2.14.1+cu130",
                "embedded_python": False,
                "argv": self.argv,
            },
            "devices": [{
                "name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
                "torch_vram_total": ram_total, "torch_vram_free": ram_free,
            }],
        })  # fmt: skip

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_info())

    async def _post_prompt(self, request: web.Request) -> web.Response:
        log.info("got prompt")
        # A body that is not JSON raises here; aiohttp answers 500 "Server got itself in trouble",
        # exactly as ComfyUI (also aiohttp) does.
        body = await request.json()
        record = copy.deepcopy(body)
        status, answer = self._accept_prompt(body)
        self.prompts_received.append(ReceivedPrompt(record, status, answer.get("prompt_id")))
        return web.json_response(answer, status=status)

    def _accept_prompt(self, body: Any) -> tuple[int, dict[str, Any]]:
        # As ComfyUI's server.py, line for line, on whatever JSON came: a list body is searched with `in` and,
        # holding no "prompt", gets the 400 below; where Python fails (an int, a string holding "prompt", a
        # non-object extra_data with a client_id, even for an invalid prompt) aiohttp's plain 500.
        if "number" in body:
            number: float = float(body["number"])
        else:
            number = self._state.number
            if "front" in body and body["front"]:  # noqa: RUF019 (any JSON, not only an object)
                number = -number
            self._state.number += 1
        if "prompt" not in body:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                     "extra_info": {}}  # fmt: skip
            return 400, {"error": error, "node_errors": {}}
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        partial_execution_targets = body.get("partial_execution_targets")
        validation = validate_prompt(prompt, self.catalogue, self._env, partial_execution_targets)
        extra_data = body.get("extra_data", {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not validation.ok:
            log.warning("invalid prompt", error=validation.error)
            return 400, {"error": validation.error, "node_errors": validation.node_errors}
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            if key in extra_data:
                extra_data.pop(key)
        extra_data["create_time"] = _now_ms()
        item = [number, prompt_id, prompt, extra_data, validation.outputs]
        heapq.heappush(self._state.pending, _QueueEntry(number, next(self._state.seq), item))
        self._queue_updated()
        self._wakeup.set()
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": validation.node_errors}

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [self._state.running.item] if self._state.running else []
        pending = [entry.item for entry in self._state.pending]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.Response:
        # As ComfyUI's server.py, line for line, on whatever JSON came: a body that is not an object gets
        # Python's `in` (an element of a list, a substring of a string) and a TypeError (500) where it fails.
        body = await request.json()
        if "clear" in body and body["clear"]:  # noqa: RUF019 (any JSON, not only an object: see above)
            self._state.pending.clear()
            self._queue_updated()
        if "delete" in body:
            for prompt_id in body["delete"]:
                self._delete_pending(prompt_id)
        return web.Response()

    def _delete_pending(self, prompt_id: object) -> None:
        for entry in self._state.pending:
            if entry.item[1] == prompt_id:
                self._state.pending.remove(entry)
                heapq.heapify(self._state.pending)
                self._queue_updated()
                return

    async def _get_history(self, request: web.Request) -> web.Response:
        max_items = int(request.query["max_items"]) if "max_items" in request.query else None
        offset = int(request.query.get("offset", -1))
        history = self._state.history
        if offset < 0 and max_items is not None:
            offset = len(history) - max_items
        selected = list(history.items())[max(offset, 0) :]
        return web.json_response(dict(selected[:max_items] if max_items is not None else selected))

    async def _get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self._state.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if isinstance(body, dict) and isinstance(body.get("delete"), list):
            self.history_deletes.extend(str(prompt_id) for prompt_id in body["delete"])
        if self._history_post_fault == "hang":
            await asyncio.Event().wait()
        if isinstance(self._history_post_fault, int):
            return web.Response(status=self._history_post_fault)
        # As ComfyUI's server.py, line for line (see _post_queue): what it did before a TypeError stays done.
        if "clear" in body and body["clear"]:  # noqa: RUF019 (any JSON, not only an object: see above)
            self._state.history.clear()
        if "delete" in body:
            for prompt_id in body["delete"]:
                self._state.history.pop(prompt_id, None)
        return web.Response()

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        running = self.running_prompt_id
        target = body.get("prompt_id")
        honoured = not target or target == running
        if honoured:
            self._state.interrupt = True
        self.interrupts_received.append(ReceivedInterrupt(body, running, honoured))
        log.info("interrupt", prompt_id=target, running=running, honoured=honoured)
        return web.Response()

    async def _post_free(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.free_requests.append(body)
        for flag in ("unload_models", "free_memory"):
            if body.get(flag):
                self._state.free_flags[flag] = True
        return web.Response()

    async def _view(self, request: web.Request) -> web.StreamResponse:
        self.view_requests.append(dict(request.query))
        resolved = self._view_path(request.query)
        if isinstance(resolved, int):
            return web.Response(status=resolved)
        content_type = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
        if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
            content_type = "application/octet-stream"
        headers = {"Content-Disposition": f'filename="{resolved.name}"', "Content-Type": content_type}
        return web.FileResponse(resolved, headers=headers)

    def _view_path(self, query: Any) -> Path | int:
        """ComfyUI's checks for `GET /view`: the file to serve, or the HTTP status refusing it."""
        if "filename" not in query:
            return 404
        filename, folder = query["filename"], None
        for kind in ("output", "input", "temp"):  # folder_paths.annotated_filepath: one tag, and one character more
            if filename.endswith(f"[{kind}]"):
                filename, folder = filename[: -len(kind) - 3], self._folder(kind)
                break
        if not filename or filename[0] == "/" or ".." in filename:
            return 400
        folder = folder or self._folder(query.get("type", "output"))
        if folder is None:
            return 400
        if "subfolder" in query:
            full = os.path.join(folder, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), str(folder))) != str(folder):
                return 403
            folder = Path(full)
        file = Path(folder) / os.path.basename(filename)
        return file if file.is_file() else 404

    def _folder(self, kind: str) -> Path | None:
        return {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}.get(kind)

    def _make_3d_folder(self) -> None:
        """ComfyUI 0.8.0's Load3D node makes input/3d whenever its schema is read (comfy_extras/nodes_load_3d.py
        define_schema): once as the nodes load at start, again at each GET /object_info. On a read-only input
        folder its os.makedirs raises, and ComfyUI goes on without its 3D nodes."""
        if not self.read_only_input:
            (self.input_dir / "3d").mkdir(exist_ok=True)

    async def _object_info(self, request: web.Request) -> web.Response:
        self._make_3d_folder()
        return web.json_response({name: node.object_info(self._env) for name, node in self.catalogue.items()})

    async def _object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        node = self.catalogue.get(name)
        return web.json_response({name: node.object_info(self._env)} if node else {})

    @property
    def _env(self) -> NodeEnv:
        return NodeEnv(self.output_dir, self.temp_dir, self.input_dir)

    async def _upload_image(self, request: web.Request) -> web.Response:
        """ComfyUI's `POST /upload/image` (server.py image_upload), step for step: its 400s have no body, and what
        it raises (a type it does not know, a read-only input folder) is aiohttp's plain 500."""
        return self._image_upload(await request.post())

    def _image_upload(self, post: Any) -> web.Response:
        image = post.get("image")
        overwrite = post.get("overwrite")
        image_is_duplicate = False
        upload_type = post.get("type")
        upload_type = "input" if upload_type is None else upload_type
        upload_dir = self._folder(str(upload_type))
        if upload_dir is None:
            raise UnboundLocalError("cannot access local variable 'type_dir' where it is not associated with a value")
        if not (image and image.file):
            return self._uploaded(400)
        filename = image.filename
        if not filename:
            return self._uploaded(400)
        subfolder = post.get("subfolder", "")
        full_output_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(full_output_folder, filename))
        if os.path.commonpath((upload_dir, filepath)) != str(upload_dir):
            return self._uploaded(400)
        data = image.file.read()
        if not os.path.exists(full_output_folder):
            self._check_writable(upload_dir)
            os.makedirs(full_output_folder)
        if overwrite not in ("true", "1"):
            stem, extension = os.path.splitext(filename)
            i = 1
            while os.path.exists(filepath):
                if Path(filepath).read_bytes() == data:  # ComfyUI compares hashes: the same file is not saved twice
                    image_is_duplicate = True
                    break
                filename = f"{stem} ({i}){extension}"
                filepath = os.path.join(full_output_folder, filename)
                i += 1
        if not image_is_duplicate:
            self._check_writable(upload_dir)
            Path(filepath).write_bytes(data)
        answer = {"name": filename, "subfolder": subfolder, "type": upload_type}
        return self._uploaded(200, answer, len(data))

    def _uploaded(self, status: int, answer: dict[str, Any] | None = None, size: int = 0) -> web.Response:
        self.uploads_received.append(ReceivedUpload(status, answer, size))
        return web.json_response(answer) if answer is not None else web.Response(status=status)

    def _check_writable(self, folder: Path) -> None:
        if self.read_only_input and folder == self.input_dir:
            self.uploads_received.append(ReceivedUpload(500, None, 0))
            raise OSError(errno.EROFS, "Read-only file system", str(folder))

    # --- user data: ComfyUI 0.8.0's app/user_manager.py, line for line, for its one user without --multi-user ---

    def _userdata_path(self, file: str | None) -> str | None:
        """UserManager.get_request_user_filepath: a name with a "%" is unquoted once more (aiohttp unquoted it
        already), a path leaving the user's folder is None, and the parent folder is made."""
        user_root = os.path.join(self.user_dir, "default")
        path = user_root
        if file is not None:
            if "%" in file:
                file = parse.unquote(file)
            path = os.path.abspath(os.path.join(user_root, file))
            if os.path.commonpath((user_root, path)) != user_root:
                return None
        parent = os.path.split(path)[0]
        if not os.path.exists(parent):
            os.makedirs(parent, exist_ok=True)
        return path

    def _userdata_file(
        self, request: web.Request, check_exists: bool = False, refuse_existing: bool = False
    ) -> str | web.Response:
        """get_user_data_path; refuse_existing: POST's overwrite=false."""
        file = request.match_info.get("file", None)
        if not file:
            return web.Response(status=400)
        path = self._userdata_path(file)
        if not path:
            return web.Response(status=403)
        if check_exists and not os.path.exists(path):
            return web.Response(status=404)
        if refuse_existing and os.path.exists(path):
            return web.Response(status=409, text="File already exists")
        return path

    async def _list_userdata(self, request: web.Request) -> web.Response:
        return self._userdata_listing(request.rel_url.query)

    def _userdata_listing(self, query: Any) -> web.Response:
        directory = query.get("dir", "")
        if not directory:
            return web.Response(status=400, text="Directory not provided")
        path = self._userdata_path(directory)
        if not path:
            return web.Response(status=403, text="Invalid directory")
        if not os.path.exists(path):
            return web.Response(status=404, text="Directory not found")
        recurse = query.get("recurse", "").lower() == "true"
        full_info = query.get("full_info", "").lower() == "true"
        split_path = query.get("split", "").lower() == "true"
        pattern = os.path.join(glob.escape(path), "**", "*") if recurse else os.path.join(glob.escape(path), "*")

        def process_full_path(full_path: str) -> Any:
            if full_info:
                return _file_info(full_path, path)
            rel_path = os.path.relpath(full_path, path).replace(os.sep, "/")
            return [rel_path, *rel_path.split("/")] if split_path else rel_path

        found = glob.glob(pattern, recursive=recurse)
        return web.json_response([process_full_path(full) for full in found if os.path.isfile(full)])

    async def _get_userdata(self, request: web.Request) -> web.StreamResponse:
        path = self._userdata_file(request, check_exists=True)
        return web.FileResponse(path) if isinstance(path, str) else path

    async def _post_userdata(self, request: web.Request) -> web.Response:
        path = self._userdata_file(request, refuse_existing=request.query.get("overwrite", "true") == "false")
        if not isinstance(path, str):
            return path
        try:
            body = await request.read()
        except OSError:
            return _invalid_filename()
        return self._save_userdata(path, body, full_info=request.query.get("full_info", "false").lower() == "true")

    def _save_userdata(self, path: str, body: bytes, *, full_info: bool) -> web.Response:
        try:
            with open(path, "wb") as f:
                f.write(body)
        except OSError:
            return _invalid_filename()
        user_path = os.path.join(self.user_dir, "default")  # get_request_user_filepath(request, None)
        return web.json_response(_file_info(path, user_path) if full_info else os.path.relpath(path, user_path))

    async def _delete_userdata(self, request: web.Request) -> web.Response:
        path = self._userdata_file(request, check_exists=True)
        if not isinstance(path, str):
            return path
        os.remove(path)
        return web.Response(status=204)

    # --- websocket ---------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if self._refuse_websockets:
            return web.Response(status=403, text="websocket upgrades are not allowed")
        ws = web.WebSocketResponse(timeout=2.0)
        await ws.prepare(request)
        sid = request.query.get("clientId", "") or uuid.uuid4().hex
        self._sockets[sid] = (ws, request.transport)  # a reconnect replaces the older socket
        self.ws_connections[sid] += 1
        log.info("comfyui_sim.ws_connected", sid=sid)
        try:
            await _send_catching(ws.send_json, {"type": "status", "data": {"status": self._queue_info(), "sid": sid}})
            if self._state.client_id == sid and self._state.last_node_id is not None:
                await _send_catching(ws.send_json, {"type": "executing", "data": {"node": self._state.last_node_id}})
            first = True
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    first = await self._client_message(ws, msg.data, first)
        except ConnectionError:
            pass
        finally:
            # As ComfyUI: by sid, so an older socket of a reconnected client that closes now forgets the newer one.
            self._sockets.pop(sid, None)
        return ws

    async def _client_message(self, ws: web.WebSocketResponse, text: str, first: bool) -> bool:
        """ComfyUI answers a first message of type feature_flags with its own; text it cannot read (not JSON, not an
        object, an integer of over 4300 digits, nesting deeper than Python's recursion limit) is logged and the
        socket stays open. Whether the next message still counts as the first."""
        try:
            data = json.loads(text)
            if first and data.get("type") == "feature_flags":
                await _send_catching(ws.send_json, {"type": "feature_flags", "data": copy.deepcopy(self.feature_flags)})
        except json.JSONDecodeError:
            log.warning("Invalid JSON received from client")
            return first
        except Exception as error:  # as ComfyUI's websocket_handler: logged, the socket stays open
            log.error(f"Error processing WebSocket message: {error}")
            return first
        return False

    def _send(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """ComfyUI's `send_sync`: sid None means every socket; unknown sid means nobody."""
        self._outbox.put_nowait((event, data, sid))

    async def _publish(self) -> None:
        while True:
            event, data, sid = await self._outbox.get()
            if sid is None:
                targets = [ws for ws, _ in self._sockets.values()]
            else:
                targets = [self._sockets[sid][0]] if sid in self._sockets else []
            for ws in targets:
                if isinstance(event, int):
                    await _send_catching(ws.send_bytes, struct.pack(">I", event) + data)
                else:
                    await _send_catching(ws.send_json, {"type": event, "data": data})

    # --- execution ---------------------------------------------------------------------------

    async def _execute_queue(self) -> None:
        while True:
            while not self._state.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            entry = heapq.heappop(self._state.pending)
            self._state.running = entry
            self._queue_updated()
            await self._run_prompt(entry)

    async def _run_prompt(self, entry: _QueueEntry) -> None:
        _, prompt_id, prompt, extra_data, outputs = entry.item
        started = time.monotonic()
        run = _PromptRun(prompt_id, prompt, extra_data.get("client_id"), self._signatures(prompt))
        success = await self._execute(run, outputs)
        # The real server writes history only after the terminal event went out.
        await asyncio.sleep(self.history_lag_s)
        if len(self._state.history) > MAX_HISTORY:
            self._state.history.pop(next(iter(self._state.history)))
        self._state.history[prompt_id] = {
            "prompt": entry.item,
            "outputs": run.outputs,
            "status": {"status_str": "success" if success else "error", "completed": success,
                       "messages": run.messages},
            "meta": run.meta,
        }  # fmt: skip
        self._state.running = None
        self._queue_updated()
        if run.client_id is not None:
            self._send("executing", {"node": None, "prompt_id": prompt_id}, run.client_id)
        log.info(f"Prompt executed in {time.monotonic() - started:.2f} seconds", prompt_id=prompt_id)
        if self._state.free_flags.pop("free_memory", False):
            self._state.cache.clear()
        self._state.free_flags.clear()

    def _add_message(self, run: _PromptRun, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": _now_ms()}
        run.messages.append([event, data])
        if run.client_id is not None or broadcast:
            self._send(event, data, run.client_id)

    async def _execute(self, run: _PromptRun, outputs: list[str]) -> bool:
        self._state.client_id = run.client_id
        self._state.interrupt = False
        run.injected = next((e for e in self.injected_errors if e.prompts != 0), None)
        self._add_message(run, "execution_start", {"prompt_id": run.prompt_id}, broadcast=False)
        cached = [n for n in run.prompt if self.cache_outputs and run.signatures[n] in self._state.cache]
        self._add_message(run, "execution_cached", {"nodes": cached, "prompt_id": run.prompt_id}, broadcast=False)
        run.values.update({n: self._state.cache[run.signatures[n]].outputs for n in cached})
        order = _ExecutionOrder(run.prompt, self.catalogue, cached)
        for output in outputs:
            order.add(output)
        # ComfyUI's is the set of every node of the prompt, cached or not; this order matches its recordings.
        current_outputs = [*order.pending, *(n for n in run.prompt if n not in order.pending)]
        try:
            while (node_id := order.next()) is not None:
                if node_id in cached:
                    self._replay_cached(run, node_id)
                else:
                    await self._execute_node(run, node_id)
                order.complete(node_id)
        except _Interrupted:
            log.info("Processing interrupted", prompt_id=run.prompt_id)
            self._add_message(run, "execution_interrupted", self._failure(run, node_id), broadcast=True)
            return False
        except NodeError as error:
            self._add_message(run, "execution_error", {
                **self._failure(run, node_id),
                "exception_message": f"{error}\n",
                "exception_type": error.exception_type,
                "traceback": error.traceback,
                "current_inputs": self._format_inputs(run, node_id),
                "current_outputs": current_outputs,
            }, broadcast=False)  # fmt: skip
            return False
        finally:
            self._state.last_node_id = None
            self._keep_cache_for(run)
        self._add_message(run, "execution_success", {"prompt_id": run.prompt_id}, broadcast=False)
        return True

    def _failure(self, run: _PromptRun, node_id: str) -> dict[str, Any]:
        return {
            "prompt_id": run.prompt_id,
            "node_id": node_id,
            "node_type": run.prompt[node_id]["class_type"],
            "executed": list(run.executed),
        }

    def _format_inputs(self, run: _PromptRun, node_id: str) -> dict[str, list[Any]]:
        formatted = {}
        for name, value in run.prompt[node_id]["inputs"].items():
            if _is_link(value):
                source = run.values.get(value[0])
                formatted[name] = [repr(source[value[1]]) if source else None]
            else:
                formatted[name] = [value]
        return formatted

    def _progress(self, run: _PromptRun, node_id: str, value: float, maximum: float, state: str) -> None:
        run.progress[node_id] = {
            "value": value, "max": maximum, "state": state, "node_id": node_id, "prompt_id": run.prompt_id,
            "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id,
        }  # fmt: skip
        nodes = copy.deepcopy(run.progress)
        self._send("progress_state", {"prompt_id": run.prompt_id, "nodes": nodes}, run.client_id)

    def _keep(self, run: _PromptRun, node_id: str, result: NodeResult) -> None:
        run.values[node_id] = result.outputs
        if result.ui:
            run.outputs[node_id] = result.ui
            run.meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                 "real_node_id": node_id}  # fmt: skip

    def _send_executed(self, run: _PromptRun, node_id: str, ui: dict[str, Any] | None) -> None:
        if run.client_id is not None:
            self._send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                    "prompt_id": run.prompt_id}, run.client_id)  # fmt: skip

    def _finish(self, run: _PromptRun, node_id: str, result: NodeResult) -> None:
        self._keep(run, node_id, result)
        if result.ui:  # as ComfyUI: a node run says "executed" only with a UI, a cached one always (below)
            self._send_executed(run, node_id, result.ui)
        maximum = run.progress.get(node_id, {}).get("max", 1.0)
        self._progress(run, node_id, maximum, maximum, "finished")

    def _replay_cached(self, run: _PromptRun, node_id: str) -> None:
        cached = self._state.cache[run.signatures[node_id]]
        self._keep(run, node_id, cached)
        self._send_executed(run, node_id, cached.ui)
        self._progress(run, node_id, 1, 1, "finished")  # ints: ComfyUI finishes its new entry (0, 1) unstarted

    def _check_interrupt(self) -> None:
        if self._state.interrupt:
            self._state.interrupt = False
            raise _Interrupted

    async def _execute_node(self, run: _PromptRun, node_id: str) -> None:
        class_type = run.prompt[node_id]["class_type"]
        node_def = self.catalogue[class_type]
        self._progress(run, node_id, 0.0, 1.0, "running")
        if run.client_id is not None:
            self._state.last_node_id = node_id
            self._send("executing", {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id},
                       run.client_id)  # fmt: skip
        self._check_interrupt()
        inputs = {
            name: run.values[value[0]][value[1]] if _is_link(value) else value
            for name, value in run.prompt[node_id]["inputs"].items()
        }
        await self._stay_frozen_if_asked(node_id, class_type)
        seconds = self.node_seconds.get(class_type, self.default_node_seconds)
        if node_def.steps_input:
            await self._run_steps(run, node_id, int(inputs[node_def.steps_input]), seconds)
        else:
            await asyncio.sleep(seconds)
            self._send_preview(run)
        self._raise_injected_error(run, node_id, class_type)
        try:
            result = node_def.run(inputs, self._env)
        except NodeError:
            raise
        except Exception as ex:  # ComfyUI reports any exception a node raises as execution_error
            raise NodeError(str(ex), type(ex).__name__, EXECUTE_FRAMES) from ex
        if self.cache_outputs:
            self._state.cache[run.signatures[node_id]] = result
        run.executed.append(node_id)
        self._finish(run, node_id, result)

    async def _run_steps(self, run: _PromptRun, node_id: str, steps: int, seconds: float) -> None:
        """A sampler: progress per step; interrupts take effect between steps."""
        for step in range(1, steps + 1):
            await asyncio.sleep(seconds / steps)
            self._check_interrupt()
            self._progress(run, node_id, float(step), float(steps), "running")
            self._send("progress", {"value": step, "max": steps, "prompt_id": run.prompt_id, "node": node_id},
                       run.client_id)  # fmt: skip
            self._send_preview(run)

    def _send_preview(self, run: _PromptRun) -> None:
        if self.send_previews:
            preview = struct.pack(">I", PNG_FORMAT) + png_bytes(Image(8, 8, (64, 64, 64)))
            self._send(PREVIEW_IMAGE_EVENT, preview, run.client_id)

    async def _stay_frozen_if_asked(self, node_id: str, class_type: str) -> None:
        if self._freeze is None or self._freeze[0] not in (None, class_type) or self._freeze[1] not in (None, node_id):
            return
        self._frozen.set()
        log.info("comfyui_sim.node_frozen", node_id=node_id, class_type=class_type)
        await self._thaw.wait()

    def _raise_injected_error(self, run: _PromptRun, node_id: str, class_type: str) -> None:
        injected = run.injected
        if injected is None or not injected.matches(node_id, class_type):
            return
        run.injected = None
        if injected.prompts is not None:
            injected.prompts -= 1
        raise NodeError(injected.exception_message, injected.exception_type, EXECUTE_FRAMES)

    # --- output cache ------------------------------------------------------------------------

    def _signatures(self, prompt: dict[str, Any]) -> dict[str, str]:
        """Like ComfyUI's input signatures: same class and inputs, same upstream → same output. An upstream node
        counts by the digest of its signature, so a chain of nodes that each take the one before twice stays linear."""
        memo: dict[str, str] = {}

        def signature(node_id: str) -> str:
            if node_id not in memo:
                node = prompt[node_id]
                inputs = {
                    name: ["link", _digest(signature(v[0])), v[1]] if _is_link(v) and v[0] in prompt else v
                    for name, v in node["inputs"].items()
                }
                node_def = self.catalogue[node["class_type"]]
                changed = node_def.is_changed(node["inputs"], self._env) if node_def.is_changed else None
                memo[node_id] = json.dumps([node["class_type"], inputs, changed], sort_keys=True, default=str)
            return memo[node_id]

        return {node_id: signature(node_id) for node_id in prompt}

    def _keep_cache_for(self, run: _PromptRun) -> None:
        # ComfyUI's classic cache keeps only what the latest prompt used.
        used = set(run.signatures.values())
        self._state.cache = {k: v for k, v in self._state.cache.items() if k in used}


def _invalid_filename() -> web.Response:
    return web.Response(status=400, reason='Invalid filename. Please avoid special characters like :\\/*?"<>|')


def _file_info(path: str, relative_to: str) -> dict[str, Any]:
    """ComfyUI's user_manager.get_file_info."""
    return {
        "path": os.path.relpath(path, relative_to).replace(os.sep, "/"),
        "size": os.path.getsize(path),
        "modified": os.path.getmtime(path),
        "created": os.path.getctime(path),
    }


def _without_api_prefix(path: str) -> str:
    return path.removeprefix("/api") if path.startswith("/api/") else path


async def _send_catching(send: Any, message: Any) -> None:
    """ComfyUI's send_socket_catch_exception: a client gone mid-send is a warning, and the handler goes on."""
    try:
        await send(message)
    except (ConnectionError, aiohttp.ClientError) as error:
        log.warning(f"send error: {error}")


# --- command line --------------------------------------------------------------------------


def _seconds(text: str) -> float:
    """A finite number, 0 or more (of seconds or MB): nan, inf or below 0 ended the start in a traceback or served
    a history that never came."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, not {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, not {text!r}")
    return value


def _host(text: str) -> str:
    if not text.strip():  # aiohttp binds every interface to a blank host
        raise argparse.ArgumentTypeError("is empty: name the address to listen on")
    return text


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="comfyui-sim", description="ComfyUI 0.8.0 simulator; accepts ComfyUI's main.py arguments."
    )
    parser.add_argument("--listen", type=_host, nargs="?", const="0.0.0.0", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=8188)
    parser.add_argument("--output-directory", type=Path, default=Path("output"))
    parser.add_argument("--temp-directory", type=Path, default=None)
    parser.add_argument("--input-directory", type=Path, default=None)
    parser.add_argument("--extra-model-paths-config", nargs="+", action="append", default=[])
    parser.add_argument("--cache-none", action="store_true")
    parser.add_argument("--max-upload-size", type=_seconds, default=100, metavar="MB")
    sim = parser.add_argument_group("simulator")
    sim.add_argument("--node-seconds", action="append", default=[], metavar="CLASS=SECONDS")
    sim.add_argument("--default-node-seconds", type=_seconds, default=0.0)
    sim.add_argument("--history-lag", type=_seconds, default=0.05, metavar="SECONDS")
    sim.add_argument("--startup-delay", type=_seconds, default=0.0, metavar="SECONDS")
    sim.add_argument("--checkpoint", action="append", default=None, metavar="NAME")
    sim.add_argument("--send-previews", action="store_true")
    args, _ = parser.parse_known_args(argv)
    try:
        args.node_seconds = {k: _seconds(v) for k, v in (item.split("=", 1) for item in args.node_seconds)}
    except (ValueError, argparse.ArgumentTypeError):
        parser.error("--node-seconds takes CLASS=SECONDS, SECONDS a finite number, 0 or more")
    return args


def _render_plain(_logger: Any, _method: str, event: dict[str, Any]) -> str:
    message = str(event.pop("event"))
    return " ".join([message, *(f"{k}={v}" for k, v in event.items())])


async def _serve(args: argparse.Namespace, argv: list[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    for config in itertools.chain.from_iterable(args.extra_model_paths_config):
        log.info(f"Adding extra search path from {config}")
    # ComfyUI binds its port only after scanning nodes and models: until then, connection refused.
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.startup_delay)
        return
    except TimeoutError:
        pass
    sim = ComfyUISimulator(
        args.output_directory,
        args.temp_directory / "temp" if args.temp_directory else None,  # as ComfyUI: it appends "temp"
        input_dir=args.input_directory,
        node_seconds=args.node_seconds,
        default_node_seconds=args.default_node_seconds,
        history_lag_s=args.history_lag,
        checkpoints=tuple(args.checkpoint or ("broken.safetensors",)),
        send_previews=args.send_previews,
        cache_outputs=not args.cache_none,
        max_upload_size_mb=args.max_upload_size,
        argv=["main.py", *argv],
        records_kept=CLI_RECORDS_KEPT,
    )
    host = args.listen.split(",")[0]
    await sim.start(host, args.port)
    log.info("Starting server")
    log.info(f"To see the GUI go to: {sim.url}")
    await stop.wait()
    log.info("Stopping server")
    await sim.stop()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_args(argv)
    structlog.configure(
        processors=[structlog.processors.format_exc_info, _render_plain],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
    asyncio.run(_serve(args, argv))


if __name__ == "__main__":
    main()
