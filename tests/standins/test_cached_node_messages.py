"""A cached node's websocket messages: ComfyUI 0.8.0's `execute` sends "executed" for every cached node it
reaches, with output null when the node has no UI output, while a node that runs says "executed" only with a UI."""

from __future__ import annotations

import aiohttp

from standins.comfyui import ComfyUISimulator
from standins.comfyui_nodes import NodeDef, NodeResult

from .conftest import collect_until_done, receive_json, submit

# A custom output node that writes somewhere of its own and returns no UI, as custom nodes may.
SILENT_OUTPUT = NodeDef(
    "SilentOutput", "Silent Output", "utils", {"text": ("STRING", {"multiline": False})}, (),
    lambda _inputs, _env: NodeResult(()), output_node=True,
)  # fmt: skip
WORKFLOW = {"1": {"class_type": "SilentOutput", "inputs": {"text": "hello"}}}


def executed(messages: list[dict]) -> list[dict]:
    return [m["data"] for m in messages if m["type"] == "executed"]


async def test_a_cached_node_without_ui_output_says_executed_with_null_output(
    sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    sim.catalogue[SILENT_OUTPUT.name] = SILENT_OUTPUT
    async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        first = (await submit(http, sim.url, WORKFLOW, "c"))["prompt_id"]
        ran = await collect_until_done(ws, first)
        second = (await submit(http, sim.url, WORKFLOW, "c"))["prompt_id"]
        replayed = await collect_until_done(ws, second)

    assert executed(ran) == []
    assert next(m for m in replayed if m["type"] == "execution_cached")["data"]["nodes"] == ["1"]
    assert executed(replayed) == [{"node": "1", "display_node": "1", "output": None, "prompt_id": second}]
