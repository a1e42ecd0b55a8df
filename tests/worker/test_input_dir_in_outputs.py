"""COMFYUI_INPUT_DIR at OUTPUTS_PATH or inside it: nothing there is deleted, but the names of a job's images are
still checked against it before the upload. Before, the check was skipped too: an image named as a folder there
(a user's delivery folder, ComfyUI's own `3d/`) got ComfyUI's HTTP 500 and was handed back, on every retry."""

from __future__ import annotations

import asyncio

import pytest

from standins.comfyui import ComfyUISimulator

from .test_input_images import TINY, load_and_save


@pytest.mark.parametrize("where", ["same", "inside"])
async def test_an_image_named_as_a_folder_of_an_input_dir_in_outputs_path_fails_the_job(
    qm, make_worker, tmp_path, where
):
    outputs = tmp_path / "outputs"
    input_dir = outputs if where == "same" else outputs / "input"
    (input_dir / "bob").mkdir(parents=True)  # at OUTPUTS_PATH itself: a user's folder of deliveries
    async with ComfyUISimulator(tmp_path / "out", tmp_path / "temp", input_dir=input_dir) as sim:
        job = qm.store.submit("mallory", load_and_save("bob"), metadata={"images": [{"name": "bob", "image": TINY}]})
        worker = make_worker(comfyui_url=sim.url, comfyui_input_dir=input_dir, outputs_path=outputs,
                             serverless_job_limit=1)  # fmt: skip
        assert await asyncio.wait_for(worker.run(), 20) == 0
        assert sim.uploads_received == [] and sim.prompts_received == []
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job", report.body
    assert report.body["error"] == ("Invalid job: metadata.images[0].name: 'bob' is a folder in ComfyUI's input "
                                    "folder: ComfyUI cannot save a file there; name it otherwise")  # fmt: skip
    assert (input_dir / "bob").is_dir()


async def test_images_uploaded_to_an_input_dir_inside_outputs_path_are_kept(qm, make_worker, tmp_path):
    outputs = tmp_path / "outputs"
    input_dir = outputs / "input"
    async with ComfyUISimulator(tmp_path / "out", tmp_path / "temp", input_dir=input_dir) as sim:
        images = [{"name": "alice/photo.png", "image": TINY}]
        job = qm.store.submit("alice", load_and_save("alice/photo.png"), metadata={"images": images})
        worker = make_worker(comfyui_url=sim.url, comfyui_input_dir=input_dir, outputs_path=outputs,
                             serverless_job_limit=1)  # fmt: skip
        assert await asyncio.wait_for(worker.run(), 20) == 0
    assert qm.store.get(job.id).status == "completed"
    assert (input_dir / "alice" / "photo.png").is_file(), "nothing under OUTPUTS_PATH is deleted"
