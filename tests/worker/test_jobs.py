"""A job's journey through the worker: success, delivery, every kind of bad input, ComfyUI's failures."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from worker.jobs import lease_timeout_of
from worker.metrics import JOB_PHASES


async def test_success_copies_and_hashes_outputs(qm, comfy, make_worker, workflows, tmp_path):
    job = qm.store.submit("alice", workflows["quick"], metadata={"source": "test"})
    worker = make_worker()
    started = time.monotonic()
    with capture_logs() as logs:
        assert await worker.run() == 0
    took_s = time.monotonic() - started

    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job"
    result = report.body["result"]
    assert result["worker_id"] == "test-worker" and result["provider"] == "local"
    assert result["prompt_id"]
    assert set(result["timings"]) >= {"comfyui_queue_s", "execution_s", "delivery_s", "total_s"}
    outputs = result["outputs"]
    assert len(outputs) == 2, "two SaveImage files; the PreviewImage temp files are not results"
    for item in outputs:
        assert item["node_id"] == "3" and item["kind"] == "images"
        assert item["path"].startswith(f"alice/{job.id}/")
        copied = tmp_path / "outputs" / item["path"]
        data = copied.read_bytes()
        assert item["bytes"] == len(data) > 0
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
        assert data == (tmp_path / "comfy-output" / Path(item["path"]).name).read_bytes()
    assert not any((tmp_path / "outputs" / ".partial").iterdir()), "no staging folder left behind"
    assert len(json.dumps(result)) < 2000, "file locations and hashes only, never file bytes"

    events = [entry["event"] for entry in logs]
    assert "Worker started" in events
    assert f"Processing job {job.id}" in events
    assert f"Job {job.id} completed" in events
    assert "Serverless idle timeout reached" in events
    assert events[-1] == "Worker shutdown complete"
    assert qm.store.get(job.id).status == "completed"
    [completed] = [entry for entry in logs if entry["event"] == f"Job {job.id} completed"]
    assert completed["outputs"] == 2

    sample = worker.state.metrics.registry.get_sample_value
    for phase in JOB_PHASES:  # each phase of the job measured once, and for no longer than the worker ran
        assert sample("comfy_worker_job_phase_seconds_count", {"phase": phase}) == 1, phase
        assert 0 <= sample("comfy_worker_job_phase_seconds_sum", {"phase": phase}) <= took_s, phase


async def test_outputs_are_copied_from_the_local_output_directory_when_configured(
    qm, comfy, make_worker, workflows, tmp_path
):
    job = qm.store.submit("bob", workflows["quick"])
    worker = make_worker(comfyui_output_dir=tmp_path / "comfy-output")
    assert await worker.run() == 0
    [report] = qm.reports.landed(job.id)
    assert len(report.body["result"]["outputs"]) == 2
    assert comfy.view_requests == [], "files were read from disk, not over /view"


async def test_outputs_fall_back_to_view_when_not_on_local_disk(qm, comfy, make_worker, workflows, tmp_path):
    job = qm.store.submit("bob", workflows["quick"])
    worker = make_worker(comfyui_output_dir=tmp_path / "somewhere-else")
    assert await worker.run() == 0
    [report] = qm.reports.landed(job.id)
    outputs = report.body["result"]["outputs"]
    assert len(outputs) == 2
    assert len(comfy.view_requests) == 2
    for item in outputs:
        data = (tmp_path / "outputs" / item["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item["sha256"]


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        ("../x", "'user_id'"),
        ("/etc", "'user_id'"),
        ("", "'user_id'"),
        ("a/b", "'user_id'"),
        ("..", "'user_id'"),
    ],
)
async def test_hostile_user_id_is_refused_before_comfyui(
    qm, comfy, make_worker, workflows, tmp_path, user_id, expected
):
    job = qm.store.submit(user_id, workflows["quick"])
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert expected in report.body["error"] and "folder name" in report.body["error"]
    assert comfy.prompts_received == [], "nothing reached ComfyUI"
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*"))
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize(
    ("workflow", "expected"),
    [
        ({"1": {"inputs": {}}}, "node '1' has no 'class_type'"),
        ({"1": "EmptyImage"}, "node '1' must be an object"),
        ({"1": {"class_type": "EmptyImage", "inputs": [1, 2]}}, "'inputs' must be an object"),
        ({"1": {"class_type": 5, "inputs": {}}}, "node '1' has no 'class_type'"),
        ({"1": {"class_type": "", "inputs": {}}}, "node '1' has no 'class_type'"),
        ({"prompt": {"1": {"class_type": "SaveImage", "inputs": {}}}}, "/prompt request body"),
        # a whole body as posted to /prompt, with every key ComfyUI reads there
        ({"prompt": {"1": {"class_type": "SaveImage", "inputs": {}}}, "client_id": "c1", "prompt_id": "p1",
          "extra_data": {}, "front": False, "number": 3}, "/prompt request body"),
    ],
)
async def test_malformed_workflows_fail_with_the_field_named(qm, comfy, make_worker, workflow, expected):
    job = qm.store.submit("alice", workflow)
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert expected in report.body["error"]
    assert comfy.prompts_received == []


async def test_ui_format_workflow_is_refused_with_export_instructions(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["ui_graph_format"])
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    error = report.body["error"]
    assert "UI (graph) format" in error and "'nodes' and 'links'" in error and "Export (API)" in error
    assert comfy.prompts_received == []


async def test_an_api_workflow_with_nodes_named_nodes_and_links_is_not_taken_for_the_ui_format(
    qm, comfy, make_worker, workflows
):
    """The UI format is a list under 'nodes' beside 'links'; in the API format any string may name a node."""
    renamed = json.dumps(workflows["quick"]).replace('"1"', '"nodes"').replace('"2"', '"links"')
    job = qm.store.submit("alice", json.loads(renamed))
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job"
    assert set(comfy.prompts_received[0].body["prompt"]) == {"nodes", "links", "3", "4"}


async def test_an_api_workflow_with_a_node_named_prompt_is_not_taken_for_a_prompt_request_body(
    qm, comfy, make_worker, workflows
):
    renamed = json.dumps(workflows["quick"]).replace('"1"', '"prompt"')
    del (workflow := json.loads(renamed))["4"]
    job = qm.store.submit("alice", workflow)
    assert await make_worker().run() == 0
    assert qm.reports.landed(job.id)[0].endpoint == "complete-job"
    assert set(comfy.prompts_received[0].body["prompt"]) == {"prompt", "2", "3"}


async def test_malformed_jobs_from_the_queue_do_not_stop_the_worker(qm, comfy, make_worker, workflows):
    qm.faults.inject("next-job", status=200, body={"job": "not an object"})
    qm.faults.inject("next-job", status=200, body={"job": {"workflow": workflows["quick"], "user_id": "x"}})
    qm.faults.inject(
        "next-job", status=200, body={"job": {"id": "job-1", "workflow": [1, 2], "user_id": "x", "metadata": {}}}
    )
    good = qm.store.submit("alice", workflows["quick"])
    with capture_logs() as logs:
        assert await make_worker().run() == 0
    errors = [e for e in logs if e["event"] == "Received a job that cannot be reported back; skipping it"]
    assert len(errors) == 2
    assert "expected a JSON object" in errors[0]["error"] and "no usable 'id'" in errors[1]["error"]
    [bad] = qm.reports.for_job("job-1")
    assert bad.endpoint == "fail-job" and "'workflow' must be a JSON object" in bad.body["error"]
    assert qm.reports.landed(good.id)[0].endpoint == "complete-job"


async def test_a_job_nested_too_deep_fails_naming_it_and_the_worker_goes_on(qm, comfy, make_worker, workflows):
    """comfy-multi lets any nesting through. 5000 levels made the worker's json parse raise RecursionError, which
    nothing caught: the worker died and the job stayed running till the manager's hour-long timeout. 900 reached
    ComfyUI, whose 500 was taken for our fault, and the job was retried."""
    deep = "[" * 5000 + "]" * 5000
    body = f'{{"job": {{"id": "job-5000", "workflow": {deep}, "user_id": "x"}}}}'
    qm.faults.inject("next-job", status=200, body=body)
    qm.faults.inject("next-job", status=200, body=f'{{"job": {{"workflow": {deep}, "id": "job-unnamed"}}}}')
    nested: object = 1
    for _ in range(100):
        nested = [nested]
    hundred = {"1": {"class_type": "EmptyImage", "inputs": {"width": nested}}}
    qm.faults.inject("next-job", status=200, body={"job": {"id": "job-100", "workflow": hundred, "user_id": "x"}})
    good = qm.store.submit("alice", workflows["quick"])
    with capture_logs() as logs:
        assert await make_worker().run() == 0
    [too_deep] = qm.reports.for_job("job-5000")
    assert too_deep.endpoint == "fail-job" and "nests deeper than the worker can read" in too_deep.body["error"]
    [unnamed] = [e for e in logs if e["event"] == "Poll failed; backing off"]
    assert "nested too deeply to read" in unnamed["error"]
    [hundred_deep] = qm.reports.for_job("job-100")
    assert hundred_deep.endpoint == "fail-job" and "deeper than 64 levels" in hundred_deep.body["error"]
    assert qm.reports.landed(good.id)[0].endpoint == "complete-job"
    assert not [e for e in logs if e["event"] == "uncaught_exception"]


async def test_unknown_node_400_becomes_a_readable_failure(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["invalid_unknown_node"])
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert "ComfyUI rejected the workflow" in report.body["error"]
    assert "NoSuchNode does not exist" in report.body["error"]


async def test_missing_model_names_node_input_and_file(qm, comfy, make_worker, workflows):
    job = qm.store.submit("alice", workflows["sdxl_txt2img"])
    assert await make_worker().run() == 0
    error = qm.reports.landed(job.id)[0].body["error"]
    assert "node 4 (CheckpointLoaderSimple) input 'ckpt_name'" in error
    assert "sd_xl_base_1.0.safetensors" in error and "Value not in list" in error


async def test_runtime_error_names_node_and_exception(qm, comfy, make_worker):
    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "broken.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bc"}},
    }
    job = qm.store.submit("alice", workflow)
    worker = make_worker()
    assert await worker.run() == 0
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error.startswith("ComfyUI execution error in node 1 (CheckpointLoaderSimple): SafetensorError:")
    assert "header too large" in error
    assert worker.state.fatal_reason is None, "a broken model file is not a reason to restart the container"


async def test_outputs_comfyui_skips_are_reported_as_warnings(qm, comfy, make_worker, workflows):
    broken_output = {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "x"}}
    workflow = {**workflows["quick"], "9": broken_output}
    job = qm.store.submit("alice", workflow)
    assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job"
    result = report.body["result"]
    assert len(result["outputs"]) == 2
    [warning] = result["warnings"]
    assert warning.startswith("ComfyUI skipped outputs that will not run") and "node 9 (SaveImage)" in warning


async def test_many_skipped_outputs_make_a_bounded_warning_not_a_result_too_large(qm, comfy, make_worker, workflows):
    """ComfyUI's node_errors may run to its 32-MiB answer: the warning and its log line quote only the start."""
    broken_output = {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "x"}}
    broken = {f"{index:04d}" + "n" * 100: broken_output for index in range(300)}
    job = qm.store.submit("alice", {**workflows["quick"], **broken})
    with capture_logs() as logs:
        assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", str(report.body)[:2000]
    [warning] = report.body["result"]["warnings"]
    assert warning.startswith("ComfyUI skipped outputs that will not run; node 0000nnn")
    assert len(warning) <= 10_000, len(warning)
    [line] = [e for e in logs if e["event"] == "ComfyUI accepted the workflow but will skip invalid outputs"]
    assert len(line["details"]) <= 10_000, len(line["details"])


async def test_a_failure_is_logged_as_the_queue_manager_stores_it_not_at_its_full_length(qm, comfy, make_worker):
    """ComfyUI's 400 lists every invalid output, up to its 32-MiB answer: the failure the manager stores is cut
    to its 10,000-character limit, and so is the log line saying it."""
    broken_output = {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "x"}}
    job = qm.store.submit("alice", {f"{index:04d}" + "n" * 100: broken_output for index in range(300)})
    with capture_logs() as logs:
        assert await make_worker().run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job" and report.body["error"].startswith("ComfyUI rejected the workflow")
    [line] = [e for e in logs if e["event"] == f"Job {job.id} failed"]
    assert line["error"] == report.body["error"], (len(line["error"]), len(report.body["error"]))


async def test_a_link_cycle_is_refused_naming_the_cycle(qm, comfy, make_worker, workflows):
    workflow = json.loads(json.dumps(workflows["quick"]))
    workflow["1"] = {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}  # 1 <- 2 <- 1
    job = qm.store.submit("alice", workflow)
    assert await make_worker().run() == 0
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error == (
        "Invalid job: job 'workflow' has a link cycle (each node takes an input from the next): "
        "1 (ImageInvert) -> 2 (ImageInvert) -> 1 (ImageInvert); a node cannot depend on its own output"
    )
    assert comfy.prompts_received == [], "refused before ComfyUI"


def test_a_long_cycle_is_named_in_bounded_words_and_a_long_chain_is_no_cycle():
    from worker.jobs import InvalidJob, validate_workflow

    chain = {str(i): {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}} for i in range(1, 50_000)}
    chain["0"] = {"class_type": "EmptyImage", "inputs": {}}
    assert validate_workflow(chain) is chain
    chain["0"] = {"class_type": "ImageInvert", "inputs": {"image": ["49999", 0]}}
    with pytest.raises(InvalidJob) as error:
        validate_workflow(chain)
    assert "(50000 nodes in all)" in str(error.value) and len(str(error.value)) < 600

    from worker.jobs import MAX_CYCLE_NODES_SHOWN

    ring = MAX_CYCLE_NODES_SHOWN - 1  # named in full: its first node again makes MAX_CYCLE_NODES_SHOWN
    loop = {str(i): {"class_type": "ImageInvert", "inputs": {"image": [str((i + 1) % ring), 0]}} for i in range(ring)}
    with pytest.raises(InvalidJob) as error:
        validate_workflow(loop)
    assert f"{ring - 1} (ImageInvert) -> 0 (ImageInvert); a node" in str(error.value)
    assert "nodes in all" not in str(error.value)


async def test_a_workflow_too_large_for_comfyui_says_so_with_its_size(qm, comfy, make_worker, workflows):
    comfy.max_upload_bytes = 4096  # as if ComfyUI ran with a small --max-upload-size
    await comfy.stop()
    await comfy.start(port=comfy.port)
    workflow = json.loads(json.dumps(workflows["quick"]))
    workflow["3"]["inputs"]["filename_prefix"] = "x" * 5000
    job = qm.store.submit("alice", workflow)
    assert await make_worker().run() == 0
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error.startswith("workflow too large (")
    size = int(error.split("(")[1].split(" bytes")[0])
    assert 5000 < size < 6000
    assert "unavailable" not in error


async def test_a_delivery_that_fails_midway_leaves_no_partial_results(qm, comfy, make_worker, workflows, tmp_path):
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker()
    copy = worker.delivery._copy
    copied = []

    async def second_copy_fails(item, relative, target, *rest):
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(target)
        return await copy(item, relative, target, *rest)

    worker.delivery._copy = second_copy_fails
    assert await worker.run() == 1, "a full disk is this replica's fault, not the job's"
    error = qm.reports.landed(job.id)[0].body["error"]
    assert error.startswith("Handed back: Output delivery failed on worker test-worker: the outputs disk (OUTPUTS_PATH "
                            f"{tmp_path / 'outputs'}) refused a write:"), error
    assert "No space left on device" in error
    assert copied and not copied[0].exists(), "the first file was delivered, then removed"
    assert not (tmp_path / "outputs" / "alice" / job.id).exists()


async def test_a_completion_the_queue_manager_refuses_for_good_leaves_no_orphan_outputs(
    qm, comfy, make_worker, workflows, tmp_path
):
    # The manager lost the job (a Redis flush, say): the report and the look-up both answer 404.
    qm.faults.inject("complete-job", status=404, body={"detail": "Job not found"})
    qm.faults.inject("get-job", status=404, body={"detail": "Job not found"})
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker()
    remove, removed_on = worker.delivery.remove, []

    def remove_noting_the_thread(files, **budget):
        removed_on.append(threading.current_thread())
        return remove(files, **budget)

    worker.delivery.remove = remove_noting_the_thread
    with capture_logs() as logs:
        assert await worker.run() == 0
    assert [a.status for a in qm.reports.for_job(job.id)] == [404]
    assert not list((tmp_path / "outputs").rglob("*.png")), "no file looks like a result of a job that has none"
    assert "Removed the outputs of a completion the queue manager refused" in [e["event"] for e in logs]
    # Off the event loop the health server shares: up to 10,000 files on a network volume stalled /health.
    assert removed_on and threading.main_thread() not in removed_on


async def test_a_result_the_queue_manager_rejects_fails_the_job_with_the_reason(
    qm, comfy, make_worker, workflows, tmp_path
):
    # A custom node's history bloated the result past the manager's limit: the job is still this worker's and
    # must end, not stay running until a lease or timeout retries it to the same end.
    too_large = "Request body too large: 62915259 bytes; this endpoint accepts at most 53477376 bytes"
    qm.faults.inject("complete-job", status=413, body={"detail": too_large})
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker()
    assert await worker.run() == 0
    assert [a.endpoint for a in qm.reports.for_job(job.id)] == ["complete-job", "fail-job"]
    failed = qm.store.get(job.id)
    assert failed.status == "failed"
    assert failed.error.startswith("Output delivery failed: the queue manager refused the result (complete-job")
    assert "HTTP 413" in failed.error and too_large in failed.error
    assert not list((tmp_path / "outputs").rglob("*.png")), "no file looks like a result of a failed job"
    assert worker.state.jobs_failed == 1


async def test_a_completion_whose_earlier_try_landed_keeps_its_outputs(qm, comfy, make_worker, workflows, tmp_path):
    # The first try lands but its answer is lost; the retry is refused (a fenced manager answers 409 then).
    qm.faults.inject("complete-job", status=502, after=True)
    qm.faults.inject("complete-job", status=409, body={"detail": "Job is not running under this worker"})
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker()
    assert await worker.run() == 0
    assert qm.store.get(job.id).status == "completed"
    assert len(list((tmp_path / "outputs").rglob("*.png"))) == 2
    assert worker.state.jobs_completed == 1


@pytest.mark.parametrize(
    ("said", "lease"),
    [(60, 60.0), (2.5, 2.5), (0.5, 0.5), (0, None), (-1, None), (float("nan"), None), (float("inf"), None),
     (True, None), ("60", None), (None, None)],
)  # fmt: skip
def test_only_a_positive_finite_lease_in_the_job_answer_shortens_the_heartbeat(said: object, lease: float | None):
    assert lease_timeout_of({"id": "j", "lease_timeout_s": said}) == lease
