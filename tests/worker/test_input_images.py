"""A job that carries its input images (metadata.images): checked, uploaded to ComfyUI before its prompt, on
every attempt, and never logged."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re

import httpx
import pytest
import structlog

from common.logs import configure_logging
from standins.comfyui_nodes import Image, image_size, png_bytes

from ..conftest import wait_for
from .conftest import COMFYUI_KILLED_TIMINGS, HEARTBEAT_LIMIT_S, wedged_verdicts


def png(width: int, height: int) -> bytes:
    return png_bytes(Image(width, height, (0xFF, 0x80, 0x00)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


TINY = base64.b64encode(png(2, 2)).decode()


def load_and_save(*names: str, blur: bool = False) -> dict:
    """LoadImage -> SaveImage for each name; with ``blur`` an ImageBlur (0.4 s in the stand-in) in between."""
    workflow: dict = {}
    for n, name in enumerate(names):
        load, blurred, save = str(3 * n + 1), str(3 * n + 2), str(3 * n + 3)
        workflow[load] = {"class_type": "LoadImage", "inputs": {"image": name}}
        source = load
        if blur:
            workflow[blurred] = {"class_type": "ImageBlur", "inputs": {"image": [load, 0], "blur_radius": 1,
                                                                       "sigma": 1.0}}  # fmt: skip
            source = blurred
        workflow[save] = {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": f"in{n}"}}
    return workflow


@pytest.fixture
def log_buffer():
    buffer = io.StringIO()
    configure_logging("json", "debug", stream=buffer)
    yield buffer
    structlog.reset_defaults()


async def test_a_job_carrying_images_loads_them_and_completes(qm, comfy, make_worker, tmp_path, log_buffer):
    photo, face = png(7, 5), png(3, 9)
    images = [{"name": "photo.png", "image": b64(photo)},
              {"name": "alice/face.png", "image": "data:image/png;base64," + b64(face)}]  # fmt: skip
    job = qm.store.submit("alice", load_and_save("photo.png", "alice/face.png"), metadata={"images": images})
    assert await make_worker().run() == 0

    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", report.body
    outputs = report.body["result"]["outputs"]
    sizes = {item["node_id"]: image_size((tmp_path / "outputs" / item["path"]).read_bytes()) for item in outputs}
    assert sizes == {"3": (7, 5), "6": (3, 9)}
    # COMFYUI_INPUT_DIR unset (a bare worker beside a remote ComfyUI): nothing is deleted.
    assert (comfy.input_dir / "photo.png").read_bytes() == photo
    assert (comfy.input_dir / "alice" / "face.png").read_bytes() == face
    assert [u.answer for u in comfy.uploads_received] == [
        {"name": "photo.png", "subfolder": "", "type": "input"},
        {"name": "face.png", "subfolder": "alice", "type": "input"},
    ]
    lines = [json.loads(line) for line in log_buffer.getvalue().splitlines() if line.startswith("{")]
    [uploaded] = [line for line in lines if line["event"] == "Input images uploaded to ComfyUI"]
    assert uploaded["images"] == 2 and uploaded["bytes"] == len(photo) + len(face)
    assert uploaded["job_id"] == job.id
    for encoded in (b64(photo), b64(face)):
        assert encoded[8:40] not in log_buffer.getvalue(), "no base64 of an image in the log"


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        ("photo.png", "metadata.images: must be a list"),
        ([["photo.png", "AAAA"]], "metadata.images[0]: must be an object with 'name' and 'image', got list"),
        ([{"name": "photo.png"}], "metadata.images[0]: missing 'image'"),
        ([{"name": "a.png", "image": "AAAA", "type": "input"}], "metadata.images[0]: unexpected 'type'"),
        ([{"name": "a.png", "image": "AAAA"}, {"name": "../b.png", "image": "AAAA"}],
         "metadata.images[1].name: '../b.png' is not a safe file name"),
        ([{"name": "a/b/c.png", "image": "AAAA"}], "metadata.images[0].name: 'a/b/c.png' is not a safe file name"),
        ([{"name": "/etc/passwd", "image": "AAAA"}], "metadata.images[0].name: '/etc/passwd' is not a safe"),
        ([{"name": ".hidden.png", "image": "AAAA"}], "metadata.images[0].name: '.hidden.png' is not a safe"),
        ([{"name": "a\\b.png", "image": "AAAA"}], "metadata.images[0].name: 'a\\\\b.png' is not a safe"),
        ([{"name": "a\nb.png", "image": "AAAA"}], "metadata.images[0].name: 'a\\nb.png' is not a safe"),
        ([{"name": "a..png", "image": "AAAA"}], "metadata.images[0].name: 'a..png' is not a safe"),
        ([{"name": "", "image": "AAAA"}], "metadata.images[0].name: empty"),
        ([{"name": 7, "image": "AAAA"}], "metadata.images[0].name: must be a string, got int"),
        ([{"name": "x" * 129, "image": "AAAA"}], "metadata.images[0].name: 129 characters, at most 128"),
        ([{"name": "a.png", "image": "AAAA"}, {"name": "a.png", "image": "AAAA"}],
         "metadata.images[1].name: 'a.png' is named twice"),
        ([{"name": "alice", "image": "AAAA"}, {"name": "alice/a.png", "image": "AAAA"}],
         "metadata.images[1].name: 'alice/a.png' and metadata.images[0].name 'alice' make 'alice' both a file and "
         "a folder"),
        ([{"name": "alice/a.png", "image": "AAAA"}, {"name": "alice", "image": "AAAA"}],
         "metadata.images[1].name: 'alice' and metadata.images[0].name 'alice/a.png' make 'alice' both a file and "
         "a folder"),
        ([{"name": f"{n}.png", "image": "AAAA"} for n in range(17)], "metadata.images: 17 images, at most 16"),
        ([{"name": "a.png", "image": "not base64!"}], "metadata.images[0].image: not base64"),
        ([{"name": "a.png", "image": "AAA"}], "metadata.images[0].image: not base64"),
        ([{"name": "a.png", "image": "data:text/plain;base64,AAAA"}], "metadata.images[0].image: a data URI"),
        ([{"name": "a.png", "image": ""}], "metadata.images[0].image: empty"),
        ([{"name": "a.png", "image": None}], "metadata.images[0].image: must be a base64 string, got NoneType"),
        ([{"name": "a.png", "image": "A" * 600_000}, {"name": "b.png", "image": "A" * 600_000}],
         "metadata.images[1].image: the images are larger than 1048576 bytes of base64 in all"),
    ],
)  # fmt: skip
async def test_a_bad_image_list_fails_the_job_naming_the_field_and_never_reaches_comfyui(
    qm, comfy, make_worker, images, expected
):
    job = qm.store.submit("alice", load_and_save("a.png"), metadata={"images": images})
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert report.body["error"].startswith(f"Invalid job: {expected}"), report.body["error"]
    assert comfy.uploads_received == [] and comfy.prompts_received == []
    assert [j.id for j in qm.store.list()] == [job.id], "failed for good: no copy to retry"


async def test_a_connection_lost_during_the_upload_hands_the_job_back(qm, comfy, make_worker):
    job = qm.store.submit("alice", load_and_save("a.png"), metadata={"images": [{"name": "a.png", "image": TINY}]})
    comfy.lose_connections("/upload/image")
    worker = make_worker(serverless_job_limit=1)
    assert await worker.run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.body["error"].startswith(
        "Handed back: ComfyUI unavailable while submitting the workflow: uploading metadata.images[0] 'a.png': "
        "ComfyUI at http://127.0.0.1:"
    ), report.body["error"]
    assert re.search(r"unreachable: \w+: \w", report.body["error"]), "the reason says something after the error's type"
    [copy] = [j for j in qm.store.list() if j.id != job.id]
    assert copy.status == "pending" and copy.metadata["images"] == job.metadata["images"]
    assert worker.state.jobs_failed == 0
    assert comfy.uploads_received == [] and comfy.prompts_received == [], "no workflow without its images"


async def test_a_read_only_input_folder_hands_the_job_back_saying_what_to_do(qm, comfy, make_worker):
    """ComfyUI 0.8.0 writes the upload with open(path, "wb"): on a read-only COMFYUI_INPUT_DIR that raises and aiohttp
    answers its plain 500, which says nothing of why."""
    comfy.read_only_input = True
    job = qm.store.submit("alice", load_and_save("a.png"), metadata={"images": [{"name": "a.png", "image": TINY}]})
    assert await make_worker(serverless_job_limit=1).run() == 0
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error.startswith(
        "Handed back: ComfyUI unavailable while submitting the workflow: uploading "
        "metadata.images[0] 'a.png': ComfyUI POST /upload/image answered HTTP 500"
    ), error
    assert "if COMFYUI_INPUT_DIR is a read-only volume, mount it read-write or unset it" in error
    assert [u.status for u in comfy.uploads_received] == [500] and comfy.prompts_received == []


async def test_a_retry_uploads_the_images_again(qm, comfy, make_worker, tmp_path):
    """The copy of a handed-back job may run on a replica that never had its images: here ComfyUI dies mid-prompt
    and comes back with an empty input folder, as another replica's would be."""
    photo = png(7, 5)
    job = qm.store.submit("alice", load_and_save("photo.png", blur=True),
                          metadata={"images": [{"name": "photo.png", "image": b64(photo)}]})  # fmt: skip
    worker = make_worker(serverless_max_idle_polls=1_000_000, timings=COMFYUI_KILLED_TIMINGS)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    await comfy.crash()
    await wait_for(lambda: qm.reports.landed(job.id))
    comfy.input_dir = tmp_path / "another-replicas-input"
    await comfy.start(port=comfy.port)
    [copy] = [j for j in qm.store.list() if j.id != job.id]
    await wait_for(lambda: qm.store.get(copy.id).status in ("completed", "failed"), timeout=10)
    worker.request_shutdown()
    assert await run == 0
    assert qm.store.get(copy.id).status == "completed", qm.store.get(copy.id).error
    assert [u.answer["name"] for u in comfy.uploads_received] == ["photo.png", "photo.png"]
    assert (comfy.input_dir / "photo.png").read_bytes() == photo


async def test_a_job_naming_an_image_it_did_not_carry_fails_as_on_the_real_comfyui(qm, comfy, make_worker):
    """The real ComfyUI's words, measured by the image test (docs/container.md, "Workflows that load files")."""
    job = qm.store.submit("bob", load_and_save("bob/never-uploaded.png"))
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert (
        "node 1 (LoadImage) input 'image': Custom validation failed for node: image - Invalid image file: "
        "bob/never-uploaded.png" in report.body["error"]
    )


async def test_an_image_comfyui_refuses_fails_the_job_with_comfyuis_words(qm, comfy, make_worker):
    """A 4xx is the image's fault, not the replica's: here ComfyUI's --max-upload-size is below the upload's size."""
    comfy.max_upload_bytes = 200
    await comfy.stop()
    await comfy.start(port=comfy.port)
    job = qm.store.submit("alice", load_and_save("a.png"), metadata={"images": [{"name": "a.png", "image": TINY}]})
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert report.body["error"].startswith(
        "metadata.images[0] 'a.png': ComfyUI refused the image (POST /upload/image answered HTTP 413: Maximum "
        "request body size 200 exceeded"
    ), report.body["error"]
    assert [j.id for j in qm.store.list()] == [job.id], "failed for good: no copy to retry"


# With COMFYUI_INPUT_DIR (the supervisor sets it), a job's images go from ComfyUI's input folder once its prompt is
# over: on a replica several participants share, bob's job naming alice/photo.png would otherwise load alice's photo.


async def test_a_completed_jobs_images_are_deleted_with_the_subfolder_the_upload_made(qm, comfy, make_worker):
    (comfy.input_dir / "shared").mkdir()
    images = [{"name": "photo.png", "image": b64(png(7, 5))}, {"name": "alice/face.png", "image": b64(png(3, 9))},
              {"name": "shared/mask.png", "image": TINY}]  # fmt: skip
    job = qm.store.submit("alice", load_and_save("photo.png", "alice/face.png", "shared/mask.png"),
                          metadata={"images": images})  # fmt: skip
    assert await make_worker(comfyui_input_dir=comfy.input_dir).run() == 0
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"
    assert [u.status for u in comfy.uploads_received] == [200, 200, 200]
    assert sorted(p.name for p in comfy.input_dir.rglob("*")) == ["3d", "shared"], "the folders it did not make stay"


async def test_a_failed_jobs_images_are_deleted(qm, comfy, make_worker):
    images = [{"name": "alice/photo.png", "image": b64(b"not an image")}]
    job = qm.store.submit("alice", load_and_save("alice/photo.png"), metadata={"images": images})
    assert await make_worker(comfyui_input_dir=comfy.input_dir).run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job" and "cannot identify image file" in report.body["error"], report.body
    assert [p.name for p in comfy.input_dir.iterdir()] == ["3d"]


async def test_the_images_uploaded_before_comfyui_refused_one_are_deleted(qm, comfy, make_worker):
    comfy.max_upload_bytes = 1000
    await comfy.stop()
    await comfy.start(port=comfy.port)
    images = [{"name": "alice/small.png", "image": TINY}, {"name": "alice/large.png", "image": b64(bytes(2000))}]
    job = qm.store.submit("alice", load_and_save("alice/small.png", "alice/large.png"), metadata={"images": images})
    assert await make_worker(comfyui_input_dir=comfy.input_dir).run() == 0
    assert qm.reports.landed(job.id)[0].body["error"].startswith("metadata.images[1] 'alice/large.png': ComfyUI "
                                                                 "refused the image")  # fmt: skip
    assert [u.answer["name"] for u in comfy.uploads_received] == ["small.png"]
    assert [p.name for p in comfy.input_dir.iterdir()] == ["3d"]


async def test_an_image_comfyui_saved_but_whose_answer_was_lost_is_deleted(qm, comfy, make_worker):
    """The job is handed back, but the file ComfyUI wrote stays no more than a confirmed upload's would: a later job
    on the replica naming alice/a.png would load alice's photo. Before: left in the input folder, with alice/."""
    images = [{"name": "alice/a.png", "image": TINY}, {"name": "b.png", "image": TINY}]
    job = qm.store.submit("alice", load_and_save("alice/a.png", "b.png"), metadata={"images": images})
    comfy.lose_connections("/upload/image", carried_out=True)
    assert await make_worker(comfyui_input_dir=comfy.input_dir, serverless_job_limit=1).run() == 0
    assert qm.reports.landed(job.id)[0].body["error"].startswith(
        "Handed back: ComfyUI unavailable while submitting the workflow: uploading metadata.images[0] 'alice/a.png'"
    )
    assert [u.answer for u in comfy.uploads_received] == [{"name": "a.png", "subfolder": "alice", "type": "input"}]
    assert [p.name for p in comfy.input_dir.rglob("*")] == ["3d"]


async def test_an_image_another_client_replaced_since_the_upload_is_kept(qm, comfy, make_worker):
    theirs = png(4, 4)
    images = [{"name": "photo.png", "image": TINY}, {"name": "alice/face.png", "image": TINY}]
    job = qm.store.submit("alice", load_and_save("photo.png", "alice/face.png"), metadata={"images": images})
    worker = make_worker(comfyui_input_dir=comfy.input_dir)
    upload = worker.comfy.upload_image

    async def upload_then_another_client_uploads_the_same_name(filename, data, subfolder=""):
        await upload(filename, data, subfolder)
        if filename == "photo.png":
            await upload(filename, theirs, subfolder)  # their POST /upload/image, as any client's

    worker.comfy.upload_image = upload_then_another_client_uploads_the_same_name
    assert await worker.run() == 0
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"
    assert sorted(p.name for p in comfy.input_dir.iterdir()) == ["3d", "photo.png"]
    assert (comfy.input_dir / "photo.png").read_bytes() == theirs


async def test_an_image_another_client_uploaded_again_with_the_same_bytes_is_kept(qm, comfy, make_worker):
    """Their upload of the name while the prompt runs, bytes identical to ours: ComfyUI wrote it over the same file
    (open(path, "wb")), which is theirs now and stays."""
    photo = png(7, 5)
    job = qm.store.submit("alice", load_and_save("photo.png"),
                          metadata={"images": [{"name": "photo.png", "image": b64(photo)}]})  # fmt: skip
    comfy.freeze(class_type="SaveImage")
    run = asyncio.create_task(make_worker(comfyui_input_dir=comfy.input_dir).run())
    await comfy.wait_until_frozen()
    async with httpx.AsyncClient() as another_client:
        answer = await another_client.post(f"{comfy.url}/upload/image", data={"type": "input", "overwrite": "true"},
                                           files={"image": ("photo.png", photo)})  # fmt: skip
    assert answer.status_code == 200, answer.text
    comfy.release()
    assert await run == 0
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"
    assert [u.answer["name"] for u in comfy.uploads_received] == ["photo.png", "photo.png"]
    assert (comfy.input_dir / "photo.png").read_bytes() == photo


async def test_no_symbolic_link_is_followed_out_of_the_input_folder(qm, comfy, make_worker, tmp_path):
    """ComfyUI writes through a link in its input folder (open(path, "wb")); the worker deletes nothing there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (comfy.input_dir / "linked").symlink_to(elsewhere)
    images = [{"name": "linked/photo.png", "image": TINY}, {"name": "face.png", "image": TINY}]
    job = qm.store.submit("alice", load_and_save("linked/photo.png", "face.png"), metadata={"images": images})
    assert await make_worker(comfyui_input_dir=comfy.input_dir).run() == 0
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"
    assert sorted(p.name for p in comfy.input_dir.iterdir()) == ["3d", "linked"]
    assert (elsewhere / "photo.png").read_bytes() == base64.b64decode(TINY)


async def test_a_stopped_jobs_images_are_deleted_once_its_prompt_is_interrupted(qm, comfy, make_worker):
    images = [{"name": "alice/photo.png", "image": TINY}]
    job = qm.store.submit("alice", load_and_save("alice/photo.png", blur=True), metadata={"images": images})
    worker = make_worker(comfyui_input_dir=comfy.input_dir, shutdown_grace_s=0.1)
    run = asyncio.create_task(worker.run())
    await wait_for(lambda: comfy.prompts_received)
    worker.request_shutdown()
    assert await run == 0
    assert "Handed back: worker test-worker was stopped" in qm.reports.landed(job.id)[0].body["error"]
    assert comfy.interrupts_received
    assert [p.name for p in comfy.input_dir.iterdir()] == ["3d"]


async def test_an_input_folder_setting_that_is_not_comfyuis_is_said_once_and_nothing_is_deleted(
    qm, comfy, make_worker, log_buffer
):
    """ComfyUI's base directory, say, in place of its input/: the images stay, and the operator is told where."""
    for _ in range(2):
        qm.store.submit("alice", load_and_save("alice/photo.png"),
                        metadata={"images": [{"name": "alice/photo.png", "image": TINY}]})  # fmt: skip
    assert await make_worker(comfyui_input_dir=comfy.input_dir.parent).run() == 0
    assert (comfy.input_dir / "alice" / "photo.png").is_file()
    lines = [json.loads(line) for line in log_buffer.getvalue().splitlines() if line.startswith("{")]
    [warning] = [line for line in lines if line["event"].startswith("COMFYUI_INPUT_DIR holds none of the uploaded")]
    assert warning["file"] == "alice/photo.png" and warning["found_in"] == str(comfy.input_dir)


async def test_slow_uploads_and_a_slow_submission_keep_the_heartbeat_fresh(qm, comfy, make_worker):
    """Each upload and the POST /prompt answered late (ComfyUI's event loop held by a custom node): bounded by
    HTTP_TIMEOUT_S each, so slow, not wedged. Before, the worker did not beat from the first upload until the
    prompt was queued: 16 images at up to HTTP_TIMEOUT_S each could pass HEARTBEAT_TIMEOUT_S, and /health said
    "worker loop wedged" (the platform restarts the replica) while the job was on its way."""
    names = [f"slow{n}.png" for n in range(3)]
    images = [{"name": name, "image": TINY} for name in names]
    job = qm.store.submit("alice", load_and_save(*names), metadata={"images": images})
    comfy.slow_down("/upload/image", HEARTBEAT_LIMIT_S / 2)
    comfy.slow_down("/prompt", HEARTBEAT_LIMIT_S * 2 / 3)  # 3 x 1.5 s + 2 s unbeaten before: past the 3-s limit
    assert await wedged_verdicts(make_worker(heartbeat_timeout_s=HEARTBEAT_LIMIT_S)) == (0, [])
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", report.body
    assert len(comfy.uploads_received) == 3


async def test_a_slow_interrupt_at_the_job_deadline_keeps_the_heartbeat_fresh(qm, comfy, make_worker):
    """POST /interrupt and POST /queue (delete) answered late when the job's deadline stops its prompt: two calls
    of up to HTTP_TIMEOUT_S each, before the wait for ComfyUI to stop; slow, not wedged."""
    workflow = load_and_save("long.png")  # 1 LoadImage -> 3 SaveImage; 30 ImageBlur nodes of 0.4 s between
    for n in range(30):
        workflow[f"b{n}"] = {"class_type": "ImageBlur", "inputs": {"image": [f"b{n - 1}" if n else "1", 0],
                                                                   "blur_radius": 1, "sigma": 1.0}}  # fmt: skip
    workflow["3"]["inputs"]["images"] = ["b29", 0]
    images = [{"name": "long.png", "image": TINY}]
    job = qm.store.submit("alice", workflow, metadata={"images": images})
    comfy.slow_down("/interrupt", HEARTBEAT_LIMIT_S * 2 / 3)
    comfy.slow_down("/queue", HEARTBEAT_LIMIT_S * 2 / 3)
    assert await wedged_verdicts(make_worker(heartbeat_timeout_s=HEARTBEAT_LIMIT_S, job_timeout_s=1)) == (0, [])
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job" and "Job timed out after 1 s" in report.body["error"], report.body


async def test_an_image_folder_made_a_link_loop_after_the_upload_does_not_crash_the_worker(
    qm, comfy, make_worker
):
    """Another client (or a custom node) makes alice/ a symbolic link to itself once the job's image is uploaded.
    Before: Path.resolve() raised RuntimeError ("Symlink loop from …") in the check of the upload, and again while
    deleting it, which the worker did not survive. Now the image counts as behind a link: kept, and the job ends as
    ComfyUI says."""
    images = [{"name": "alice/face.png", "image": TINY}]
    job = qm.store.submit("alice", load_and_save("alice/face.png"), metadata={"images": images})
    worker = make_worker(comfyui_input_dir=comfy.input_dir)
    upload = worker.comfy.upload_image

    async def upload_then_the_folder_becomes_a_loop(filename, data, subfolder=""):
        await upload(filename, data, subfolder)
        if not (comfy.input_dir / "alice").is_symlink():
            (comfy.input_dir / "alice" / filename).unlink()
            (comfy.input_dir / "alice").rmdir()
            (comfy.input_dir / "alice").symlink_to("alice")

    worker.comfy.upload_image = upload_then_the_folder_becomes_a_loop
    assert await worker.run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job" and "Invalid image file" in report.body["error"], "ComfyUI's word on it"
    assert (comfy.input_dir / "alice").is_symlink(), "not ours: left alone"
