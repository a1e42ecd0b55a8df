"""Peers that accept a connection and never answer: a tick ends at its deadline as a held decision, SIGTERM
ends the run within seconds, and a fleet falls back from the silent provider.

Measured before the deadline (SCALER_INTERVAL_S=15, both peers silent): the first tick lasted 158 s (5 Verda
attempts of 30 s plus back-off) and `comfy-scaler run` exited 155 s after SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from scaler.allocator import AllocatorConfig, ProviderSpec
from scaler.fleet import FleetBackend, Member
from scaler.ledger import RUNPOD_BILLING, VERDA_BILLING
from scaler.providers import LocalBackend, VerdaBackend
from scaler.providers.verda.client import VerdaClient

from ..conftest import run_module_to_exit
from .conftest import CALL_CUT_OFF_S, DEPLOYMENT, VERDA_ID, VERDA_SECRET, running_scaler, sigterm_and_wait

SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")


def silent_env(cli_env: dict[str, str], url: str, **settings: str) -> dict[str, str]:
    return {**os.environ, **cli_env, "QUEUE_MANAGER_URL": url, "VERDA_API_URL": url,
            "SCALER_PRICE_PER_REPLICA_HOUR": "2.3", "SCALER_INTERVAL_S": "1", **settings}


async def next_logged(process: asyncio.subprocess.Process, event: str) -> dict:
    assert process.stderr is not None
    while line := await process.stderr.readline():
        if line.startswith(b"{") and (entry := json.loads(line))["event"] == event:
            return entry
    raise AssertionError(f"the scaler exited before logging {event}")


async def test_a_tick_against_silent_peers_ends_at_its_deadline_and_holds(cli_env, silent_peer, scaling_patches):
    env = silent_env(cli_env, silent_peer, SCALER_TICK_DEADLINE_S="1")
    async with running_scaler(env) as process:
        async with asyncio.timeout(20):
            first = await next_logged(process, "Scaling decision")
            second = await next_logged(process, "Scaling decision")
        err = await sigterm_and_wait(process)
    for decision in (first, second):
        assert (decision["reason"], decision["apply"]) == ("hold_observation_failed", "skipped_read_failed")
        assert "no answer within the tick's 1 s" in decision["details"]["queue_error"]
        assert "no answer within the tick's 1 s" in decision["details"]["verda_error"]
    assert process.returncode == 0 and b"scaler_stopped" in err


async def test_sigterm_ends_a_run_waiting_on_silent_peers_within_seconds(cli_env, silent_peer):
    env = silent_env(cli_env, silent_peer, SCALER_TICK_DEADLINE_S="600")
    async with running_scaler(env) as process:
        async with asyncio.timeout(20):
            await next_logged(process, "scaler_started")
        await asyncio.sleep(0.5)  # the first tick now waits on both peers
        err = await sigterm_and_wait(process, timeout=15)
    assert process.returncode == 0
    assert b"scaler_tick_cut_short" in err and b"scaler_stopped" in err


async def test_a_price_list_that_never_answers_ends_the_start_within_a_tick(cli_env, silent_peer):
    """Before, `once` (from cron) waited out 5 Verda attempts of 30 s for the price before its tick even began."""
    env = {**silent_env(cli_env, silent_peer, SCALER_TICK_DEADLINE_S="1"), "QUEUE_MANAGER_URL": cli_env[
        "QUEUE_MANAGER_URL"]}
    del env["SCALER_PRICE_PER_REPLICA_HOUR"]
    code, err = await run_module_to_exit("scaler.cli", "once", env=env, cwd=Path.cwd(), timeout_s=20)
    assert code == 1
    [failed] = [json.loads(line) for line in err.splitlines() if '"price_lookup_failed"' in line]
    assert "no answer within 1 s (SCALER_TICK_DEADLINE_S)" in failed["error"]


async def test_a_fleet_provider_that_never_answers_is_degraded_and_fallen_back_from(silent_peer, wall):
    local = LocalBackend(dict(os.environ), command=SLEEPER, clock=wall, stop_timeout_s=2.0)
    silent = VerdaBackend(VerdaClient(VERDA_ID, VERDA_SECRET, base_url=silent_peer), DEPLOYMENT, clock=wall)
    config = AllocatorConfig(
        providers=(ProviderSpec("local", max_replicas=3, price_per_hour=2.99, commit_s=15.0),
                   ProviderSpec("verda", max_replicas=3, price_per_hour=2.30)),
        error_ticks=2, start_deadline_s=120.0, retry_after_s=60.0,
    )
    fleet = FleetBackend([Member(config.providers[0], local, RUNPOD_BILLING),
                          Member(config.providers[1], silent, VERDA_BILLING)], config, clock=wall,
                         member_timeout_s=CALL_CUT_OFF_S)
    try:
        async with asyncio.timeout(30):  # 2 ticks, each cut off twice on the silent Verda: 8 s
            for _ in range(2):
                await fleet.observe()
                await fleet.apply(2)
                wall.advance(15)
        assert fleet.state.health["verda"].degraded == "errors"
        assert fleet.state.targets["local"] == 2 and len(local.pids) == 2
        assert f"no answer within {CALL_CUT_OFF_S:g} s" in fleet.status_report(wall())["providers"]["verda"]["error"]
    finally:
        await fleet.aclose()


@pytest.mark.parametrize(("stop_signal", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["Ctrl-C", "SIGTERM"])
async def test_ctrl_c_during_stop_says_what_may_still_run_not_a_traceback(cli_env, silent_peer, stop_signal, code):
    """The operator who gives up waiting on a silent API and presses Ctrl-C got a KeyboardInterrupt traceback
    that did not say whether anything was stopped; a SIGTERM (`timeout 60 comfy-scaler stop`, a process
    manager) killed it without a word."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scaler.cli", "stop", "--all", env=silent_env(cli_env, silent_peer),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            await next_logged(process, "verda_authenticating")  # now waiting on the silent Verda
            process.send_signal(stop_signal)
            _, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == code
    assert b"stop: interrupted. Replicas may still be running" in err
    assert b"Traceback" not in err
