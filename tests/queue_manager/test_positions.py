"""`position_in_queue` counted for the jobs shown only, and always the place `pop_next` would give them."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queue_manager import JobStatus, QueueManagerServer
from queue_manager.models import QueueMode
from queue_manager.store import (
    COUNTED_ONE_BY_ONE,
    PENDING_BEFORE_PRIORITY,
    PENDING_BEFORE_SEQ,
    PENDING_KEYS,
    PENDING_PER_USER_BEFORE,
    SHOWN_JOBS,
    Fence,
    JobStore,
)

from .conftest import FakeClock

submit = st.tuples(st.just("submit"), st.sampled_from("abcd"), st.integers(0, 3))
steps = st.lists(
    st.one_of(
        submit,
        submit,
        st.tuples(st.just("pop"), st.none(), st.none()),
        st.tuples(st.just("hand back"), st.none(), st.none()),
        st.tuples(st.just("cancel"), st.none(), st.none()),
        st.tuples(st.just("wait"), st.none(), st.sampled_from([0, 1, 30, 100])),
    ),
    min_size=20,
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(mode=st.sampled_from(list(QueueMode)), window_s=st.sampled_from([0, 50]), steps=steps)
def test_every_place_counted_is_the_place_in_the_full_ranking(
    mode: QueueMode, window_s: float, steps: list[tuple[str, Any, Any]]
) -> None:
    """An equivalence, so it passes on the old code too (it had no `positions_of`): each job's place counted
    alone, and a page's ranked from the index, equal the replay of `pending_positions`, after each step of a
    random queue (submits of four users at four priorities, pops, hand backs, cancels, the window passing)."""
    clock = FakeClock()
    store = JobStore(clock=clock, round_robin_window_s=window_s)
    try:
        for action, user, value in steps:
            if action == "submit":
                store.submit(user, {"1": {}}, priority=value)
            elif action == "pop":
                store.pop_next("w", mode)
            elif action == "hand back" and (running := store.list(status=JobStatus.RUNNING, limit=1)):
                store.release(running[0].id, Fence(), "gone", max_attempts=99)
            elif action == "cancel" and (pending := store.list(status=JobStatus.PENDING, limit=1)):
                store.cancel(pending[0].id)
            elif action == "wait":
                clock.advance(value)
            ranked = store.pending_positions(mode)
            everyone = [job.id for job in store.list(limit=1000)]
            assert store.positions_of(mode, everyone) == ranked, "a page (every job shown)"
            for job_id in everyone:
                assert store.positions_of(mode, [job_id]) == ({job_id: ranked[job_id]} if job_id in ranked else {})
            few = everyone[-COUNTED_ONE_BY_ONE:]
            assert store.positions_of(mode, few) == {job_id: ranked[job_id] for job_id in few if job_id in ranked}
            assert store.positions_of(mode, ["no-such-job"]) == {}
    finally:
        store.close()


def test_places_read_the_indexes_never_the_rows(tmp_path: Path) -> None:
    """Before: ranking read every pending job's row (10,000 of them: ~300 ms a submit, docs/benchmarks.md).
    Fails on the old code: these queries did not exist."""
    db = tmp_path / "jobs.db"
    JobStore(db).close()
    with contextlib.closing(sqlite3.connect(db)) as conn:

        def plan(query: str, *params: Any) -> str:
            return " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params))

        assert "COVERING INDEX" in plan(PENDING_BEFORE_SEQ, "pending", 5)
        by_priority = plan(PENDING_BEFORE_PRIORITY, "pending", 2, 5)
        assert "COVERING INDEX jobs_by_status (status=? AND priority<?)" in by_priority
        assert "COVERING INDEX jobs_by_status_user" in plan(PENDING_PER_USER_BEFORE, 5, "pending")
        for mode in QueueMode:
            assert "COVERING INDEX" in plan(PENDING_KEYS[mode], "pending"), mode
        assert "sqlite_autoindex_jobs" in plan(SHOWN_JOBS, '["a"]'), "each shown job by its id"


@pytest.mark.parametrize("mode", ["fifo", "priority", "round_robin"])
async def test_answers_show_the_places_pops_follow_without_ranking_the_queue(
    mode: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTP: each submit's answer, each job's status and listing pages (a few pending jobs, and more than
    are counted one by one) give the place the worker's pops then follow, and nothing ranks the whole queue.
    Fails on the old code: every answer showing a pending job called `pending_positions` (here: a 500)."""
    async with (
        QueueManagerServer(mode=mode, clock=clock, round_robin_window_s=50) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        replay = queue.store.pending_positions

        def no_full_ranking(_mode: QueueMode) -> dict[str, int]:
            raise AssertionError("ranked every pending job")

        monkeypatch.setattr(queue.store, "pending_positions", no_full_ranking)
        served = await client.post("/api/jobs", json={"user_id": "heavy", "workflow": {"1": {}}})
        assert (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json()["job"]["id"] == (
            served.json()["id"]
        )
        answered = {}
        for n, (user, priority) in enumerate([("heavy", 3), ("heavy", 1), ("a", 2), ("b", 0), ("a", 0)] * 2):
            clock.advance(n % 3 * 20)
            job = await client.post("/api/jobs", json={"user_id": user, "workflow": {"1": {}}, "priority": priority})
            assert job.status_code == 201, job.text
            answered[job.json()["id"]] = job.json()["position_in_queue"]
        shown = {job_id: (await client.get(f"/api/jobs/{job_id}")).json()["position_in_queue"] for job_id in answered}
        page = (await client.get("/api/jobs", params={"status": "pending", "limit": "1000"})).json()
        small = (await client.get("/api/jobs", params={"user_id": "b"})).json()
        assert len(page) > COUNTED_ONE_BY_ONE >= len(small)
        listed = {job["id"]: job["position_in_queue"] for job in page}
        assert {job["id"]: job["position_in_queue"] for job in small} == {job["id"]: listed[job["id"]] for job in small}
        monkeypatch.setattr(queue.store, "pending_positions", replay)
        assert listed == shown == replay(queue.mode)
        popped = []
        while job := (await client.get("/api/workers/next-job", params={"worker_id": "w"})).json()["job"]:
            popped.append(job["id"])
        assert [listed[job_id] for job_id in popped] == list(range(len(popped))), "places predict pops"
