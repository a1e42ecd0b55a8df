"""`comfy-scaler status` of a fleet tells what the running scaler does: the kill switch, the providers it degraded.

`status` is a process of its own (a dry run): it must read what the running scaler left in SCALER_LEDGER_FILE
and its kill switch file, never write to a provider, and say plainly when it cannot know.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from demo.providers import POD_BODY
from scaler.cli import main
from standins.runpod import FakeRunPod
from standins.verda import FakeVerda

from .conftest import RUNPOD_KEY

GPU = POD_BODY["gpu"]["id"]


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


@pytest.fixture
def runpod_fleet_env(cli_env, monkeypatch, fake_runpod: FakeRunPod, tmp_path: Path) -> dict[str, str]:
    """The operator's environment with RunPod (cheaper) and Verda as a fleet, and a ledger file."""
    extra = {
        "SCALER_PROVIDERS": "runpod,verda",
        "RUNPOD_API_KEY": RUNPOD_KEY,
        "RUNPOD_API_URL": fake_runpod.url,
        "RUNPOD_VOLUME_ID": "vol-demo",
        "RUNPOD_DATA_CENTER_IDS": "US-TX-3",
        "RUNPOD_GPU": GPU,
        "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.1.0",
        "SCALER_RUNPOD_PRICE_PER_HOUR": "0.44",
        "SCALER_VERDA_PRICE_PER_HOUR": "2.99",
        "SCALER_LEDGER_FILE": str(tmp_path / "ledger.json"),
        "SCALER_ALERT_DRY_RUN": "true",
    }
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    return {**cli_env, **extra}


def writes(fake_runpod: FakeRunPod, fake_verda: FakeVerda) -> int:
    """Every request but a read (or Verda's token) either provider has had."""
    requests = [*fake_runpod.requests, *fake_verda.requests]
    return sum(1 for r in requests if r.method != "GET" and not r.path.endswith("/oauth2/token"))


async def test_status_of_a_fleet_reports_the_kill_switch_as_the_running_scaler_holds_it(
    runpod_fleet_env, qm, fake_runpod: FakeRunPod, fake_verda: FakeVerda, tmp_path, capsys
):
    """Drill: RunPod and Verda, 2 jobs waiting, `comfy-scaler stop`: the running scaler held every provider at 0
    (`hold_paused`), and `status` printed `change 0 → 1: wake_from_zero`, deployment `healthy`: RunPod has no
    paused state a fresh process could read, and the dry run did not look at the kill switch file."""
    for _ in range(2):
        qm.store.submit("alice", {"1": {"class_type": "Noop", "inputs": {}}})
    assert await cli("stop") == 0
    stop_file = tmp_path / "ledger.json.stopped"
    assert stop_file.exists()
    written, ledger = writes(fake_runpod, fake_verda), (tmp_path / "ledger.json").read_bytes()
    capsys.readouterr()

    assert await cli("status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queue"]["pending_jobs"] == 2
    decision = report["decision"]
    assert (decision["reason"], decision["desired"], decision["changed"]) == ("hold_paused", 0, False), decision
    assert report["deployment"]["status"] == "paused"
    assert report["fleet"]["kill_switch"] == str(stop_file)

    assert await cli("status") == 0
    out = capsys.readouterr().out
    assert "keep 0 → 0: hold_paused" in out and "kill switch on" in out, out

    assert stop_file.exists(), "status only reports the kill switch"
    assert writes(fake_runpod, fake_verda) == written, "status wrote to a provider"
    assert fake_runpod.live_pods() == []
    assert (tmp_path / "ledger.json").read_bytes() == ledger, "status wrote the ledger file"

    assert await cli("resume") == 0
    capsys.readouterr()
    assert await cli("status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decision"]["reason"] == "wake_from_zero" and report["fleet"]["kill_switch"] is None

