"""A failed job says whose fault it was: its own workflow's, or this service's. Only ours may page someone
(ComfyJobsFailing, docs/monitoring.md); a user's broken workflows are a ticket."""

from __future__ import annotations

BROKEN_MODEL = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "broken.safetensors"}},
    "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bc"}},
}


def counted(worker) -> tuple[float, float]:
    metrics = worker.state.metrics
    failed = metrics.registry.get_sample_value("comfy_worker_jobs_total", {"outcome": "failed"}) or 0.0
    return failed, metrics.registry.get_sample_value("comfy_worker_workflow_failures_total") or 0.0


async def test_invalid_refused_and_failing_workflows_count_as_the_workflows_fault(qm, comfy, make_worker, workflows):
    jobs = [
        qm.store.submit("alice", {"prompt": {"1": {"class_type": "SaveImage", "inputs": {}}}}),  # invalid job
        qm.store.submit("alice", workflows["invalid_unknown_node"]),  # refused by ComfyUI's validation
        qm.store.submit("alice", BROKEN_MODEL),  # a node raised while running
        qm.store.submit("alice", workflows["quick"]),
    ]
    worker = make_worker()
    assert await worker.run() == 0
    assert [qm.store.get(job.id).status for job in jobs] == ["failed", "failed", "failed", "completed"]
    assert counted(worker) == (3, 3)


async def test_a_failure_of_ours_is_not_the_workflows_fault(qm, comfy, make_worker, workflows):
    qm.faults.inject("complete-job", status=413, body={"detail": "Request body too large"})
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker()
    assert await worker.run() == 0
    assert qm.store.get(job.id).status == "failed"
    assert counted(worker) == (1, 0)


async def test_a_job_over_its_deadline_is_not_counted_as_the_workflows_fault(qm, comfy, make_worker, workflows):
    # A heavy workflow or a hung ComfyUI look alike from here: the page errs on the side of looking.
    job = qm.store.submit("alice", workflows["slow"])
    worker = make_worker(job_timeout_s=0.3)
    assert await worker.run() == 0
    assert "timed out" in qm.store.get(job.id).error
    assert counted(worker) == (1, 0)
