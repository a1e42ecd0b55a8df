"""ComfyUI's user data store (`/userdata`), as ComfyUI 0.8.0's app/user_manager.py has it for its one user without
--multi-user (no recording: read from its source, routed by the aiohttp ComfyUI runs on): the worker keeps its
run's record there (worker/run_record.py)."""

from __future__ import annotations

import httpx
import pytest

from standins.comfyui import ComfyUISimulator


@pytest.fixture
async def client(sim: ComfyUISimulator):
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as http:
        yield http


async def test_a_file_is_written_read_and_deleted_under_the_default_user_with_an_encoded_slash(sim, client):
    written = await client.post("/userdata/records%2Fa.json", content=b'{"x": 1}')
    assert (written.status_code, written.json()) == (200, "records/a.json")
    assert (sim.user_dir / "default" / "records" / "a.json").read_bytes() == b'{"x": 1}'
    read = await client.get("/api/userdata/records%2Fa.json")
    assert (read.status_code, read.content) == (200, b'{"x": 1}')
    assert (await client.delete("/userdata/records%2Fa.json")).status_code == 204
    assert (await client.get("/userdata/records%2Fa.json")).status_code == 404
    assert (await client.delete("/userdata/records%2Fa.json")).status_code == 404
    assert (await client.get("/userdata/records/a.json")).status_code == 404, "a plain slash matches no route"


async def test_a_name_with_a_percent_is_unquoted_once_more_and_none_may_leave_the_users_folder(sim, client):
    assert (await client.post("/userdata/records%252Fb.json", content=b"b")).json() == "records/b.json"
    for leaving in ("..%2Fusers.json", "%2E%2E%2Fdefault2%2Fx", "%252E%252E%252Fx", "%2Fetc%2Fpasswd"):
        assert (await client.post(f"/userdata/{leaving}", content=b"x")).status_code == 403, leaving
        assert (await client.get(f"/userdata/{leaving}")).status_code == 403, leaving
    assert sorted(p.name for p in sim.user_dir.rglob("*")) == ["b.json", "default", "records"]


async def test_overwrite_false_refuses_an_existing_file_and_full_info_gives_its_times(sim, client):
    first = await client.post("/userdata/r%2Fa.json", params={"full_info": "true"}, content=b"12345")
    info = first.json()
    assert sorted(info) == ["created", "modified", "path", "size"]
    assert (info["path"], info["size"]) == ("r/a.json", 5)
    assert info["modified"] == (sim.user_dir / "default" / "r" / "a.json").stat().st_mtime
    refused = await client.post("/userdata/r%2Fa.json", params={"overwrite": "false"}, content=b"other")
    assert (refused.status_code, refused.text) == (409, "File already exists")
    assert (sim.user_dir / "default" / "r" / "a.json").read_bytes() == b"12345"


async def test_a_folder_is_listed_by_name_split_or_with_full_info(sim, client):
    for name in ("r%2Fa.json", "r%2Fdeep%2Fb.json"):
        await client.post(f"/userdata/{name}", content=b"x")
    assert (await client.get("/userdata", params={"dir": "r"})).json() == ["a.json"]
    recursed = await client.get("/userdata", params={"dir": "r", "recurse": "true", "split": "true"})
    assert sorted(recursed.json()) == [["a.json", "a.json"], ["deep/b.json", "deep", "b.json"]]
    [info] = (await client.get("/userdata", params={"dir": "r", "full_info": "true"})).json()
    assert (info["path"], info["size"]) == ("a.json", 1)
    assert info["modified"] == (sim.user_dir / "default" / "r" / "a.json").stat().st_mtime
    missing = await client.get("/userdata", params={"dir": "none"})
    assert (missing.status_code, missing.text) == (404, "Directory not found")
    unnamed = await client.get("/userdata")
    assert (unnamed.status_code, unnamed.text) == (400, "Directory not provided")
    leaving = await client.get("/userdata", params={"dir": "../x"})
    assert (leaving.status_code, leaving.text) == (403, "Invalid directory")


async def test_the_store_outlives_a_restart_of_comfyui(sim, client):
    await client.post("/userdata/r%2Fa.json", content=b"kept")
    await sim.crash()
    await sim.start()
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as again:
        assert (await again.get("/userdata/r%2Fa.json")).content == b"kept"
