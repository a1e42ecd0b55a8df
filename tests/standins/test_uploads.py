"""POST /upload/image and LoadImage, as ComfyUI 0.8.0's server.py image_upload and nodes.py LoadImage have them (no
recording: read from its source; the image test runs a job through the real ones)."""

from __future__ import annotations

import struct

import aiohttp
import httpx
import pytest

from standins.comfyui import ComfyUISimulator
from standins.comfyui_nodes import Image, png_bytes

from .conftest import collect_until_done, submit

AIOHTTP_500 = "500 Internal Server Error\n\nServer got itself in trouble"


def png(width: int, height: int) -> bytes:
    return png_bytes(Image(width, height, (0x10, 0x20, 0x30)))


def form(data: bytes | None, filename: str = "photo.png", **fields: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    if data is not None:
        body.add_field("image", data, filename=filename, content_type="image/png")
    for name, value in fields.items():
        body.add_field(name, value)
    return body


async def upload(http: aiohttp.ClientSession, sim: ComfyUISimulator, body: aiohttp.FormData) -> tuple[int, str]:
    async with http.post(f"{sim.url}/upload/image", data=body) as response:
        return response.status, await response.text()


def load_and_save(image: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}},
    }


async def test_an_upload_is_saved_in_the_input_folder_and_named_back(sim, http):
    assert await upload(http, sim, form(png(7, 5), type="input", overwrite="true")) == (
        200, '{"name": "photo.png", "subfolder": "", "type": "input"}'
    )  # fmt: skip
    assert (sim.input_dir / "photo.png").read_bytes() == png(7, 5)
    status, text = await upload(http, sim, form(png(2, 2), subfolder="alice"))
    assert (status, text) == (200, '{"name": "photo.png", "subfolder": "alice", "type": "input"}')
    assert (sim.input_dir / "alice" / "photo.png").read_bytes() == png(2, 2)


async def test_overwrite_replaces_and_without_it_a_new_name_is_found_unless_the_file_is_the_same(sim, http):
    await upload(http, sim, form(png(1, 1)))
    assert await upload(http, sim, form(png(1, 1))) == (200, '{"name": "photo.png", "subfolder": "", "type": "input"}')
    assert await upload(http, sim, form(png(2, 2))) == (
        200, '{"name": "photo (1).png", "subfolder": "", "type": "input"}'
    )  # fmt: skip
    assert await upload(http, sim, form(png(3, 3), overwrite="true")) == (
        200, '{"name": "photo.png", "subfolder": "", "type": "input"}'
    )  # fmt: skip
    assert sorted(p.name for p in sim.input_dir.iterdir()) == ["3d", "photo (1).png", "photo.png"]
    assert (sim.input_dir / "photo.png").read_bytes() == png(3, 3)


@pytest.mark.parametrize(
    ("files", "fields"),
    [({}, {"type": "input"}), ({"image": ("photo.png", b"x")}, {"subfolder": "../elsewhere"}),
     ({"image": ("../elsewhere.png", b"x")}, {})],
    ids=["no-image", "subfolder-escapes", "filename-escapes"],
)  # fmt: skip
async def test_what_comfyui_refuses_is_a_400_with_no_body(sim, files, fields):
    # httpx, as the worker: aiohttp's client would percent-encode the '/' of a file name
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{sim.url}/upload/image", files=files, data=fields)
    assert (response.status_code, response.text) == (400, "")
    assert [p.name for p in sim.input_dir.iterdir()] == ["3d"] and not (sim.input_dir.parent / "elsewhere.png").exists()


async def test_an_unknown_type_and_a_read_only_input_folder_are_aiohttps_plain_500(sim, http):
    assert await upload(http, sim, form(png(1, 1), type="models")) == (500, AIOHTTP_500)
    sim.read_only_input = True
    assert await upload(http, sim, form(png(1, 1), overwrite="true")) == (500, AIOHTTP_500)
    assert [p.name for p in sim.input_dir.iterdir()] == ["3d"]


async def test_load_image_of_a_missing_file_fails_validation_as_measured_on_comfyui(sim, http):
    async with http.post(f"{sim.url}/prompt", json={"prompt": load_and_save("bob/never-uploaded.png")}) as response:
        body = await response.json()
    assert response.status == 400
    assert body["node_errors"]["1"] == {
        "errors": [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
                    "details": "image - Invalid image file: bob/never-uploaded.png",
                    "extra_info": {"input_name": "image"}}],
        "dependent_outputs": ["2"], "class_type": "LoadImage",
    }  # fmt: skip


async def test_load_image_without_its_input_is_an_exception_during_validation(sim, http):
    workflow = load_and_save("x.png")
    del workflow["1"]["inputs"]["image"]
    async with http.post(f"{sim.url}/prompt", json={"prompt": workflow}) as response:
        body = await response.json()
    [error] = body["node_errors"]["1"]["errors"]
    assert error["type"] == "exception_during_inner_validation"
    assert error["details"] == "LoadImage.VALIDATE_INPUTS() missing 1 required positional argument: 'image'"


async def test_load_image_runs_on_the_uploaded_file_and_a_new_file_of_the_same_name_is_not_cached(sim, http):
    results = []
    async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        for size in ((7, 5), (3, 9)):
            await upload(http, sim, form(png(*size), overwrite="true"))
            accepted = await submit(http, sim.url, load_and_save("photo.png"), "c")
            await collect_until_done(ws, accepted["prompt_id"])
            async with http.get(f"{sim.url}/history/{accepted['prompt_id']}") as response:
                [image] = (await response.json())[accepted["prompt_id"]]["outputs"]["2"]["images"]
            results.append(struct.unpack(">II", (sim.output_dir / image["filename"]).read_bytes()[16:24]))
    assert results == [(7, 5), (3, 9)]


async def test_load_image_of_a_file_that_is_no_image_is_pils_error(sim, http):
    await upload(http, sim, form(b"not an image", overwrite="true"))
    async with http.ws_connect(f"{sim.url}/ws?clientId=c") as ws:
        accepted = await submit(http, sim.url, load_and_save("photo.png"), "c")
        messages = await collect_until_done(ws, accepted["prompt_id"])
    [error] = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert error["exception_type"] == "PIL.UnidentifiedImageError"
    assert error["exception_message"] == f"cannot identify image file '{sim.input_dir / 'photo.png'}'\n"


async def test_object_info_lists_the_images_at_the_top_of_the_input_folder(sim, http):
    for name, subfolder in (("b.png", ""), ("a.jpg", ""), ("notes.txt", ""), ("c.png", "alice")):
        await upload(http, sim, form(png(1, 1), filename=name, subfolder=subfolder))
    async with http.get(f"{sim.url}/object_info/LoadImage") as response:
        info = (await response.json())["LoadImage"]
    assert info["input"]["required"]["image"] == [["a.jpg", "b.png"], {"image_upload": True}]
    assert info["output"] == ["IMAGE", "MASK"] and info["output_node"] is False


async def test_the_input_folder_holds_3d_from_the_start_and_again_after_object_info_as_comfyuis_load3d_makes_it(
    tmp_path, http
):
    """ComfyUI 0.8.0's Load3D makes input/3d as its schema is read (nodes_load_3d.py): at start, at /object_info;
    an image named 3d then cannot be saved."""
    sim = ComfyUISimulator(tmp_path / "output", tmp_path / "temp", input_dir=tmp_path / "fresh" / "input")
    await sim.start()
    try:
        assert [p.name for p in sim.input_dir.iterdir()] == ["3d"] and (sim.input_dir / "3d").is_dir()
        (sim.input_dir / "3d").rmdir()
        async with http.get(f"{sim.url}/object_info") as response:
            assert response.status == 200
        assert (sim.input_dir / "3d").is_dir()
        assert await upload(http, sim, form(png(1, 1), filename="3d", overwrite="true")) == (500, AIOHTTP_500)
    finally:
        await sim.stop()
