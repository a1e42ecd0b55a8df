"""An image whose name ComfyUI cannot save in its input folder (a folder there of that name, as ComfyUI's own `3d/`,
or a file where the name's folder would be): ComfyUI's upload answers HTTP 500, as for a read-only folder. With
COMFYUI_INPUT_DIR the worker sees it first and fails the job as the client's mistake; before, the job was handed back
with the read-only hint and each retry got the same 500."""

from __future__ import annotations

import pytest

from .test_input_images import TINY, load_and_save


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("3d", "metadata.images[1].name: '3d' is a folder in ComfyUI's input folder: ComfyUI cannot save a file "
               "there; name it otherwise"),
        ("taken.png/a.png", "metadata.images[1].name: 'taken.png/a.png' puts it in 'taken.png', a file in "
                            "ComfyUI's input folder, not a folder; name it otherwise"),
    ],
)  # fmt: skip
async def test_an_image_named_where_comfyui_cannot_save_it_fails_the_job_naming_the_field(
    qm, comfy, make_worker, name, expected
):
    (comfy.input_dir / "taken.png").write_bytes(b"another client's")
    images = [{"name": "a.png", "image": TINY}, {"name": name, "image": TINY}]
    job = qm.store.submit("alice", load_and_save("a.png", name), metadata={"images": images})
    worker = make_worker(comfyui_input_dir=comfy.input_dir, serverless_job_limit=1)
    assert await worker.run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job", report.body
    assert report.body["error"] == f"Invalid job: {expected}"
    assert [j.id for j in qm.store.list()] == [job.id], "failed for good: no copy to retry"
    assert comfy.uploads_received == [] and comfy.prompts_received == []
    assert worker.state.jobs_failed == 1
    assert sorted(p.name for p in comfy.input_dir.iterdir()) == ["3d", "taken.png"]


async def test_without_the_input_folder_in_sight_comfyuis_500_hands_the_job_back_as_before(qm, comfy, make_worker):
    job = qm.store.submit("alice", load_and_save("3d"), metadata={"images": [{"name": "3d", "image": TINY}]})
    assert await make_worker(serverless_job_limit=1).run() == 0
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error.startswith("Handed back: ComfyUI unavailable while submitting the workflow: uploading "
                            "metadata.images[0] '3d': ComfyUI POST /upload/image answered HTTP 500"), error  # fmt: skip
    assert comfy.prompts_received == []
