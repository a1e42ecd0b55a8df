"""A rerun with cached nodes, as ComfyUI 0.8.0's `execute_async` and `ExecutionList` do it: `execution_cached`
names every node whose output is cached, but only the outputs and the nodes an un-cached node needs are scheduled.
A cached upstream node is read from the cache and never mentioned again; a cached output node says "executed"
with its cached UI and finishes without starting, so its progress entry is ComfyUI's fresh one, in ints (1 of 1)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp

from standins.comfyui import ComfyUISimulator

from .conftest import collect_until_done, receive_json, submit

QUICK = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "workflows" / "quick.json").read_text())
CHAIN = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "chain"}},
}
FORK = {**CHAIN, "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


def changed(workflow: dict[str, Any], node_id: str, **inputs: Any) -> dict[str, Any]:
    workflow = copy.deepcopy(workflow)
    workflow[node_id]["inputs"].update(inputs)
    return workflow


async def rerun(sim: ComfyUISimulator, http: aiohttp.ClientSession, first: dict, second: dict) -> list[dict]:
    async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        await collect_until_done(ws, (await submit(http, sim.url, first, "c"))["prompt_id"])
        return await collect_until_done(ws, (await submit(http, sim.url, second, "c"))["prompt_id"])


def trace(messages: list[dict]) -> list[tuple]:
    """The execution messages in order, each with what it says about nodes."""
    steps: list[tuple] = []
    for message in messages:
        kind, data = message["type"], message["data"]
        if kind == "execution_cached":
            steps.append((kind, data["nodes"]))
        elif kind in ("executing", "executed"):
            steps.append((kind, data["node"]))
        elif kind == "progress_state":
            steps.append((kind, {n: (s["state"], s["value"], s["max"]) for n, s in data["nodes"].items()}))
        elif kind != "status":
            steps.append((kind,))
    return steps


def int_typed(messages: list[dict], node_id: str) -> bool:
    states = [m["data"]["nodes"].get(node_id) for m in messages if m["type"] == "progress_state"]
    states = [s for s in states if s is not None]
    return bool(states) and all(type(s["value"]) is int and type(s["max"]) is int for s in states)


async def test_a_fully_cached_rerun_replays_only_the_outputs(
    sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    messages = await rerun(sim, http, QUICK, QUICK)

    done = ("finished", 1, 1)
    # ComfyUI takes its outputs from a set, so 3 and 4 may come in either order there; the stand-in keeps the prompt's.
    assert trace(messages) == [
        ("execution_start",),
        ("execution_cached", ["1", "2", "3", "4"]),
        ("executed", "3"),
        ("progress_state", {"3": done}),
        ("executed", "4"),
        ("progress_state", {"3": done, "4": done}),
        ("execution_success",),
        ("executing", None),
    ]
    assert int_typed(messages, "3")
    assert int_typed(messages, "4")


async def test_a_changed_output_runs_alone_on_its_cached_input(
    sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    messages = await rerun(sim, http, CHAIN, changed(CHAIN, "3", filename_prefix="again"))

    assert trace(messages) == [
        ("execution_start",),
        ("execution_cached", ["1", "2"]),
        ("progress_state", {"3": ("running", 0.0, 1.0)}),
        ("executing", "3"),
        ("executed", "3"),
        ("progress_state", {"3": ("finished", 1.0, 1.0)}),
        ("execution_success",),
        ("executing", None),
    ]
    assert sorted(p.name for p in sim.output_dir.iterdir()) == ["again_00001_.png", "chain_00001_.png"]


async def test_a_changed_middle_node_runs_from_its_cached_source(
    sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    messages = await rerun(sim, http, FORK, changed(FORK, "2", blur_radius=2))

    preview = ("finished", 1, 1)
    assert trace(messages) == [
        ("execution_start",),
        ("execution_cached", ["1", "4"]),
        ("executed", "4"),
        ("progress_state", {"4": preview}),
        ("progress_state", {"4": preview, "2": ("running", 0.0, 1.0)}),
        ("executing", "2"),
        ("progress_state", {"4": preview, "2": ("finished", 1.0, 1.0)}),
        ("progress_state", {"4": preview, "2": ("finished", 1.0, 1.0), "3": ("running", 0.0, 1.0)}),
        ("executing", "3"),
        ("executed", "3"),
        ("progress_state", {"4": preview, "2": ("finished", 1.0, 1.0), "3": ("finished", 1.0, 1.0)}),
        ("execution_success",),
        ("executing", None),
    ]
    assert int_typed(messages, "4")
