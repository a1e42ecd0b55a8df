"""COMFYUI_OUTPUT_DIR on a slow volume (a network share dripping a result): each read was allowed as long as it took
and each MiB copied kept the delivery "moving", so the job was held for as long as the drip went on while its lease
was renewed. Each 32 MiB of a result (or the rest of it) now comes from there within HTTP_TIMEOUT_S, as over /view,
or the job is handed back as the volume's fault, not failed. The slow volume is a stand-in: files under ComfyUI's
output folder named drip* open as readers that give DRIP_BYTES every DRIP_EVERY_S, as a congested share would."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from standins.comfyui_nodes import NodeEnv

from .conftest import HEALTHY_WITHIN_S
from .test_outputs import hostile_save_image, one_output

DRIP_BYTES = 64 << 10
DRIP_EVERY_S = 0.1  # 640 KiB/s: a 64 MiB result takes 100 s, far past the bound the test waits for
RESULT_BYTES = 64 << 20


class DrippingFile:
    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def __enter__(self) -> DrippingFile:
        return self

    def __exit__(self, *_: object) -> None:
        self._raw.close()

    def fileno(self) -> int:
        return self._raw.fileno()

    def read(self, size: int = -1) -> bytes:
        time.sleep(DRIP_EVERY_S)
        return self._raw.read(DRIP_BYTES if size < 0 else min(size, DRIP_BYTES))


@pytest.fixture
def dripping_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.outputs

    real_open = worker.outputs._open_result

    def open_(path: Path) -> Any:
        opened = real_open(path)
        return DrippingFile(opened) if path.name.startswith("drip") else opened

    monkeypatch.setattr(worker.outputs, "_open_result", open_)


def result(name: str):
    def write(env: NodeEnv) -> dict:
        with open(env.output_dir / name, "wb") as out:
            out.truncate(RESULT_BYTES)
        return one_output(name)

    return write


async def test_a_result_dripped_from_comfyuis_output_folder_hands_the_job_back(
    qm, comfy, make_worker, workflows, dripping_volume
):
    hostile_save_image(comfy, result("drip.png"))
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(comfyui_output_dir=comfy.output_dir, http_timeout_s=HEALTHY_WITHIN_S,
                         serverless_job_limit=1)  # fmt: skip
    assert await asyncio.wait_for(worker.run(), 30) == 0  # the drip lasts 100 s
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "fail-job"
    assert report.body["error"].startswith(
        "Handed back: Output delivery failed on worker test-worker: could not deliver output drip.png of node 3: "
        "_SourceTooSlow: less than 32 MiB, and not the whole file, came from COMFYUI_OUTPUT_DIR within 2.5 s "
        "(HTTP_TIMEOUT_S)"
    ), report.body["error"]
    [copy] = [j for j in qm.store.list() if j.id != job.id]
    assert copy.status == "pending" and copy.metadata["attempt"] == 2
    assert worker.state.jobs_handed_back == 1 and worker.state.jobs_failed == 0
    assert comfy.view_requests == [], "read from the folder, not fetched over /view"


async def test_a_result_in_comfyuis_output_folder_at_disk_speed_is_delivered(
    qm, comfy, make_worker, workflows, tmp_path: Path, dripping_volume
):
    hostile_save_image(comfy, result("fast.bin"))  # two 32-MiB pieces, at disk speed
    job = qm.store.submit("alice", workflows["quick"])
    worker = make_worker(comfyui_output_dir=comfy.output_dir, http_timeout_s=HEALTHY_WITHIN_S,
                         serverless_job_limit=1)  # fmt: skip
    assert await asyncio.wait_for(worker.run(), 30) == 0
    [report] = qm.reports.landed(job.id)
    assert report.endpoint == "complete-job", report.body
    [output] = report.body["result"]["outputs"]
    assert output["bytes"] == RESULT_BYTES
    assert (tmp_path / "outputs" / output["path"]).stat().st_size == RESULT_BYTES
