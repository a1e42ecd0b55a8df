"""The fault-injection load run, reduced for CI (bench/fault_run.py runs the full one): real replicas
(supervisor + ComfyUI simulator each) and the queue manager's own process, through every fault of the full run:
worker SIGKILL and SIGTERM, ComfyUI killed mid-job, queue manager restarted and SIGKILLed (once together with a
worker's SIGTERM)."""

from __future__ import annotations

import pytest

from bench.fault_run import FaultRun, RunConfig


@pytest.mark.timeout(180)  # ~25 s alone; the margin is for a loaded 2-core runner
async def test_faults_lose_nothing_report_nothing_twice_and_fail_nothing() -> None:
    config = RunConfig(jobs=40, replicas=2, users=4, node_seconds=0.02, lease_timeout_s=1.5, cycles=1, timeout_s=150)
    summary = await FaultRun(config).run()
    assert summary["faults_skipped"] == [], summary
    assert summary["time_to_drain_s"] is not None, summary
    assert (summary["lost"], summary["not_terminal"], summary["double_reports"]) == (0, 0, 0), summary
    assert summary["outputs_mismatched"] == 0, summary
    assert summary["failed"] == 0, summary["failure_reasons"]
    assert summary["completed"] == config.jobs
