"""Replays of the recorded ComfyUI 0.8.0 sessions: the simulator must send the same websocket
messages in the same order with the same data, and keep the same history and queue."""

from __future__ import annotations

import time

import aiohttp

from standins.comfyui import ComfyUISimulator

from .conftest import collect_until_done, load_transcript, normalize, normalize_history_entry, receive_json, submit


async def replay(sim: ComfyUISimulator, http: aiohttp.ClientSession, name: str) -> tuple[dict, list, dict]:
    recorded = load_transcript(name)
    client_id = recorded["client_id"]
    async with http.ws_connect(f"{sim.url}/ws?clientId={client_id}") as ws:
        first = await receive_json(ws)
        answer = await submit(http, sim.url, recorded["workflow"], client_id)
        messages = [first, *await collect_until_done(ws, answer["prompt_id"])]
    return recorded, messages, answer


def recorded_messages(recorded: dict) -> list[dict]:
    return [entry["msg"] for entry in recorded["ws_messages"]]


async def history_entry(http: aiohttp.ClientSession, url: str, prompt_id: str) -> dict:
    async with http.get(f"{url}/history/{prompt_id}") as response:
        return (await response.json())[prompt_id]


async def queue(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(f"{url}/queue") as response:
        return await response.json()


async def test_success_replays_the_recorded_messages(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    recorded, messages, answer = await replay(sim, http, "success")
    recorded_id = recorded["post_prompt"]["body"]["prompt_id"]

    assert answer.keys() == recorded["post_prompt"]["body"].keys()
    assert answer["node_errors"] == {}
    assert [m["type"] for m in messages] == [m["type"] for m in recorded_messages(recorded)]
    assert normalize(messages, answer["prompt_id"]) == normalize(recorded_messages(recorded), recorded_id)


async def test_success_history_queue_and_files(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    recorded, _, answer = await replay(sim, http, "success")
    prompt_id = answer["prompt_id"]
    recorded_id = recorded["post_prompt"]["body"]["prompt_id"]

    entry = await history_entry(http, sim.url, prompt_id)
    assert normalize_history_entry(entry, prompt_id) == normalize_history_entry(
        recorded["history"][recorded_id], recorded_id
    )
    assert entry["prompt"][0] == answer["number"]
    assert entry["prompt"][3]["client_id"] == recorded["client_id"]
    assert await queue(http, sim.url) == recorded["queue_after"]
    saved = sorted(p.name for p in sim.output_dir.iterdir())
    assert saved == ["capture_00001_.png", "capture_00002_.png"]
    assert (sim.output_dir / saved[0]).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    previews = [image["filename"] for image in entry["outputs"]["4"]["images"]]
    assert all((sim.temp_dir / name).is_file() for name in previews)


async def test_runtime_error_replays_the_recorded_messages(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    recorded, messages, answer = await replay(sim, http, "runtime_error")
    prompt_id = answer["prompt_id"]
    recorded_id = recorded["post_prompt"]["body"]["prompt_id"]

    assert normalize(messages, prompt_id) == normalize(recorded_messages(recorded), recorded_id)
    entry = await history_entry(http, sim.url, prompt_id)
    assert normalize_history_entry(entry, prompt_id) == normalize_history_entry(
        recorded["history"][recorded_id], recorded_id
    )
    assert "error" not in entry["status"]
    assert await queue(http, sim.url) == recorded["queue_after"]


async def test_interrupt_takes_effect_when_the_running_node_ends(tmp_path, fixtures_dir) -> None:
    recorded = load_transcript("interrupted")
    recorded_id = recorded["post_prompt"]["body"]["prompt_id"]
    client_id = recorded["client_id"]
    blur_s = 0.4
    sim = ComfyUISimulator(tmp_path / "out", node_seconds={"ImageBlur": blur_s}, history_lag_s=0.01)
    sim.freeze(node_id="2")  # the interrupt lands while node 2 runs however late this test gets to send it
    async with sim, aiohttp.ClientSession() as http, http.ws_connect(f"{sim.url}/ws?clientId={client_id}") as ws:
        messages = [await receive_json(ws)]
        answer = await submit(http, sim.url, recorded["workflow"], client_id)
        prompt_id = answer["prompt_id"]
        while not (messages[-1]["type"] == "executing" and messages[-1]["data"]["node"] == "2"):
            messages.append(await receive_json(ws))
        await sim.wait_until_frozen()
        async with http.post(f"{sim.url}/interrupt", json={"prompt_id": prompt_id}) as response:
            assert response.status == recorded["interrupt"]["status"]
            assert await response.text() == recorded["interrupt"]["text"]
        released_at = time.monotonic()
        sim.release()  # node 2 now runs its blur_s
        messages += await collect_until_done(ws, prompt_id)
        took_effect_after = time.monotonic() - released_at
        entry = await history_entry(http, sim.url, prompt_id)
        assert await queue(http, sim.url) == recorded["queue_after"]

    assert normalize(messages, prompt_id) == normalize(recorded_messages(recorded), recorded_id)
    assert took_effect_after >= blur_s, "the interrupt cut the running node short"
    assert normalize_history_entry(entry, prompt_id) == normalize_history_entry(
        recorded["history"][recorded_id], recorded_id
    )
    assert [i.honoured for i in sim.interrupts_received] == [True]


async def test_history_is_empty_until_finished_and_lags_success(tmp_path, fixtures_dir) -> None:
    recorded = load_transcript("success")
    sim = ComfyUISimulator(tmp_path / "out", node_seconds={"ImageInvert": 0.2}, history_lag_s=0.3)
    async with sim, aiohttp.ClientSession() as http, http.ws_connect(f"{sim.url}/ws?clientId=c1") as ws:
        await receive_json(ws)
        prompt_id = (await submit(http, sim.url, recorded["workflow"], "c1"))["prompt_id"]
        seen_while_running = []
        while True:
            message = await receive_json(ws)
            if message["type"] == "executing" and message["data"]["node"] == "2":
                async with http.get(f"{sim.url}/history/{prompt_id}") as response:
                    seen_while_running.append(await response.json())
                running = await queue(http, sim.url)
            if message["type"] == "execution_success":
                break
        async with http.get(f"{sim.url}/history/{prompt_id}") as response:
            right_after_success = await response.json()
        await collect_until_done(ws, prompt_id)
        async with http.get(f"{sim.url}/history/{prompt_id}") as response:
            after_final_executing = await response.json()

    assert seen_while_running == [{}]
    assert [item[1] for item in running["queue_running"]] == [prompt_id]
    assert right_after_success == {}
    assert after_final_executing[prompt_id]["status"]["status_str"] == "success"


async def test_unknown_prompt_history_is_empty(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    expected = load_transcript("other_endpoints")["GET /history/<unknown id>"]
    async with http.get(f"{sim.url}/history/no-such-id") as response:
        assert await response.json() == expected


async def test_prompts_run_one_at_a_time_in_order(tmp_path, fixtures_dir) -> None:
    workflow = load_transcript("success")["workflow"]
    sim = ComfyUISimulator(tmp_path / "out", default_node_seconds=0.02, cache_outputs=False)
    async with sim, aiohttp.ClientSession() as http, http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        first = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
        second = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
        pending = await queue(http, sim.url)
        messages = await collect_until_done(ws, first) + await collect_until_done(ws, second)

    assert [item[1] for item in pending["queue_running"] + pending["queue_pending"]] == [first, second]
    starts = [m["data"]["prompt_id"] for m in messages if m["type"] == "execution_start"]
    assert starts == [first, second]
    assert sorted(p.name for p in sim.output_dir.iterdir()) == [f"capture_0000{i}_.png" for i in range(1, 5)]


async def test_identical_prompt_is_served_from_cache(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    workflow = load_transcript("success")["workflow"]
    async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        first = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
        await collect_until_done(ws, first)
        second = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
        messages = await collect_until_done(ws, second)

    cached = next(m for m in messages if m["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["1", "2", "3", "4"]
    assert not [m for m in messages if m["type"] == "executing" and m["data"]["node"] is not None]
    async with http.get(f"{sim.url}/history/{second}") as response:
        outputs = (await response.json())[second]["outputs"]
    assert [i["filename"] for i in outputs["3"]["images"]] == ["capture_00001_.png", "capture_00002_.png"]
