"""Hostile jobs through a real worker (ComfyUI simulator, embedded queue manager, loopback): each ends with one
clear outcome, nothing is written outside OUTPUTS_PATH, and the worker keeps serving the next job."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest

from queue_manager import JobStatus, QueueManagerServer
from standins.comfyui import ComfyUISimulator
from worker.config import load_settings
from worker.main import Worker

from ..worker.conftest import HEALTHY_TIMINGS

QUICK: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "quick"}},
}


def _with(node: str, field: str, value: Any) -> dict[str, Any]:
    workflow = copy.deepcopy(QUICK)
    workflow[node]["inputs"][field] = value
    return workflow


# case id -> (user_id, workflow, expected final status, text the error must contain)
CASES: dict[str, tuple[str, Any, str, str | None]] = {
    "prefix-climbs-out": ("alice", _with("3", "filename_prefix", "../../../../escape"), "failed", None),
    "prefix-absolute": ("alice", _with("3", "filename_prefix", "/tmp/hostile-abs"), "failed", None),
    "user-id-traversal": ("../../etc", QUICK, "failed", "user_id"),
    "user-id-dotdot": ("..", QUICK, "failed", "user_id"),
    "user-id-slash": ("a/b", QUICK, "failed", "user_id"),
    "link-to-missing-node": ("alice", _with("3", "images", ["99", 0]), "failed", "99"),
    "node-not-an-object": ("alice", {"1": "EmptyImage"}, "failed", "1"),
    "class-type-missing": ("alice", {"1": {"inputs": {}}}, "failed", "class_type"),
    "unknown-node-class": ("alice", {"1": {"class_type": "RmRfSlash", "inputs": {}}}, "failed", "RmRfSlash"),
    "good-job-after-all-that": ("alice", QUICK, "completed", None),
}


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hostile-jobs")
    return asyncio.run(_run_all(root))


async def _run_all(root: Path) -> dict[str, Any]:
    before = set(Path("/tmp").iterdir())
    async with QueueManagerServer() as qm:
        sim = ComfyUISimulator(root / "comfy-output", root / "comfy-temp")
        await sim.start()
        try:
            ids = {case: qm.store.submit(user, workflow).id for case, (user, workflow, _, _) in CASES.items()}
            settings = load_settings(
                queue_manager_url=qm.url, comfyui_url=sim.url, outputs_path=root / "outputs", poll_interval_s=0.02,
                serverless_mode=True, serverless_max_idle_polls=3, job_timeout_s=10, comfyui_startup_timeout_s=5,
                report_retry_budget_s=5, shutdown_grace_s=2, worker_id="hostile-worker", health_port=0,
            )  # fmt: skip
            exit_code = await Worker(settings, timings=HEALTHY_TIMINGS).run()
            jobs = {case: qm.store.get(job_id) for case, job_id in ids.items()}
        finally:
            await sim.stop()
    allowed = (root / "outputs", root / "comfy-output", root / "comfy-temp")
    escaped = [p for p in root.rglob("*") if p.is_file() and not any(p.is_relative_to(a) for a in allowed)]
    escaped += [p for p in set(Path("/tmp").iterdir()) - before if "hostile" in p.name or "escape" in p.name]
    return {"exit_code": exit_code, "jobs": jobs, "escaped": escaped}


@pytest.mark.parametrize("case", CASES.keys())
def test_hostile_job_ends_once_clearly_and_writes_nothing_outside(outcome: dict[str, Any], case: str) -> None:
    _, _, status, named = CASES[case]
    job = outcome["jobs"][case]
    assert job.status is JobStatus(status), job.error
    if named is not None:
        assert named in (job.error or ""), job.error
    assert outcome["escaped"] == []
    assert outcome["exit_code"] == 0, "the worker served every job and left on its idle timeout"
