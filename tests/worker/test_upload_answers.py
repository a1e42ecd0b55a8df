"""ComfyUI's answers to a job's image uploads (POST /upload/image) that are not its own: the job ends once, with a
reason, and no traceback."""

from __future__ import annotations

from structlog.testing import capture_logs

from worker.comfyui import MAX_COMFYUI_MESSAGE_BYTES

from .test_input_images import TINY, load_and_save


async def test_an_upload_answer_past_the_bound_hands_the_job_back_as_comfyuis_fault_without_a_traceback(
    qm, comfy, make_worker
):
    """Before: ReplyTooLarge escaped the upload, and the job was handed back as "Unexpected error" with a traceback."""
    comfy.reshape("/upload/image", lambda answer: {**answer, "padding": "x" * MAX_COMFYUI_MESSAGE_BYTES})
    job = qm.store.submit("alice", load_and_save("a.png"), metadata={"images": [{"name": "a.png", "image": TINY}]})
    with capture_logs() as logs:
        assert await make_worker(serverless_job_limit=1).run() == 0
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error.startswith(
        "Handed back: ComfyUI unavailable while submitting the workflow: uploading metadata.images[0] 'a.png': "
        "ComfyUI's answer to POST /upload/image is larger than 32 MiB, the most the worker reads"
    ), error
    assert not [e for e in logs if e.get("exc_info")]
    assert comfy.prompts_received == [], "no workflow without its images"
