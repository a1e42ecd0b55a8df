"""A workflow node id longer than the report may name for each file (MAX_LABEL_CHARS): refused before ComfyUI is
sent the prompt. Before, the job failed only once ComfyUI had run it, the GPU time spent for nothing."""

from __future__ import annotations

import json

from worker.jobs import validate_workflow
from worker.outputs import MAX_LABEL_CHARS


def renamed(workflow: dict, node_id: str, new_id: str) -> dict:
    return json.loads(json.dumps(workflow).replace(f'"{node_id}"', json.dumps(new_id)))


async def test_a_node_id_too_long_for_the_report_fails_the_job_before_comfyui_runs_it(
    qm, comfy, make_worker, workflows
):
    job = qm.store.submit("alice", renamed(workflows["quick"], "3", "n" * 100_000))
    assert await make_worker(serverless_job_limit=1).run() == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job", report.body
    assert report.body["error"] == (
        "Invalid job: job 'workflow' node 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn has an id 100000 characters "
        f"long; at most {MAX_LABEL_CHARS}, as the report names it for each file"
    )
    assert comfy.prompts_received == [], "refused before ComfyUI"


def test_a_node_id_of_the_longest_length_is_accepted(workflows):
    workflow = renamed(workflows["quick"], "3", "n" * MAX_LABEL_CHARS)
    assert validate_workflow(workflow) is workflow
