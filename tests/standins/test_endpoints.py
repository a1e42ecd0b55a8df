"""The other endpoints: system_stats, object_info, queue, history, interrupt, free, view, /api."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from standins.comfyui import ComfyUISimulator

from .conftest import collect_until_done, load_transcript, receive_json, submit

OTHER = load_transcript("other_endpoints")


@pytest.mark.parametrize("prefix", ["", "/api"])
async def test_system_stats_shape(prefix: str, sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    recorded = OTHER["GET /system_stats"]
    async with http.get(f"{sim.url}{prefix}/system_stats") as response:
        stats = await response.json()
    assert stats.keys() == recorded.keys()
    assert stats["system"].keys() == recorded["system"].keys()
    assert stats["system"]["comfyui_version"] == "0.8.0"
    assert stats["devices"][0].keys() == recorded["devices"][0].keys()
    assert stats["devices"][0]["type"] == "cpu"


async def test_idle_queue_and_object_info(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/api/queue") as response:
        assert await response.json() == OTHER["GET /queue (idle)"]
    async with http.get(f"{sim.url}/object_info/EmptyImage") as response:
        assert await response.json() == OTHER["GET /object_info/EmptyImage"]
    async with http.get(f"{sim.url}/object_info/NoSuchNode") as response:
        assert await response.json() == {}
    async with http.get(f"{sim.url}/object_info") as response:
        catalogue = await response.json()
    assert catalogue["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["broken.safetensors"]
    assert {"SaveImage", "PreviewImage", "ImageBlur", "KSampler", "VAEDecode"} <= catalogue.keys()


async def test_view_serves_outputs_and_refuses_traversal(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    workflow = load_transcript("success")["workflow"]
    async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        prompt_id = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
        await collect_until_done(ws, prompt_id)
    async with http.get(f"{sim.url}/history/{prompt_id}") as response:
        outputs = (await response.json())[prompt_id]["outputs"]
    for image in outputs["3"]["images"] + outputs["4"]["images"]:
        async with http.get(f"{sim.url}/view", params=image) as response:
            assert response.status == 200
            assert response.content_type == "image/png"
            folder = sim.output_dir if image["type"] == "output" else sim.temp_dir
            assert await response.read() == (folder / image["filename"]).read_bytes()

    refused = [
        ({"filename": "missing.png", "type": "output"}, 404),
        ({"filename": "../secret.png", "type": "output"}, 400),
        ({"filename": "/etc/passwd", "type": "output"}, 400),
        ({"filename": "capture_00001_.png", "subfolder": "../..", "type": "output"}, 403),
        ({"filename": "capture_00001_.png", "type": "nonsense"}, 400),
    ]
    for params, status in refused:
        async with http.get(f"{sim.url}/api/view", params=params) as response:
            assert response.status == status, params


async def test_view_reads_a_folder_tag_as_comfyui_does(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    # folder_paths.annotated_filepath: endswith("[output]") (no space needed), then the last 9 characters go; a
    # single tag is read, and it overrides `type`.
    (sim.output_dir / "a.png").write_bytes(b"in output")
    (sim.temp_dir / "a.png").write_bytes(b"in temp")
    answers = {}
    for filename in ("a.png [output]", "a.png_[output]", "a.png[output]", "a.png_[temp]", "a.png [temp] [output]"):
        async with http.get(f"{sim.url}/view", params={"filename": filename, "type": "input"}) as response:
            answers[filename] = (response.status, await response.read() if response.status == 200 else None)
    assert answers == {
        "a.png [output]": (200, b"in output"),
        "a.png_[output]": (200, b"in output"),
        "a.png[output]": (404, None),  # looks for "a.pn"
        "a.png_[temp]": (200, b"in temp"),
        "a.png [temp] [output]": (404, None),  # looks for "a.png [temp]" in the output folder
    }


async def test_queue_delete_history_delete_and_free(tmp_path, fixtures_dir) -> None:
    workflow = load_transcript("success")["workflow"]
    sim = ComfyUISimulator(tmp_path / "out", history_lag_s=0.0, cache_outputs=False)
    async with sim, aiohttp.ClientSession() as http, http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        sim.freeze(class_type="EmptyImage")
        first = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
        second = (await submit(http, sim.url, workflow, "c", prompt_id="my-own-id"))["prompt_id"]
        await sim.wait_until_frozen()
        async with http.post(f"{sim.url}/queue", json={"delete": [second]}) as response:
            assert response.status == 200
        async with http.get(f"{sim.url}/queue") as response:
            queue = await response.json()
        async with http.post(f"{sim.url}/free", json={"unload_models": True, "free_memory": True}) as response:
            assert response.status == 200
        sim.release()
        await collect_until_done(ws, first)
        async with http.post(f"{sim.url}/history", json={"delete": [first]}) as response:
            assert response.status == 200
        async with http.get(f"{sim.url}/history") as response:
            history = await response.json()

    assert second == "my-own-id"
    assert [item[1] for item in queue["queue_running"]] == [first]
    assert queue["queue_pending"] == []
    assert history == {}
    assert sim.free_requests == [{"unload_models": True, "free_memory": True}]


async def test_interrupt_for_another_prompt_is_ignored(tmp_path, fixtures_dir) -> None:
    workflow = load_transcript("interrupted")["workflow"]
    sim = ComfyUISimulator(tmp_path / "out", node_seconds={"ImageBlur": 0.1}, history_lag_s=0.0)
    async with sim, aiohttp.ClientSession() as http, http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        prompt_id = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
        async with http.post(f"{sim.url}/interrupt", json={"prompt_id": "someone-else"}):
            pass
        messages = await collect_until_done(ws, prompt_id)
    assert "execution_success" in [m["type"] for m in messages]
    assert sim.interrupts_received[0].body == {"prompt_id": "someone-else"}
    assert not sim.interrupts_received[0].honoured


async def test_interrupt_without_body_stops_whatever_runs(tmp_path, fixtures_dir) -> None:
    workflow = load_transcript("interrupted")["workflow"]
    sim = ComfyUISimulator(tmp_path / "out", node_seconds={"ImageBlur": 0.1}, history_lag_s=0.0)
    async with sim, aiohttp.ClientSession() as http, http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        prompt_id = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
        async with http.post(f"{sim.url}/interrupt"):
            pass
        messages = await collect_until_done(ws, prompt_id)
    interrupted = next(m for m in messages if m["type"] == "execution_interrupted")
    assert interrupted["data"]["node_type"] in {"EmptyImage", "ImageBlur"}
    assert sim.interrupts_received[0].body == {}


async def test_previews_are_binary_frames(tmp_path, fixtures_dir) -> None:
    workflow = load_transcript("success")["workflow"]
    sim = ComfyUISimulator(tmp_path / "out", send_previews=True)
    async with sim, aiohttp.ClientSession() as http, http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        prompt_id = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
        frames = []
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type == aiohttp.WSMsgType.BINARY:
                frames.append(msg.data)
            elif msg.json()["type"] == "executing" and msg.json()["data"]["node"] is None:
                break
    assert len(frames) == 4
    assert all(frame[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02" and frame[8:12] == b"\x89PNG" for frame in frames)
    assert prompt_id


async def test_a_long_running_simulator_keeps_only_the_latest_records(tmp_path, http):
    """Run as a process (the demo), it kept every prompt, with its whole workflow, for as long as it ran."""
    sim = ComfyUISimulator(tmp_path / "output", records_kept=2)
    await sim.start()
    try:
        sent = []
        for color in range(5):
            workflow = {
                "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "r"}},
            }
            sent.append((await submit(http, sim.url, workflow, "c"))["prompt_id"])
            async with http.post(f"{sim.url}/history", json={"delete": [sent[-1]]}) as answer:
                assert answer.status == 200
        assert [prompt.prompt_id for prompt in sim.prompts_received] == sent[-2:]
        assert sim.history_deletes == sent[-2:]
    finally:
        await sim.stop()


# ComfyUI 0.8.0's POST /history runs `"clear" in body`, `body["clear"]`, `"delete" in body` and
# `for id in body["delete"]: history.pop(id, None)` on whatever JSON it got; a TypeError on the way answers 500, and
# what it did before stays done. (body, status, history entries left of p1 and p2)
HISTORY_POSTS = [
    ("not json", 500, {"p1", "p2"}),
    ("", 500, {"p1", "p2"}),
    ("[]", 200, {"p1", "p2"}),
    ('["p1"]', 200, {"p1", "p2"}),  # a list: `in` looks for an element named "clear" or "delete"
    ('["clear"]', 500, {"p1", "p2"}),  # found; then list["clear"]: TypeError
    ('["delete", "p1"]', 500, {"p1", "p2"}),
    ('"clear"', 500, {"p1", "p2"}),  # a string: `in` is a substring test; then str["clear"]: TypeError
    ('"please delete p1"', 500, {"p1", "p2"}),
    ('"p1"', 200, {"p1", "p2"}),
    ("5", 500, {"p1", "p2"}),  # a number, a boolean, null: `in` raises
    ("1.5", 500, {"p1", "p2"}),
    ("true", 500, {"p1", "p2"}),
    ("null", 500, {"p1", "p2"}),
    ("{}", 200, {"p1", "p2"}),
    ('{"clear": true}', 200, set()),
    ('{"clear": 0}', 200, {"p1", "p2"}),
    ('{"delete": ["p1"]}', 200, {"p2"}),
    ('{"delete": "p1"}', 200, {"p1", "p2"}),  # iterates the characters "p" and "1"
    ('{"delete": 5}', 500, {"p1", "p2"}),
    ('{"delete": ["p1", ["p2"]]}', 500, {"p2"}),  # p1 went before the unhashable list raised
    ('{"clear": true, "delete": 5}', 500, set()),  # cleared before the TypeError
]


@pytest.mark.parametrize(("body", "status", "left"), HISTORY_POSTS)
async def test_history_post_does_what_comfyui_does_with_any_json(
    body: str, status: int, left: set[str], sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    workflow = load_transcript("success")["workflow"]
    for prompt_id in ("p1", "p2"):
        await submit(http, sim.url, workflow, "c", prompt_id=prompt_id)
    await wait_for_history(http, sim.url, {"p1", "p2"})

    async with http.post(f"{sim.url}/history", data=body, headers={"Content-Type": "application/json"}) as answer:
        assert answer.status == status
        if status == 500:
            assert await answer.text() == load_transcript("validation_errors")["not_json"]["response"]["text"]
    async with http.get(f"{sim.url}/history") as response:
        assert set(await response.json()) == left


async def wait_for_history(http: aiohttp.ClientSession, url: str, prompt_ids: set[str]) -> None:
    for _ in range(200):
        async with http.get(f"{url}/history") as response:
            if set(await response.json()) == prompt_ids:
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"history never held {prompt_ids}")


@pytest.mark.parametrize(
    ("body", "status"),
    [("[]", 200), ('"clear"', 500), ('"x"', 200), ("5", 500), ('{"delete": 5}', 500), ('{"clear": true}', 200)],
)
async def test_queue_post_does_what_comfyui_does_with_any_json(
    body: str, status: int, sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    """POST /queue reads its body as POST /history does (above)."""
    async with http.post(f"{sim.url}/queue", data=body, headers={"Content-Type": "application/json"}) as answer:
        assert answer.status == status


@pytest.mark.parametrize(
    ("max_upload_size_mb", "max_upload_size"), [(100, "104857600"), (0.5, "524288.0"), (100.0, "104857600.0")]
)
async def test_feature_flags_answer_is_comfyuis(
    max_upload_size_mb: float, max_upload_size: str, tmp_path, http: aiohttp.ClientSession
) -> None:
    # comfy_api/feature_flags.py SERVER_FEATURE_FLAGS; --max-upload-size is a float when given, 100 (an int) if not.
    sim = ComfyUISimulator(tmp_path / "out", max_upload_size_mb=max_upload_size_mb)
    async with sim, http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        answer = await ws.receive(timeout=5)
    assert answer.data == (
        '{"type": "feature_flags", "data": {"supports_preview_metadata": true, '
        f'"max_upload_size": {max_upload_size}, "extension": {{"manager": {{"supports_v4": true}}}}}}}}'
    )


async def test_unreadable_client_text_leaves_the_socket_open(
    sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    # ComfyUI logs text it cannot read and goes on; such a message does not count as the first one. Python's
    # json refuses an integer of over 4300 digits (ValueError) and nesting past its recursion limit (RecursionError).
    async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        for text in ("not json", "[]", "1" * 5000, "[" * 100_000 + "]" * 100_000):
            await ws.send_str(text)
        await ws.send_json({"type": "feature_flags", "data": {}})
        assert (await receive_json(ws))["type"] == "feature_flags"
        prompt_id = (await submit(http, sim.url, load_transcript("success")["workflow"], "c"))["prompt_id"]
        messages = await collect_until_done(ws, prompt_id)
    assert "execution_success" in [m["type"] for m in messages]
