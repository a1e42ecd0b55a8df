"""A rerun with cached nodes, replayed from ComfyUI 0.8.0 recordings (tests/fixtures/comfyui-0.8.0/cached_rerun_*).
As its `execute_async` and `ExecutionList` do: `execution_cached` names every node whose output is cached, but only
the outputs and the nodes an un-cached node needs are scheduled. A cached upstream node is read from the cache and
never mentioned again; a cached output says "executed" with its cached UI and finishes without starting, so its
progress entry is ComfyUI's fresh one, in ints (1 of 1)."""

from __future__ import annotations

from typing import Any

import aiohttp

from standins.comfyui import ComfyUISimulator

from .conftest import collect_until_done, load_transcript, normalize, normalize_history_entry, receive_json, submit

RAN = ("finished", 1.0, 1.0)
CACHED = ("finished", 1, 1)
RUNNING = ("running", 0.0, 1.0)


async def rerun(sim: ComfyUISimulator, http: aiohttp.ClientSession, recorded: dict) -> tuple[list, list, str]:
    """The recording's first workflow, then its rerun, on one websocket: both runs' messages and the rerun's id."""
    client_id = recorded["client_id"]
    async with http.ws_connect(f"{sim.url}/ws?clientId={client_id}") as ws:
        hello = await receive_json(ws)
        first_id = (await submit(http, sim.url, recorded["first_workflow"], client_id))["prompt_id"]
        first = [hello, *await collect_until_done(ws, first_id)]
        prompt_id = (await submit(http, sim.url, recorded["workflow"], client_id))["prompt_id"]
        return first, await collect_until_done(ws, prompt_id), prompt_id


async def replays(sim: ComfyUISimulator, http: aiohttp.ClientSession, name: str) -> list[dict]:
    """Replays the recording `name` and checks every message of both runs and the rerun's history against it."""
    recorded = load_transcript(name)
    first, messages, prompt_id = await rerun(sim, http, recorded)
    first_recorded = [m["msg"] for m in recorded["first_ws_messages"]]
    recorded_id = recorded["post_prompt"]["body"]["prompt_id"]
    assert normalize(first, started(first)) == normalize(first_recorded, started(first_recorded))
    assert normalize(messages, prompt_id) == normalize([m["msg"] for m in recorded["ws_messages"]], recorded_id)
    async with http.get(f"{sim.url}/history/{prompt_id}") as response:
        entry = (await response.json())[prompt_id]
    assert outputs_unordered(normalize_history_entry(entry, prompt_id)) == outputs_unordered(
        normalize_history_entry(recorded["history"][recorded_id], recorded_id)
    )
    return messages


def started(messages: list[dict]) -> str:
    return next(m["data"]["prompt_id"] for m in messages if m["type"] == "execution_start")


def outputs_unordered(entry: dict[str, Any]) -> dict[str, Any]:
    # ComfyUI's list of outputs to execute comes from a set: its order differs from one server process to the next.
    entry["prompt"][4] = sorted(entry["prompt"][4])
    return entry


def trace(messages: list[dict]) -> list[tuple]:
    """The execution messages in order, each with what it says about nodes; progress values keep their JSON type."""
    steps: list[tuple] = []
    for message in messages:
        kind, data = message["type"], message["data"]
        if kind == "execution_cached":
            steps.append((kind, data["nodes"]))
        elif kind in ("executing", "executed"):
            steps.append((kind, data["node"]))
        elif kind == "progress_state":
            steps.append(progress({n: (s["state"], s["value"], s["max"]) for n, s in data["nodes"].items()}))
        elif kind != "status":
            steps.append((kind,))
    return steps


def progress(nodes: dict[str, tuple]) -> tuple:
    """A progress_state step: each node's (state, value, max) with the types of value and max (1 is not 1.0 in JSON)."""
    return ("progress_state", {n: (*state, *map(type, state[1:])) for n, state in nodes.items()})


async def test_a_fully_cached_rerun_replays_only_the_outputs(
    sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    messages = await replays(sim, http, "cached_rerun_all")

    assert trace(messages) == [
        ("execution_start",),
        ("execution_cached", ["1", "2", "3", "4"]),
        ("executed", "3"),
        progress({"3": CACHED}),
        ("executed", "4"),
        progress({"3": CACHED, "4": CACHED}),
        ("execution_success",),
        ("executing", None),
    ]


async def test_a_changed_output_runs_alone_on_its_cached_input(
    sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    messages = await replays(sim, http, "cached_rerun_output_changed")

    assert trace(messages) == [
        ("execution_start",),
        ("execution_cached", ["1", "2"]),
        progress({"3": RUNNING}),
        ("executing", "3"),
        ("executed", "3"),
        progress({"3": RAN}),
        ("execution_success",),
        ("executing", None),
    ]
    assert sorted(p.name for p in sim.output_dir.iterdir()) == ["again_00001_.png", "chain_00001_.png"]


async def test_a_changed_middle_node_runs_from_its_cached_source(
    sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    messages = await replays(sim, http, "cached_rerun_middle_changed")

    assert trace(messages) == [
        ("execution_start",),
        ("execution_cached", ["1", "4"]),
        ("executed", "4"),
        progress({"4": CACHED}),
        progress({"4": CACHED, "2": RUNNING}),
        ("executing", "2"),
        progress({"4": CACHED, "2": RAN}),
        progress({"4": CACHED, "2": RAN, "3": RUNNING}),
        ("executing", "3"),
        ("executed", "3"),
        progress({"4": CACHED, "2": RAN, "3": RAN}),
        ("execution_success",),
        ("executing", None),
    ]
