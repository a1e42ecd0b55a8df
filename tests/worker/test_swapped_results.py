"""A custom node may leave a thread behind that swaps its result in COMFYUI_OUTPUT_DIR for a FIFO after the worker's
check that it is a regular file: open() on a FIFO waits for a writer for ever, so the job was held (DELIVERY_STALL_S
plus HEARTBEAT_TIMEOUT_S until the worker showed as wedged, on each attempt). The open file is checked instead."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from worker.comfyui import ComfyUIClient
from worker.outputs import OutputDelivery, OutputDeliveryError

from .test_outputs import one_output

SETTLED_S = 10.0  # the copy of 3 bytes takes milliseconds: past this, open() is waiting for a writer


def swap_for_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


async def settled(delivering: asyncio.Future, fifo: Path) -> None:
    """Fails the test, rather than hanging it, when the delivery waits on the FIFO: a writer releases it."""
    done, _ = await asyncio.wait([delivering], timeout=SETTLED_S)
    if not done:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(delivering, SETTLED_S)
        pytest.fail(f"the delivery waited {SETTLED_S:g} s for a writer on the FIFO")


async def test_a_result_swapped_for_a_fifo_before_the_copy_is_refused_not_waited_for(
    comfy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import worker.outputs

    result = comfy.output_dir / "swapped.png"
    result.write_bytes(b"png")
    stage = worker.outputs._open_staged

    def swapped_after_the_check(*args):  # the copy stages its target, then opens the result
        swap_for_fifo(result)
        return stage(*args)

    monkeypatch.setattr(worker.outputs, "_open_staged", swapped_after_the_check)
    client = ComfyUIClient(comfy.url)
    try:
        delivery = OutputDelivery(tmp_path / "outputs", client, comfyui_output_dir=comfy.output_dir)
        delivering = asyncio.ensure_future(delivery.deliver({"9": one_output("swapped.png")}, "mallory", "job-1"))
        await settled(delivering, result)
        with pytest.raises(OutputDeliveryError, match=r"output swapped\.png is not a regular file \(prw"):
            await delivering
    finally:
        await client.aclose()
    assert not [path for path in (tmp_path / "outputs").rglob("*") if path.is_file()]


class SwappingComfyUI(ComfyUIClient):
    """ComfyUI serves the result whole, then the node's thread swaps it for a FIFO."""

    def __init__(self, url: str, result: Path) -> None:
        super().__init__(url)
        self.result = result

    async def download(self, filename: str, subfolder: str, folder_type: str) -> AsyncIterator[bytes]:
        async for chunk in super().download(filename, subfolder, folder_type):
            yield chunk
        swap_for_fifo(self.result)


async def test_an_older_result_swapped_for_a_fifo_after_view_served_it_is_delivered(comfy, tmp_path: Path):
    """A file of the result's name older than the prompt is fetched over /view, then read to tell a replay of
    ComfyUI's cache from another folder's file: that read waited on the FIFO too."""
    result = comfy.output_dir / "replayed.png"
    result.write_bytes(b"png")
    os.utime(result, (time.time() - 3600, time.time() - 3600))
    client = SwappingComfyUI(comfy.url, result)
    try:
        delivery = OutputDelivery(tmp_path / "outputs", client, comfyui_output_dir=comfy.output_dir)
        delivering = asyncio.ensure_future(delivery.deliver(
            {"9": one_output("replayed.png")}, "alice", "job-1", written_since=time.time()
        ))  # fmt: skip
        await settled(delivering, result)
        [delivered] = await delivering
    finally:
        await client.aclose()
    assert (tmp_path / "outputs" / delivered.path).read_bytes() == b"png"
    assert not delivery.found_look_alikes and delivery.take_replays() == frozenset()
