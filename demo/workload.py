"""What the demo submits: a workshop's burst of jobs from a group of users, through the public POST /api/jobs."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from importlib import resources
from typing import Any

import httpx
import structlog

from common.logs import error_text, scrubbed_excerpt
from common.urls import direct_transport
from demo.results import answer_detail

log = structlog.get_logger()

# Intentionally broken jobs show how a failure reaches the user: an unknown node, a missing model file.
BAD_WORKFLOWS = ("invalid_unknown_node", "sdxl_txt2img")


def load_workflow(name: str) -> dict[str, Any]:
    return json.loads(resources.files("demo.workflows").joinpath(f"{name}.json").read_text())


# A full queue (429) and a queue manager that cannot take the job now (503: a busy database, nothing changed).
WAITED_OUT = frozenset({429, 503})


class SubmissionFailed(Exception):
    """POST /api/jobs answered neither 2xx nor one of WAITED_OUT, or did not answer: what, scrubbed."""


@dataclass(frozen=True)
class Submission:
    at_s: float  # seconds after the start of the demo
    user_id: str
    workflow_name: str


def workshop_burst(jobs: int, users: int, bad_jobs: int, *, seed: int = 7, spread_s: float = 10.0) -> list[Submission]:
    """Most submissions land in the first seconds of the exercise, the rest trail off over `spread_s`."""
    rng = random.Random(seed)
    bad = {index: BAD_WORKFLOWS[n % len(BAD_WORKFLOWS)]
           for n, index in enumerate(sorted(rng.sample(range(jobs), min(bad_jobs, jobs))))}
    submissions = []
    for index in range(jobs):
        at = rng.uniform(0, spread_s / 5) if rng.random() < 0.7 else rng.uniform(0, spread_s)
        workflow = bad.get(index) or rng.choice(("quick", "slow"))
        submissions.append(Submission(round(at, 3), f"participant-{index % users + 1:02d}", workflow))
    return sorted(submissions, key=lambda s: s.at_s)


async def submit_all(
    queue_url: str, submissions: list[Submission], *, started: float, token: str | None = None,
    ids: list[str] | None = None,
) -> list[str]:
    """Submit each job at its time, as the participants would (with their token), each id added to `ids` as it is
    accepted (a demo stopped halfway reports those); a full queue (429) or a busy one (503) is waited out, never
    dropped; any other
    refusal, or no answer, is SubmissionFailed."""
    loop = asyncio.get_running_loop()
    workflows = {name: load_workflow(name) for name in {s.workflow_name for s in submissions}}
    ids = [] if ids is None else ids
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with httpx.AsyncClient(
        base_url=queue_url, timeout=10, headers=headers, transport=direct_transport(queue_url)
    ) as http:
        for submission in submissions:
            await asyncio.sleep(max(0.0, started + submission.at_s - loop.time()))
            body = {
                "user_id": submission.user_id,
                "workflow": workflows[submission.workflow_name],
                "metadata": {"demo_workflow": submission.workflow_name},
            }
            while True:
                try:
                    response = await http.post("/api/jobs", json=body)
                except httpx.HTTPError as exc:
                    raise SubmissionFailed(f"POST /api/jobs failed: {error_text(exc)}") from None
                if response.status_code not in WAITED_OUT:
                    break
                await asyncio.sleep(0.5)
            if not response.is_success:
                detail = scrubbed_excerpt(answer_detail(response), 240)
                raise SubmissionFailed(f"POST /api/jobs answered HTTP {response.status_code}: {detail}")
            ids.append(response.json()["id"])
    log.info("Workload submitted", jobs=len(ids))
    return ids
