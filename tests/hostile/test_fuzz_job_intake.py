"""Property-based fuzzing of what the worker does with a job the queue hands it (worker/jobs.py, worker/main.py).

Generated hostile jobs (an id, user_id, workflow, metadata or attempt of any JSON type; workflows with odd nodes,
inputs and links) meet the worker's intake: the pure checks are fuzzed directly (many examples), then one batch of
generated jobs runs through a real worker, embedded queue manager and ComfyUI stand-in on loopback: each ends
exactly once, failed with an error naming the problem, and the worker takes the next job. Derandomized: each
run is the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from queue_manager import JobStatus, QueueManagerServer
from standins.comfyui import ComfyUISimulator
from worker.config import load_settings
from worker.jobs import InvalidJob, Job, UnreportableJob, attempt_of, job_id_of, parse_job
from worker.main import Worker
from worker.reports import _previous_faults, _previous_reasons

from ..conftest import LoopThread
from ..worker.conftest import HEALTHY_TIMINGS

PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from(["", " ", "\x00", "..", "../x", "a/b", "EmptyImage", "SaveImage", "1", "requeued_from"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children,
                                                                                max_size=4)),
    max_leaves=15,
)
node_ids = st.one_of(st.sampled_from(["1", "2", "3"]), st.text(max_size=4))
links = st.tuples(st.one_of(node_ids, st.integers(0, 3), json_values), st.one_of(st.integers(-1, 3), json_values))
inputs = st.one_of(
    st.dictionaries(st.text(max_size=6), st.one_of(json_values, links.map(list)), max_size=4), json_values
)
nodes = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"class_type": st.one_of(st.sampled_from(["EmptyImage", "SaveImage", ""]), json_values),
                      "inputs": inputs, "_meta": json_values}
    ),
    json_values,
)
workflows = st.one_of(st.dictionaries(node_ids, nodes, max_size=5), json_values,
                      st.fixed_dictionaries({"nodes": st.lists(json_values), "links": json_values}),
                      st.fixed_dictionaries({"prompt": st.dictionaries(node_ids, nodes)}))
metadata = st.one_of(
    json_values,
    st.fixed_dictionaries({"requeued_from": json_values},
                          optional={"attempt": json_values, "faults": json_values, "requeue_reasons": json_values}),
)
ids = st.one_of(st.uuids().map(str), json_values, st.sampled_from(["", " ", "..", "a/b", "x" * 200, "\ud800"]))
raw_jobs = st.fixed_dictionaries(
    {},
    optional={"id": ids, "user_id": st.one_of(st.just("alice"), json_values), "workflow": workflows,
              "metadata": metadata, "attempt": st.one_of(st.integers(-2, 2**70), json_values)},
)
anything = st.one_of(raw_jobs, json_values)


@pytest.mark.timeout(180)  # ~20 s alone; a loaded 2-core machine overran 60 s (cut off mid-example, it reads as
# FlakyStrategyDefinition)
@settings(max_examples=1500, deadline=None, derandomize=True, phases=PHASES)
@given(anything)
def test_intake_names_the_problem_or_takes_the_job(raw: Any) -> None:
    """Whatever the queue hands over, intake raises only its own two errors, each naming the field, or yields a
    Job whose derived counts (attempt, earlier faults and reasons) are computed without an exception."""
    attempt = attempt_of(raw)
    assert attempt is None or (type(attempt) is int and attempt >= 1)
    try:
        job_id = job_id_of(raw)
    except UnreportableJob as exc:
        assert "job" in str(exc)
        return
    try:
        job = parse_job(raw)
    except InvalidJob as exc:
        assert str(exc).startswith("job '"), exc  # names the field: job 'workflow' ..., job 'user_id' ...
        return
    assert isinstance(job, Job) and job.id == job_id
    assert job.attempt_number >= 1
    faults = _previous_faults(job)
    assert 0 <= faults <= job.attempt_number - 1
    assert all(isinstance(reason, str) for reason in _previous_reasons(job))


# -- end to end: a batch of generated jobs through a real worker --------------------------------------------

QUICK: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "quick"}},
}


def _sendable(value: Any) -> bool:
    """What the queue manager can send: strict JSON (no NaN or infinity: its HTTP API refuses them at submission)
    in UTF-8 (no lone surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except (UnicodeEncodeError, ValueError):
        return False
    return True


queued = st.tuples(
    st.one_of(st.just("alice"), st.text(max_size=8)),  # the store takes any text; the manager's HTTP refuses it
    st.one_of(st.just(QUICK), workflows),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
).filter(_sendable)
handed_over = raw_jobs.filter(_sendable)  # answered by next-job as is: any id, any field of any type


@dataclass
class Peers:
    loop: LoopThread
    queue: QueueManagerServer
    comfy: ComfyUISimulator
    root: Path

    def worker(self) -> Worker:
        settings = load_settings(
            queue_manager_url=self.queue.url, comfyui_url=self.comfy.url, outputs_path=self.root / "outputs",
            poll_interval_s=0.02, serverless_mode=True, serverless_max_idle_polls=3, job_timeout_s=10,
            comfyui_startup_timeout_s=5, report_retry_budget_s=5, shutdown_grace_s=2, worker_id="fuzz-worker",
            health_port=0,
        )  # fmt: skip
        return Worker(settings, timings=HEALTHY_TIMINGS)


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    root = tmp_path_factory.mktemp("fuzz-intake")
    with LoopThread() as loop:
        peers = Peers(loop, QueueManagerServer(test_hooks=True),
                      ComfyUISimulator(root / "comfy-output", root / "comfy-temp"), root)
        loop.run(peers.queue.start())
        loop.run(peers.comfy.start())
        try:
            yield peers
        finally:
            loop.run(peers.comfy.stop())
            loop.run(peers.queue.stop())


def _expected_invalid(raw: dict[str, Any]) -> str | None:
    try:
        parse_job(raw)
    except InvalidJob as exc:
        return f"Invalid job: {exc}"
    return None


@settings(max_examples=10, deadline=None, derandomize=True, phases=PHASES,
          suppress_health_check=[HealthCheck.filter_too_much,
                                 HealthCheck.too_slow])
@given(st.lists(queued, min_size=4, max_size=6), st.lists(handed_over, max_size=2))
def test_each_hostile_job_ends_once_and_the_worker_takes_the_next(
    peers: Peers, batch: list[tuple[str, Any, dict[str, Any]]], handed: list[dict[str, Any]]
) -> None:
    """Jobs planted in the store (any user_id text, any workflow, any metadata) and jobs next-job answers as is
    (any id, any field of any type), then a good job: each planted job ends exactly once (one report), failed with
    "Invalid job: <the field>" when intake refuses it; the worker serves the good job last and exits idle."""
    queue = peers.queue
    queue.reports.clear()
    for raw in handed:
        queue.faults.inject("next-job", status=200, body={"job": raw})
    planted = [queue.store.submit(user, workflow, metadata=metadata) for user, workflow, metadata in batch]
    good = queue.store.submit("alice", QUICK)
    exit_code = peers.loop.run(peers.worker().run(), timeout_s=60)
    assert exit_code == 0, "the worker served every job and left on its idle timeout"
    for job in planted:
        final = queue.store.get(job.id)
        reports = queue.reports.landed(job.id)
        assert len(reports) == 1, (final.status, [(r.endpoint, r.status) for r in reports])
        assert final.status in (JobStatus.COMPLETED, JobStatus.FAILED), final
        raw = {"id": job.id, "workflow": job.workflow, "user_id": job.user_id, "metadata": job.metadata,
               "attempt": 1}
        invalid = _expected_invalid(raw)
        if invalid is not None:
            assert (final.status, final.error) == (JobStatus.FAILED, invalid)
        elif final.status is JobStatus.FAILED:
            assert final.error and final.error.strip()
    assert queue.store.get(good.id).status is JobStatus.COMPLETED
