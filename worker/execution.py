"""Run one workflow on ComfyUI and follow it to exactly one terminal outcome.

The websocket is the fast path; /history and /queue are the truth. When the socket drops the run
reconnects with the same clientId, and while it cannot, it polls over HTTP. A deadline interrupts the
prompt; a ComfyUI that answers nothing (HTTP or websocket) for too long loses the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
import structlog

from worker.comfyui import (
    JOB_ID_KEY,
    MAX_COMFYUI_MESSAGE_BYTES,
    MIN_QUESTION_S,
    ComfyUIClient,
    ComfyUIServerError,
    ComfyUIUnavailable,
    EventSocket,
    PromptsNotStopped,
    ReplyTooLarge,
    UploadRefused,
    UploadRefusedWorker,
    describe_prompt_error,
)
from worker.input_images import InputImage
from worker.replica_faults import replica_fault

log = structlog.get_logger()

T = TypeVar("T")

TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})
# The skipped outputs' warning quotes this much of ComfyUI's node_errors, which may run to its 32-MiB answer: a
# result carrying it all could pass the queue manager's limit, and its log line would be as long.
MAX_WARNING_CHARS = 4_000
# Python's words for an errno, before the file name a node chose ("[Errno 28] No space left on device: '...'").
_ERRNO_WORDS = re.compile(r"\[Errno -?\d+\] [^:']*")


@dataclass
class Outcome:
    status: str  # success | error | interrupted | timeout | lost
    prompt_id: str
    message: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)  # the results; if it failed, the files ComfyUI listed
    comfyui_queue_s: float | None = None
    execution_s: float = 0.0
    replica_fault: str | None = None  # what on this replica broke the run (worker/replica_faults.py)
    raised: str = ""  # with a replica_fault: what ComfyUI raised, without the text a user wrote (_raised)
    comfyui_stuck: bool = False  # a timed-out prompt ComfyUI did not stop: it holds ComfyUI's queue
    interrupt_failed: str | None = None  # with comfyui_stuck: why the worker could not interrupt it (None: ignored)
    warnings: list[str] = field(default_factory=list)
    # time.time() just before the prompt was sent: no file it wrote is older (a file of the same name that is,
    # in COMFYUI_OUTPUT_DIR, was not written by it). None for a prompt never sent.
    written_since: float | None = None
    # The nodes ComfyUI's cache replayed (`execution_cached`): the files it names for them an earlier prompt wrote.
    cached_nodes: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return self.status == "success"


@dataclass(frozen=True)
class RunTimings:
    check_interval_s: float = 5.0  # with a silent socket, confirm the prompt's state over HTTP this often
    poll_interval_s: float = 1.0  # HTTP polling pace while the socket is down
    lost_after_s: float = 30.0  # ComfyUI answered nothing (HTTP or websocket) this long: give up on the run
    lost_confirm_s: float = 2.0  # in neither queue nor history this long: the prompt is gone
    history_wait_s: float = 5.0  # /history can lag execution_success
    interrupt_wait_s: float = 10.0  # after POST /interrupt, how long to wait for ComfyUI to stop


class PromptLost(Exception):
    pass


class EventsTooLarge(ReplyTooLarge):
    """The prompt's `executed` events together past MAX_COMFYUI_MESSAGE_BYTES: the workflow's doing, as a history
    entry that large would be (it repeats them)."""

    def __init__(self) -> None:
        Exception.__init__(
            self, f"ComfyUI's `executed` events of the prompt are larger than "
            f"{MAX_COMFYUI_MESSAGE_BYTES / (1 << 20):g} MiB, the most the worker holds"
        )  # fmt: skip


@dataclass
class _Terminal:
    event: str
    data: dict[str, Any]
    history: dict[str, Any] | None = None
    settled: bool = False  # the finished marker (and, for a success, the history entry) was already waited for


def terminal_from_history(entry: dict[str, Any]) -> _Terminal:
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    if status.get("status_str") == "success":
        return _Terminal("execution_success", {}, entry)
    messages = status.get("messages") if isinstance(status.get("messages"), list) else []
    for message in reversed(messages):
        if not (isinstance(message, list) and len(message) == 2):
            continue  # not ComfyUI's [event, data]
        event, data = message
        if event in ("execution_error", "execution_interrupted"):
            return _Terminal(event, data if isinstance(data, dict) else {}, entry)
    return _Terminal("execution_error", {"exception_message": f"ComfyUI status {status.get('status_str')!r}"}, entry)


def cached_nodes(data: object) -> set[str]:
    """The node ids of an `execution_cached` message's data: those ComfyUI's cache answered for the prompt."""
    nodes = data.get("nodes") if isinstance(data, dict) else None
    return {str(node) for node in nodes} if isinstance(nodes, list) else set()


def cached_in_history(entry: dict[str, Any] | None) -> set[str]:
    """The nodes a history entry's `execution_cached` status message names (the websocket's may have been missed)."""
    status = entry.get("status") if isinstance(entry, dict) and isinstance(entry.get("status"), dict) else {}
    messages = status.get("messages") if isinstance(status.get("messages"), list) else []
    found: set[str] = set()
    for message in messages:
        if isinstance(message, list) and len(message) == 2 and message[0] == "execution_cached":
            found |= cached_nodes(message[1])
    return found


async def _nothing_to_note(_: InputImage) -> None:
    return None


class PromptRun:
    def __init__(
        self,
        comfy: ComfyUIClient,
        events: EventSocket,
        *,
        timeout_s: float,
        timings: RunTimings = RunTimings(),
        heartbeat: Callable[[], None] = lambda: None,
        beating: Callable[[], AbstractAsyncContextManager[None]] = contextlib.nullcontext,
        on_prompt_id: Callable[[str], None] = lambda _: None,
        on_queued: Callable[[PromptRun], None] = lambda _: None,
        on_uploaded: Callable[[InputImage], Awaitable[None]] = _nothing_to_note,
        job_id: str | None = None,
        own_folders: Sequence[Path] = (),
    ) -> None:
        self.comfy = comfy
        self.job_id = job_id
        self.own_folders = own_folders  # ComfyUI's output and temp folders, for replica_fault
        self.timeout_s = timeout_s
        self.timings = timings
        self.heartbeat = heartbeat
        self.beating = beating  # keeps the heartbeat fresh through the uploads and the submission
        self.on_prompt_id = on_prompt_id
        self.on_queued = on_queued
        self.on_uploaded = on_uploaded  # ComfyUI saved an image (before the next upload)
        self.events = events
        self.prompt_id = str(uuid.uuid4())
        self.number: int | None = None  # ComfyUI's number of the prompt, once queued (None if its answer was lost)
        self._submitted_at = 0.0
        self._sent_at: float | None = None  # time.time() just before POST /prompt (Outcome.written_since)
        self._started_at: float | None = None
        self._heard_at = time.monotonic()  # the last time ComfyUI answered anything, over HTTP or the websocket
        self._socket_heard_at = 0.0  # the last time the websocket brought a message
        self._executed_outputs: dict[str, Any] = {}  # node id -> output, in case the history entry never comes
        self._executed_sizes: dict[str, int] = {}  # node id -> bytes of the event its output came in
        self._executed_bytes = 0
        self._cached_nodes: set[str] = set()
        self._interrupt_sent = False
        self._interrupt_failed: str | None = None
        self._warnings: list[str] = []
        self.uploaded: list[InputImage] = []  # what ComfyUI saved (or may have) for this attempt, to delete once over

    @property
    def executed_outputs(self) -> dict[str, Any]:
        """The outputs the prompt's `executed` events named so far (node id -> output): its files, even when
        its history entry is lost with ComfyUI."""
        return dict(self._executed_outputs)

    @property
    def sent_at(self) -> float | None:
        """time.time() just before the prompt was sent (None before): no file it wrote is older."""
        return self._sent_at

    @property
    def heard_at(self) -> float:
        """When ComfyUI last answered this run anything, over HTTP or the websocket (time.monotonic)."""
        return self._heard_at

    async def run(self, workflow: dict[str, Any], images: Sequence[InputImage] = ()) -> Outcome:
        """Uploads ``images`` to ComfyUI's input folder, then queues the workflow. Raises UploadRefused or
        PromptRejected (4xx), or ComfyUIUnavailable (could not upload or submit); else one Outcome.

        Without a websocket (a proxy that refuses upgrades, say) the prompt is followed over HTTP alone."""
        async with self.beating():  # 16 images, each up to HTTP_TIMEOUT_S: slow, bounded, not wedged
            await self._upload(images)
        outcome = await self._run(workflow)
        outcome.written_since = self._sent_at
        return outcome

    async def _upload(self, images: Sequence[InputImage]) -> None:
        """Every attempt uploads them again: a retry may run on a replica that never had them."""
        if not images:
            return
        started = time.monotonic()
        for index, image in enumerate(images):
            try:
                await self.comfy.upload_image(image.filename, image.data, image.subfolder)
                self.uploaded.append(image)
                await self.on_uploaded(image)
            except UploadRefused as exc:
                raise UploadRefused(f"metadata.images[{index}] {image.name!r}: {exc}") from None
            except ComfyUIUnavailable as exc:
                unsaved = isinstance(exc, ComfyUIServerError | UploadRefusedWorker)
                if not unsaved and not isinstance(exc.__cause__, httpx.ConnectError):
                    self.uploaded.append(image)  # sent, its answer lost: ComfyUI may have saved it
                raise type(exc)(f"uploading metadata.images[{index}] {image.name!r}: {exc}") from None
        log.info("Input images uploaded to ComfyUI", images=len(images), bytes=sum(len(i.data) for i in images),
                 seconds=round(time.monotonic() - started, 3))

    async def _run(self, workflow: dict[str, Any]) -> Outcome:
        try:
            async with self.beating():
                await self.events.ensure_open()  # before POST /prompt, or its events are missed
        except ComfyUIUnavailable as exc:
            log.warning("ComfyUI websocket unavailable; following the prompt over HTTP", error=str(exc))
        try:
            self._sent_at = time.time()
            async with self.beating():  # a lost answer is looked for: up to three HTTP timeouts
                accepted = await self._submit(workflow)
            self._submitted_at = self._heard_at = time.monotonic()
            if accepted.get("node_errors"):
                skipped = describe_prompt_error({"error": {"message": "outputs that will not run"}, **accepted})
                if len(skipped) > MAX_WARNING_CHARS:
                    skipped = f"{skipped[:MAX_WARNING_CHARS]}… ({len(skipped)} characters)"
                log.warning("ComfyUI accepted the workflow but will skip invalid outputs", details=skipped)
                self._warnings.append(skipped.replace("ComfyUI rejected the workflow: ", "ComfyUI skipped ", 1))
            self.on_prompt_id(self.prompt_id)
            number = accepted.get("number")  # a float is a number a client chose, not ComfyUI's count
            self.number = number if isinstance(number, int) and not isinstance(number, bool) else None
            self.on_queued(self)
            log.info("Prompt queued in ComfyUI", prompt_id=self.prompt_id)
            try:
                async with asyncio.timeout(self.timeout_s):
                    terminal = await self._follow()
                    while not await self._confirmed(terminal):
                        terminal = await self._follow()
            except TimeoutError:
                return await self._after_deadline()
            return await self._outcome(terminal)
        except PromptLost as exc:
            return Outcome("lost", self.prompt_id, str(exc), execution_s=self._elapsed())
        except ReplyTooLarge as exc:
            await self.interrupt()  # in case it is still queued or running: it would run on for no one
            message = (f"{exc}: it repeats what the workflow sent and made (its inputs, a node's text output), "
                       "so the workflow made it that large")
            return Outcome("error", self.prompt_id, message, execution_s=self._elapsed())

    async def _submit(self, workflow: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.comfy.queue_prompt(workflow, self.events.client_id, self.prompt_id, job_id=self.job_id)
        except ComfyUIUnavailable:
            # The prompt id is ours, so a lost answer can be told from a lost request: ask ComfyUI.
            if not await self._known_to_comfyui():
                raise
            log.warning("The answer to POST /prompt was lost, but ComfyUI has the prompt; following it")
            return {}

    async def _known_to_comfyui(self) -> bool:
        try:
            running, pending = await self.comfy.queued_prompt_ids()
            return self.prompt_id in running | pending or await self.comfy.history(self.prompt_id) is not None
        except ComfyUIUnavailable:
            return False

    async def stop_earlier_attempts(self) -> set[str]:
        """Stop the prompts an earlier attempt of this job left in ComfyUI, its worker killed before it could:
        this attempt would queue behind them with its JOB_TIMEOUT_S running, and their results go to no one.
        Another worker's prompts for other jobs are left alone. Errors are logged: the submission reports them.
        The ids of those that were running, interrupted: ComfyUI writes their history entries once they stop."""
        if self.job_id is None:
            return set()
        try:
            running, pending = await self.comfy.stop_prompts_of(JOB_ID_KEY, self.job_id)
        except (ComfyUIUnavailable, ReplyTooLarge) as exc:
            log.warning("Could not look for prompts an earlier attempt left in ComfyUI", error=str(exc))
            return exc.running if isinstance(exc, PromptsNotStopped) else set()
        if running or pending:
            log.warning("Stopped prompts an earlier attempt of this job left in ComfyUI",
                        running=sorted(running), pending=sorted(pending))
        return running

    async def interrupt(self) -> str | None:
        """Ask ComfyUI to stop this prompt, running or pending. Errors are logged and returned, not raised; that of
        POST /interrupt itself (the prompt not asked to stop at all) is also kept in ``_interrupt_failed``."""
        self._interrupt_sent = True
        try:
            async with self.beating():
                try:
                    await self.comfy.interrupt(self.prompt_id)
                except ComfyUIUnavailable as exc:
                    self._interrupt_failed = str(exc)
                    raise
                await self.comfy.delete_pending(self.prompt_id)
        except ComfyUIUnavailable as exc:
            log.warning("Could not interrupt the prompt", prompt_id=self.prompt_id, error=str(exc))
            return str(exc)
        return None

    async def ended_after_interrupt(self) -> Outcome | None:
        """How the prompt ended once interrupted for a job that is no longer ours (cancelled, or taken back by
        its lease): ComfyUI still writes its history entry, and keeps the files its nodes made, which only
        housekeeping removes. None when it was never queued, was removed before it ran, or did not end within
        history_wait_s."""
        if not self._submitted_at:
            return None
        try:
            async with asyncio.timeout(self.timings.history_wait_s):
                while (entry := await self.comfy.history(self.prompt_id)) is None:
                    running, pending = await self.comfy.queued_prompt_ids()
                    if self.prompt_id not in running | pending:  # ended since the question above, or never ran
                        entry = await self.comfy.history(self.prompt_id)
                        break
                    await asyncio.sleep(self.timings.poll_interval_s / 10)
        except (TimeoutError, ComfyUIUnavailable, ReplyTooLarge):  # an entry too large to read is left in ComfyUI
            return None
        if entry is None:
            return None
        outputs = entry.get("outputs")
        outputs = outputs if isinstance(outputs, dict) else {}
        return Outcome("interrupted", self.prompt_id, outputs=outputs, written_since=self._sent_at)

    async def _follow(self) -> _Terminal:
        missing_since: float | None = None
        while True:
            self.heartbeat()
            deaf = False
            if self.events.is_open:
                listening_since = time.monotonic()
                terminal = await self._read_socket()
                if terminal is not None:
                    return terminal
                deaf = self.events.is_open and self._socket_heard_at < listening_since
            else:
                await self._reconnect()  # then ask over HTTP at once: events sent while away are lost
            try:
                entry = await self._ask(self.comfy.history(self.prompt_id))
                if entry is not None:
                    if deaf:  # it missed the prompt's end: ComfyUI forgot it (see docs/comfyui-simulator.md)
                        log.warning("ComfyUI's websocket missed the prompt's end; reconnecting for the next prompt",
                                    prompt_id=self.prompt_id)  # fmt: skip
                        await self.events.close()
                    return terminal_from_history(entry)
                running, pending = await self._ask(self.comfy.queued_prompt_ids())
                if self.prompt_id in running or self.prompt_id in pending:
                    missing_since = None
                else:
                    missing_since = missing_since or time.monotonic()
                    if time.monotonic() - missing_since >= self.timings.lost_confirm_s:
                        raise PromptLost(
                            "ComfyUI no longer knows the prompt (not queued, not in history): it was removed "
                            "or ComfyUI restarted"
                        )
            except ComfyUIUnavailable as exc:
                if time.monotonic() - self._heard_at >= self.timings.lost_after_s:
                    raise PromptLost(
                        f"ComfyUI stopped answering for {self.timings.lost_after_s:g} s during the job "
                        f"(process died or hung): {exc}"
                    ) from exc
            if not self.events.is_open or missing_since is not None:
                await asyncio.sleep(self.timings.poll_interval_s)

    async def _ask(self, question: Awaitable[T]) -> T:
        """One HTTP question, given only what is left of lost_after_s since ComfyUI last answered anything: a
        hung ComfyUI is given up lost_after_s after it went silent, not after a whole HTTP timeout on top.
        An answering ComfyUI (busy or not: it serves HTTP from its event loop while a prompt runs) restarts
        the count with each answer. ComfyUIUnavailable when no answer came in time."""
        left_s = self._heard_at + self.timings.lost_after_s - time.monotonic()
        try:
            async with asyncio.timeout(max(left_s, MIN_QUESTION_S)):
                answer = await question
        except TimeoutError:
            raise ComfyUIUnavailable(
                f"no answer within {max(left_s, MIN_QUESTION_S):.1f} s (nothing heard from ComfyUI for "
                f"{time.monotonic() - self._heard_at:.1f} s)"
            ) from None
        self._heard_at = time.monotonic()
        return answer

    async def _read_socket(self) -> _Terminal | None:
        """Messages until a terminal event (returned), a drop or check_interval_s (None): however busy the
        socket (previews, other prompts' events), the prompt's state is confirmed over HTTP that often."""
        check_at = time.monotonic() + self.timings.check_interval_s
        while (wait_s := check_at - time.monotonic()) > 0:
            try:
                message = await self.events.receive(wait_s)
            except TimeoutError:
                return None
            if message.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                self._heard_at = self._socket_heard_at = time.monotonic()
            if message.type == aiohttp.WSMsgType.BINARY:
                continue  # preview images
            if message.type != aiohttp.WSMsgType.TEXT:
                log.warning("ComfyUI websocket dropped; reconnecting", prompt_id=self.prompt_id)
                await self.events.close()
                return None
            self.heartbeat()
            try:
                event = json.loads(message.data)
            except ValueError:
                continue
            if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
                continue  # not an event of ComfyUI's shape: nothing to learn from it
            terminal = self._on_event(event.get("type"), event["data"], len(message.data))
            if terminal is not None:
                return terminal
            if self._is_finished_marker(event):
                return None  # finished but the terminal event was missed: history will say how
        return None

    def _is_finished_marker(self, event: dict[str, Any]) -> bool:
        data = event.get("data")
        return (
            event.get("type") == "executing" and isinstance(data, dict)
            and data.get("prompt_id") == self.prompt_id and data.get("node") is None
        )

    def _on_event(self, kind: str | None, data: dict[str, Any], size: int = 0) -> _Terminal | None:
        """What the event says of this prompt; EventsTooLarge when the outputs it would keep pass the bound (a
        custom node may send any number of `executed` events, each naming another node)."""
        if data.get("prompt_id") != self.prompt_id:
            return None
        if kind == "execution_start":
            self._started_at = time.monotonic()
        elif kind == "executing" and data.get("node") is not None:
            log.debug("Executing node", prompt_id=self.prompt_id, node=data.get("node"))
        elif kind == "executed" and isinstance(data.get("output"), dict):
            node = str(data.get("node"))
            self._executed_bytes += size - self._executed_sizes.get(node, 0)
            if self._executed_bytes > MAX_COMFYUI_MESSAGE_BYTES:
                raise EventsTooLarge
            self._executed_outputs[node], self._executed_sizes[node] = data["output"], size
        elif kind == "execution_cached":
            self._cached_nodes |= cached_nodes(data)
        elif kind in TERMINAL_EVENTS:
            return _Terminal(kind, data)
        return None

    async def _reconnect(self) -> None:
        with contextlib.suppress(ComfyUIUnavailable):
            await self.events.ensure_open(timeout_s=5.0)
            log.info("ComfyUI websocket reconnected", prompt_id=self.prompt_id)

    def _elapsed(self) -> float:
        return time.monotonic() - (self._started_at or self._submitted_at or time.monotonic())

    async def _after_deadline(self) -> Outcome:
        log.warning("Job deadline reached; interrupting the prompt", prompt_id=self.prompt_id, timeout_s=self.timeout_s)
        await self.interrupt()
        if (failed := self._interrupt_failed) is not None and await self._still_queued():
            return Outcome(
                "timeout", self.prompt_id, f"Job timed out after {self.timeout_s:g} s (JOB_TIMEOUT_S); the worker "
                f"could not interrupt it ({failed}), so ComfyUI runs it on", execution_s=self._elapsed(),
                comfyui_stuck=True, interrupt_failed=failed, outputs=dict(self._executed_outputs),
            )  # fmt: skip
        stuck = False
        try:
            async with asyncio.timeout(self.timings.interrupt_wait_s):
                terminal = await self._follow()
        except TimeoutError:
            wait_s = self.timings.interrupt_wait_s
            how = f"ComfyUI did not stop it within {wait_s:g} s (a node that cannot be interrupted)"
            stuck = True
        except PromptLost:
            how = "it was removed from ComfyUI's queue before it started"
        else:
            if terminal.event == "execution_success":
                return await self._outcome(terminal)  # it finished just as the deadline passed: deliver it
            if terminal.history is None:
                await self._wait_for_finished_marker()
            node, node_type = terminal.data.get("node_id"), terminal.data.get("node_type")
            how = f"ComfyUI stopped it at node {node} ({node_type})" if node else "ComfyUI stopped it"
        return Outcome(
            "timeout", self.prompt_id, f"Job timed out after {self.timeout_s:g} s (JOB_TIMEOUT_S); {how}",
            execution_s=self._elapsed(), comfyui_stuck=stuck, outputs=dict(self._executed_outputs),
        )

    async def _still_queued(self) -> bool:
        """Whether ComfyUI still runs or queues the prompt; True when it does not say."""
        try:
            running, pending = await self._ask(self.comfy.queued_prompt_ids())
        except ComfyUIUnavailable:
            return True
        return self.prompt_id in running | pending

    async def _confirmed(self, terminal: _Terminal) -> bool:
        """False when ComfyUI still runs or queues the prompt whose end the websocket announced, with neither the
        finished marker nor (for a success) the history entry following: a custom node sent the event (any node
        may), and the prompt's real end is still to come. Without this the job ended as a success with the
        outputs seen so far, or a failure the node made up, while its prompt ran on."""
        if terminal.history is not None:
            return True
        ended = await self._wait_for_finished_marker()
        if terminal.event == "execution_success":
            terminal.history = await self._wait_for_history()
            ended = terminal.history is not None
        terminal.settled = True
        if ended:
            return True
        with contextlib.suppress(ComfyUIUnavailable):
            running, pending = await self._ask(self.comfy.queued_prompt_ids())
            if self.prompt_id in running | pending:
                log.warning("ComfyUI still runs the prompt its websocket said had ended; following it on",
                            prompt_id=self.prompt_id, announced=terminal.event)  # fmt: skip
                return False
        return True

    async def _outcome(self, terminal: _Terminal) -> Outcome:
        queue_s = self._started_at - self._submitted_at if self._started_at else None
        outcome = Outcome(
            "success", self.prompt_id, comfyui_queue_s=queue_s, execution_s=self._elapsed(), warnings=self._warnings
        )
        data = terminal.data
        self._cached_nodes |= cached_in_history(terminal.history)
        if terminal.history is None and not terminal.settled:  # the prompt is over once its history is written
            await self._wait_for_finished_marker()
        if terminal.event == "execution_success":
            entry = terminal.history
            if entry is None and not terminal.settled:
                entry = await self._wait_for_history()
            self._cached_nodes |= cached_in_history(entry)
            outputs = entry.get("outputs") if entry else None
            if entry is None or (outputs is not None and not isinstance(outputs, dict)):
                log.warning("History never appeared or has no outputs object; using outputs from websocket events",
                            prompt_id=self.prompt_id)
                outcome.outputs = dict(self._executed_outputs)
            else:
                outcome.outputs = outputs or {}
        elif terminal.event == "execution_error":
            outcome.status = "error"
            outcome.outputs = self._listed_before_failing(terminal)
            full_type = str(data.get("exception_type") or "Error")
            exc_message = str(data.get("exception_message") or "").strip()
            outcome.message = (
                f"ComfyUI execution error in node {data.get('node_id')} ({data.get('node_type')}): "
                f"{full_type.rsplit('.', 1)[-1]}: {exc_message}"
            )
            outcome.replica_fault = replica_fault(full_type, exc_message, self.own_folders)
            if outcome.replica_fault:
                outcome.raised = _raised(full_type, exc_message)
        else:
            outcome.status = "interrupted"
            outcome.outputs = self._listed_before_failing(terminal)
            by = "by this worker" if self._interrupt_sent else "by someone else (ComfyUI UI or API)"
            outcome.message = (
                f"The prompt was interrupted {by} at node {data.get('node_id')} ({data.get('node_type')})"
            )
        outcome.cached_nodes = frozenset(self._cached_nodes)
        return outcome

    def _listed_before_failing(self, terminal: _Terminal) -> dict[str, Any]:
        """The files of the nodes that ran before the prompt failed: not results, but ComfyUI's files to tidy."""
        outputs = terminal.history.get("outputs") if terminal.history else None
        return outputs if isinstance(outputs, dict) else dict(self._executed_outputs)

    async def _wait_for_finished_marker(self) -> bool:
        """ComfyUI writes the history entry, then sends `executing {node: null}`: waiting for it beats polling.
        True when it came within history_wait_s."""
        if not self.events.is_open:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timings.history_wait_s):
                while True:
                    message = await self.events.receive()
                    if message.type == aiohttp.WSMsgType.BINARY:
                        continue
                    if message.type != aiohttp.WSMsgType.TEXT:
                        return False
                    with contextlib.suppress(ValueError):
                        if self._is_finished_marker(json.loads(message.data)):
                            return True
        return False

    async def _wait_for_history(self) -> dict[str, Any] | None:
        deadline = time.monotonic() + self.timings.history_wait_s
        delay = 0.02
        while time.monotonic() < deadline:
            try:
                entry = await self.comfy.history(self.prompt_id)
            except ComfyUIUnavailable:
                entry = None
            if entry is not None:
                return entry
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        return None


def _raised(exception_type: str, exception_message: str) -> str:
    """A replica fault's exception without what a user wrote: its type, then Python's errno words (not the file
    name after them, which a node's filename_prefix chose) or CUDA's own error string (the first line)."""
    first_line = exception_message.strip().split("\n", 1)[0]
    words = _ERRNO_WORDS.match(first_line)
    return f"{exception_type.rsplit('.', 1)[-1]}: {words[0].rstrip() if words else first_line[:200]}"
