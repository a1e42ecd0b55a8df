"""Fault hooks the worker tests rely on: dropped sockets, crashes, runtime errors, frozen nodes."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from standins.comfyui import ComfyUISimulator

from .conftest import collect_until_done, load_transcript, receive_json, submit


async def test_drop_websockets_then_reconnect_with_same_client_id(tmp_path, fixtures_dir) -> None:
    workflow = load_transcript("interrupted")["workflow"]
    sim = ComfyUISimulator(tmp_path / "out", node_seconds={"ImageBlur": 0.3}, history_lag_s=0.0)
    async with sim, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{sim.url}/ws?clientId=w1") as ws:
            await receive_json(ws)
            prompt_id = (await submit(http, sim.url, workflow, "w1"))["prompt_id"]
            while (await receive_json(ws))["type"] != "executing":
                pass
            await sim.drop_websockets()
            closing = await ws.receive(timeout=5)
            while closing.type == aiohttp.WSMsgType.TEXT:  # what was already in flight
                closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
        async with http.ws_connect(f"{sim.url}/ws?clientId=w1") as ws:
            hello = await receive_json(ws)
            resumed = await receive_json(ws)
            messages = await collect_until_done(ws, prompt_id)
        async with http.get(f"{sim.url}/history/{prompt_id}") as response:
            entry = (await response.json())[prompt_id]

    assert hello["data"] == {"status": {"exec_info": {"queue_remaining": 1}}, "sid": "w1"}
    assert resumed == {"type": "executing", "data": {"node": resumed["data"]["node"]}}
    assert "execution_success" in [m["type"] for m in messages]
    assert entry["status"]["status_str"] == "success"
    assert sim.ws_connections["w1"] == 2


async def test_an_older_socket_closing_after_a_reconnect_deafens_the_newer_one(tmp_path, fixtures_dir) -> None:
    # ComfyUI's websocket_handler ends with `self.sockets.pop(sid, None)`: the old socket takes the new one with it.
    workflow = load_transcript("success")["workflow"]
    sim = ComfyUISimulator(tmp_path / "out", history_lag_s=0.0)
    async with sim, aiohttp.ClientSession() as http:
        url = f"{sim.url}/ws?clientId=w"
        async with http.ws_connect(url) as old, http.ws_connect(url) as new:
            await receive_json(old)
            await receive_json(new)
            await old.close()
            async with http.ws_connect(f"{sim.url}/ws?clientId=witness") as witness:
                await receive_json(witness)
                prompt_id = (await submit(http, sim.url, workflow, "w"))["prompt_id"]
                while (await receive_json(witness))["data"]["status"]["exec_info"]["queue_remaining"]:
                    pass  # the last broadcast `status`: the prompt ran and its events went out before it
            with pytest.raises(TimeoutError):
                await new.receive(timeout=0.5)
        async with http.get(f"{sim.url}/history/{prompt_id}") as response:
            assert (await response.json())[prompt_id]["status"]["status_str"] == "success"


async def test_crash_refuses_connections_and_loses_the_running_prompt(tmp_path, fixtures_dir) -> None:
    workflow = load_transcript("interrupted")["workflow"]
    sim = ComfyUISimulator(tmp_path / "out", node_seconds={"ImageBlur": 5.0})
    async with aiohttp.ClientSession() as http:
        await sim.start()
        port = sim.port
        async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
            await receive_json(ws)
            prompt_id = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
            await sim.crash()
            ended = await ws.receive(timeout=5)
            while ended.type == aiohttp.WSMsgType.TEXT:
                ended = await ws.receive(timeout=5)
            assert ended.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"{sim.url}/system_stats"):
                pass
        await sim.start(port=port)  # the supervisor restarts ComfyUI: same port, empty state
        try:
            async with http.get(f"{sim.url}/history/{prompt_id}") as response:
                assert await response.json() == {}
            async with http.get(f"{sim.url}/queue") as response:
                assert await response.json() == {"queue_running": [], "queue_pending": []}
        finally:
            await sim.stop()


async def test_injected_runtime_error(sim: ComfyUISimulator, http: aiohttp.ClientSession) -> None:
    workflow = load_transcript("success")["workflow"]
    message = "CUDA error: an illegal memory access was encountered"
    sim.inject_error(message, class_type="ImageInvert")
    async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        failed = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
        first = await collect_until_done(ws, failed)
        ok = await submit(http, sim.url, workflow, "c")
        second = await collect_until_done(ws, ok["prompt_id"])

    error = next(m["data"] for m in first if m["type"] == "execution_error")
    assert error["node_id"] == "2"
    assert error["node_type"] == "ImageInvert"
    assert error["exception_message"] == message + "\n"
    assert error["exception_type"] == "RuntimeError"
    assert error["executed"] == ["1", "4"]
    assert list(error) == [
        "prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type", "traceback",
        "current_inputs", "current_outputs", "timestamp",
    ]  # fmt: skip
    assert "execution_success" in [m["type"] for m in second]  # the injection hit one prompt only


async def test_frozen_node_ignores_interrupt_until_released(tmp_path, fixtures_dir) -> None:
    workflow = load_transcript("interrupted")["workflow"]
    sim = ComfyUISimulator(tmp_path / "out", history_lag_s=0.0)
    async with sim, aiohttp.ClientSession() as http, http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        await receive_json(ws)
        sim.freeze(node_id="2")
        prompt_id = (await submit(http, sim.url, workflow, "c"))["prompt_id"]
        await sim.wait_until_frozen()
        async with http.post(f"{sim.url}/interrupt", json={"prompt_id": prompt_id}):
            pass
        await asyncio.sleep(0.1)
        async with http.get(f"{sim.url}/history/{prompt_id}") as response:
            assert await response.json() == {}
        sim.release()
        messages = await collect_until_done(ws, prompt_id)
    interrupted = next(m["data"] for m in messages if m["type"] == "execution_interrupted")
    assert interrupted["node_id"] == "3"
    assert interrupted["executed"] == ["1", "2"]


async def test_records_prompts_with_client_id_and_extra_data(sim: ComfyUISimulator, http) -> None:
    workflow = load_transcript("success")["workflow"]
    await submit(http, sim.url, workflow, "c9", extra_data={"job": "j-1"})
    received = sim.prompts_received[-1]
    assert received.client_id == "c9"
    assert received.extra_data == {"job": "j-1"}
    assert received.status == 200
    assert received.prompt_id


async def test_reshape_rewrites_the_json_of_one_route_with_or_without_api_until_undone(
    sim: ComfyUISimulator, http: aiohttp.ClientSession
) -> None:
    sim.reshape("/history/{prompt_id}", lambda answer: [answer])
    sim.reshape("/api/queue", lambda _answer: "not a queue")
    for prefix in ("", "/api"):
        async with http.get(f"{sim.url}{prefix}/history/p1") as response:
            assert (response.status, await response.json()) == (200, [{}])
        async with http.get(f"{sim.url}{prefix}/queue") as response:
            assert await response.json() == "not a queue"
    async with http.get(f"{sim.url}/history") as response:
        assert await response.json() == {}, "another route answers as ComfyUI"
    async with http.post(f"{sim.url}/queue", json={"clear": True}) as response:
        assert (response.status, await response.read()) == (200, b""), "an answer without JSON is left alone"
    sim.reshape("/queue", None)
    async with http.get(f"{sim.url}/queue") as response:
        assert await response.json() == {"queue_running": [], "queue_pending": []}


async def test_refused_websockets_get_403_while_http_answers(sim: ComfyUISimulator, http) -> None:
    sim.refuse_websockets()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{sim.url}/ws?clientId=c")
    assert refused.value.status == 403
    await submit(http, sim.url, load_transcript("success")["workflow"], "c")
    assert not sim.ws_connections
    sim.refuse_websockets(False)
    async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        assert (await receive_json(ws))["type"] == "status"


@pytest.mark.parametrize("carried_out", [False, True])
async def test_a_lost_connection_resets_without_an_answer_before_or_after_the_request_is_carried_out(
    sim: ComfyUISimulator, http: aiohttp.ClientSession, carried_out: bool
) -> None:
    sim.lose_connections("/api/prompt", carried_out=carried_out)
    workflow = load_transcript("success")["workflow"]
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await submit(http, sim.url, workflow, "c")
    assert len(sim.prompts_received) == (1 if carried_out else 0)
    assert (await submit(http, sim.url, workflow, "c"))["prompt_id"], "the next request is answered"
