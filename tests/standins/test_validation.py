"""Every rejected body recorded from ComfyUI 0.8.0: same status, same JSON body, byte for byte."""

from __future__ import annotations

import json

import aiohttp
import pytest

from standins.comfyui import ComfyUISimulator

from .conftest import FIXTURES, collect_until_done, load_transcript, receive_json, submit

CASES = load_transcript("validation_errors")
JSON_CASES = [name for name, case in CASES.items() if "request_body" in case]


@pytest.mark.parametrize("case", JSON_CASES)
async def test_rejected_prompt_matches_the_recording(
    case: str, sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    recorded = CASES[case]
    async with http.post(f"{sim.url}/prompt", json=recorded["request_body"]) as response:
        body = await response.text()
    assert response.status == recorded["response"]["status"]
    assert json.loads(body) == recorded["response"]["body"]
    assert body == json.dumps(recorded["response"]["body"])  # key order too
    assert sim.prompts_received[-1].status == 400
    assert await queue_is_empty(http, sim.url)


async def test_non_json_body_gets_the_plain_500_page(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    recorded = CASES["not_json"]
    async with http.post(f"{sim.url}/prompt", data=recorded["request_body_raw"]) as response:
        assert response.status == recorded["response"]["status"]
        assert await response.text() == recorded["response"]["text"]


async def test_ui_graph_format_is_not_accepted(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    graph = json.loads((FIXTURES / "workflows" / "ui_graph_format.json").read_text())
    async with http.post(f"{sim.url}/prompt", json={"prompt": graph, "client_id": "c"}) as response:
        assert response.status == 500  # ComfyUI trips over the graph's non-node keys
    assert await queue_is_empty(http, sim.url)


async def test_fixture_workflows_validate_as_documented(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    workflows = FIXTURES / "workflows"
    expected = {
        "quick.json": (200, None),
        "slow.json": (200, None),
        "invalid_unknown_node.json": (400, "invalid_prompt"),
        "sdxl_txt2img.json": (400, "prompt_outputs_failed_validation"),
    }
    for name, (status, error_type) in expected.items():
        prompt = json.loads((workflows / name).read_text())
        async with http.post(f"{sim.url}/prompt", json={"prompt": prompt}) as response:
            body = await response.json()
        assert response.status == status, (name, body)
        if error_type:
            assert body["error"]["type"] == error_type
    sdxl = json.loads((workflows / "sdxl_txt2img.json").read_text())
    async with http.post(f"{sim.url}/prompt", json={"prompt": sdxl}) as response:
        errors = (await response.json())["node_errors"]["4"]["errors"]
    assert [e["type"] for e in errors] == ["value_not_in_list"]
    assert errors[0]["extra_info"]["input_name"] == "ckpt_name"


async def test_sdxl_workflow_runs_when_the_checkpoint_exists(tmp_path, fixtures_dir) -> None:
    sdxl = json.loads((fixtures_dir / "workflows" / "sdxl_txt2img.json").read_text())
    sim = ComfyUISimulator(tmp_path / "out", checkpoints=("sd_xl_base_1.0.safetensors",))
    async with sim, aiohttp.ClientSession() as http, http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await ws.receive_json()
        async with http.post(f"{sim.url}/prompt", json={"prompt": sdxl, "client_id": "c"}) as response:
            assert response.status == 200
        types = []
        while not types or types[-1] != ("executing", None):
            message = await ws.receive_json(timeout=5)
            types.append((message["type"], message["data"].get("node")))
    steps = [node for kind, node in types if kind == "progress"]
    assert steps == ["3"] * 25
    assert ("execution_success", None) in types
    assert sorted(p.name for p in sim.output_dir.iterdir()) == ["sdxl_00001_.png"]


async def queue_is_empty(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(f"{url}/queue") as response:
        return await response.json() == {"queue_running": [], "queue_pending": []}


async def test_body_not_an_object_is_judged_as_comfyui_does(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    # server.py uses `in` on the body: a list without "prompt" is a missing prompt; elsewhere Python fails (500).
    no_prompt = CASES["no_prompt_key"]["response"]
    invalid = CASES["unknown_node"]["request_body"]["prompt"]
    answers = []
    for body in (
        [],
        ["workflow"],
        ["front"],
        ["prompt"],
        "a prompt",
        7,
        None,
        {"prompt": invalid, "extra_data": [], "client_id": "c"},
    ):
        async with http.post(f"{sim.url}/prompt", json=body) as response:
            answers.append((response.status, await response.json() if response.status == 400 else None))
    assert answers == [(400, no_prompt["body"]), (400, no_prompt["body"])] + [(500, None)] * 6
    assert await queue_is_empty(http, sim.url)


async def test_partial_execution_targets_pick_the_outputs_to_run(
    sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    workflow = load_transcript("success")["workflow"]  # outputs: 3 SaveImage, 4 PreviewImage
    body = {"prompt": workflow, "partial_execution_targets": ["9"]}
    async with http.post(f"{sim.url}/prompt", json=body) as response:
        assert response.status == 400
        assert await response.json() == CASES["no_outputs"]["response"]["body"]
    async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        answer = await submit(http, sim.url, workflow, "c", partial_execution_targets=["4"])
        messages = await collect_until_done(ws, answer["prompt_id"])
    executed = [m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]]
    assert executed == ["1", "4"]
    async with http.get(f"{sim.url}/history/{answer['prompt_id']}") as response:
        entry = (await response.json())[answer["prompt_id"]]
    assert entry["prompt"][4] == ["4"]
    assert list(sim.output_dir.iterdir()) == []
