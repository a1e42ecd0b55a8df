"""The event reader keeps going through frames that are not ComfyUI events, and still finds its prompt's end."""

from __future__ import annotations

import json

import aiohttp

from worker.execution import PromptRun, RunTimings


class ScriptedEvents:
    client_id = "client"
    is_open = True

    def __init__(self, frames: list[aiohttp.WSMessage]) -> None:
        self.frames = frames

    async def receive(self, timeout_s: float | None = None) -> aiohttp.WSMessage:
        return self.frames.pop(0)

    async def close(self) -> None:
        self.is_open = False


def text(payload: object) -> aiohttp.WSMessage:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, data, None)


async def test_junk_frames_are_skipped_and_the_terminal_event_is_found():
    run = PromptRun(None, None, timeout_s=5, timings=RunTimings())  # type: ignore[arg-type]
    ours = run.prompt_id
    run.events = ScriptedEvents([
        text("not json"),
        text([1, 2, 3]),
        text({"type": "executing", "data": "a string"}),
        aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, b"\x00\x00\x00\x01png", None),
        text({"type": "execution_success", "data": {"prompt_id": "someone else's"}}),
        text({"type": "execution_error", "data": {"prompt_id": ours, "node_id": "7", "exception_message": "x"}}),
    ])
    terminal = await run._read_socket()
    assert terminal is not None and terminal.event == "execution_error" and terminal.data["node_id"] == "7"


async def test_a_closed_frame_is_a_drop():
    run = PromptRun(None, None, timeout_s=5, timings=RunTimings())  # type: ignore[arg-type]
    events = ScriptedEvents([aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None)])
    run.events = events
    assert await run._read_socket() is None
    assert events.is_open is False
