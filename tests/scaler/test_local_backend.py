"""LocalBackend with real processes: real workers against the ComfyUI simulator, and signal-level behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from scaler.allocator import AllocatorConfig, DegradedReason, ProviderHealth, ProviderSpec
from scaler.cli import main
from scaler.config import load_settings
from scaler.health_record import BackendHealth
from scaler.loop import ScalerLoop, saved_health
from scaler.policy import ScalingConfig
from scaler.providers import BackendView, LocalBackend
from scaler.providers.local import FAILED_START_S, MIN_READY_S, RESTART_BACKOFF_MAX_S, restart_delay_s
from scaler.queue_status import QueueStatusReader
from scaler.wiring import worker_environment
from standins.comfyui import ComfyUISimulator

from ..conftest import NOBODY, ManualClock
from .conftest import operator_env_with, running_scaler, sigterm_and_wait

# A stand-in replica: marks itself ready (after installing its SIGTERM disposition), then sleeps.
SLEEPER = (
    "import os, pathlib, signal, sys, time\n"
    "if os.environ.get('IGNORE_SIGTERM'): signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "pathlib.Path(os.environ['MARK_DIR'], os.environ['WORKER_ID']).touch()\n"
    "time.sleep(60)\n"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def comfy(tmp_path: Path):
    sim = ComfyUISimulator(tmp_path / "comfy-output", tmp_path / "comfy-temp")
    await sim.start()
    yield sim
    await sim.stop()


def sleeper_backend(tmp_path: Path, **options) -> LocalBackend:
    env = {**os.environ, "MARK_DIR": str(tmp_path)}
    if options.pop("ignore_sigterm", False):
        env["IGNORE_SIGTERM"] = "1"
    return LocalBackend(env, command=(sys.executable, "-c", SLEEPER), **options)


async def test_workers_process_a_burst_and_the_count_returns_to_zero(qm, comfy, workflows, tmp_path, wait):
    env = {
        **os.environ,
        "QUEUE_MANAGER_URL": qm.url,
        "COMFYUI_URL": comfy.url,
        "OUTPUTS_PATH": str(tmp_path / "outputs"),
        "WORKER_POLL_INTERVAL": "0.05",
        "SERVERLESS_MAX_IDLE_POLLS": "40",
        "SHUTDOWN_GRACE_S": "2",
        "COMFYUI_STARTUP_TIMEOUT_S": "10",
        "LOG_FORMAT": "json",
    }
    backend = LocalBackend(env, log_dir=tmp_path / "logs", stop_timeout_s=5)
    config = ScalingConfig(
        max_replicas=2, billing_aware=False, stabilization_window_s=0.3, scale_down_cooldown_s=0, idle_to_zero_s=0.8
    )
    stop = asyncio.Event()
    try:
        async with QueueStatusReader(qm.url) as reader:
            loop = ScalerLoop(config, backend, reader, interval_s=0.1)
            task = asyncio.create_task(loop.run(stop))
            jobs = [qm.store.submit("alice", workflows["quick"]) for _ in range(3)]
            await wait(lambda: len(backend.pids) == 2, timeout=5)
            await wait(lambda: all(qm.store.get(job.id).status == "completed" for job in jobs), timeout=30)
            await wait(lambda: loop.on_backend == 0 and backend.pids == [], timeout=15)
            stop.set()
            await task
    finally:
        await backend.aclose()
    assert backend.starts >= 2
    local_ids = {f"local-worker-{n}" for n in range(1, backend.starts + 1)}
    assert {qm.store.get(job.id).worker_id for job in jobs} <= local_ids
    assert not [pid for pid in backend.pids_started if alive(pid)], "no worker outlives the backend"


async def test_scale_down_stops_the_newest_and_an_exited_replica_is_restarted(tmp_path, wait):
    backend = sleeper_backend(tmp_path)
    try:
        await backend.apply(3)
        await wait(lambda: len(list(tmp_path.glob("local-worker-*"))) == 3, timeout=10)
        assert await backend.apply(1) is True
        assert [r.id for r in (await backend.observe()).replicas] == ["local-worker-1"]
        assert await backend.apply(1) is False

        os.kill(backend.pids_started[0], 9)  # the replica dies on its own: the platform restores the count
        async def replaced() -> bool:
            return [r.id for r in (await backend.observe()).replicas] == ["local-worker-4"]

        async with asyncio.timeout(5):
            while not await replaced():
                await asyncio.sleep(0.02)
        assert backend.starts == 4
    finally:
        await backend.aclose()
    assert not [pid for pid in backend.pids_started if alive(pid)]


# A stand-in worker with the worker's own health server: on a port the OS picks, written to HEALTH_PORT_FILE as
# `python -m worker` writes it, /health saying the phase $PHASE. It marks itself ready once it serves, and on SIGTERM
# stops the server (which removes the file). Without $PHASE it serves nothing: a worker whose server is not up yet.
PHASED = (
    "import asyncio, os, pathlib, signal\n"
    "from health.server import HealthServer\n"
    "from worker.state import Phase, WorkerState\n"
    "async def main():\n"
    "    stop, server = asyncio.Event(), None\n"
    "    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)\n"
    "    if phase := os.environ['PHASE']:\n"
    "        state = WorkerState(os.environ['WORKER_ID'], 'local', 'test', 10, True, phase=Phase(phase))\n"
    "        port_file = os.environ.get('HEALTH_PORT_FILE')  # a backend that gives none: served all the same\n"
    "        server = HealthServer(state, host='127.0.0.1', port=0, port_file=port_file and pathlib.Path(port_file))\n"
    "        await server.start()\n"
    "    pathlib.Path(os.environ['MARK_DIR'], os.environ['WORKER_ID']).touch()\n"
    "    await stop.wait()\n"
    "    if server is not None:\n"
    "        await server.stop()\n"
    "asyncio.run(main())\n"
)


async def phased_workers(tmp_path: Path, wait, phases: list[str]) -> LocalBackend:
    """A backend running one PHASED worker per phase ("" for none), local-worker-1 the oldest, all serving."""
    marks = tmp_path / "ready"
    marks.mkdir()
    backend = LocalBackend({**os.environ, "MARK_DIR": str(marks)}, command=(sys.executable, "-c", PHASED),
                           replica_env=lambda replica: {"PHASE": phases[int(replica.rsplit("-", 1)[1]) - 1]})
    await backend.apply(len(phases))
    await wait(lambda: len(list(marks.iterdir())) == len(phases), timeout=30)
    return backend


async def scale_down_to(backend: LocalBackend, replicas: int) -> tuple[str, str | None]:
    """The one replica a scale-down to ``replicas`` stopped, with the phase it was stopped in."""
    with capture_logs() as logs:
        await backend.apply(replicas)
    [stopping] = [e for e in logs if e["event"] == "local_replica_stopping"]
    return stopping["replica"], stopping.get("phase")


async def test_a_scale_down_stops_an_idle_worker_and_keeps_the_busy_one(tmp_path, wait):
    """A scale-down stopped the newest worker, busy or not: its job was handed back and started over (in the
    simulator's workshop, 38 jobs restarted in five days, against 2 stopping idle workers first)."""
    backend = await phased_workers(tmp_path, wait, ["idle", "idle", "busy"])
    try:
        assert await scale_down_to(backend, 2) == ("local-worker-2", "idle")
        assert [r.id for r in (await backend.observe()).replicas] == ["local-worker-1", "local-worker-3"]
        port_files = backend._port_files
    finally:
        await backend.aclose()
    assert port_files is not None and not port_files.path.exists(), "the backend's folder of port files is removed"


async def test_a_scale_down_stops_starting_then_idle_then_unknown_workers_and_busy_ones_last(tmp_path, wait):
    """Between idle and busy: a worker that wrote no port file yet, and one draining; the newest first within each."""
    backend = await phased_workers(tmp_path, wait, ["starting", "idle", "", "draining", "busy"])
    try:
        stopped = [await scale_down_to(backend, replicas) for replicas in (4, 3, 2, 1)]
        assert stopped == [("local-worker-1", "starting"), ("local-worker-2", "idle"),
                           ("local-worker-4", "draining"), ("local-worker-3", None)]
        assert [r.id for r in (await backend.observe()).replicas] == ["local-worker-5"]
    finally:
        await backend.aclose()


async def test_pause_stops_every_replica_until_resume(tmp_path):
    backend = sleeper_backend(tmp_path)
    try:
        await backend.apply(2)
        await backend.pause()
        view = await backend.observe()
        assert (view.status, view.replicas) == ("paused", ())
        await backend.resume()
        assert len((await backend.observe()).replicas) == 2
    finally:
        await backend.aclose()


async def test_aclose_kills_what_ignores_sigterm(tmp_path, wait):
    backend = sleeper_backend(tmp_path, ignore_sigterm=True, stop_timeout_s=0.5)
    await backend.apply(2)
    await wait(lambda: len(list(tmp_path.glob("local-worker-*"))) == 2, timeout=10)
    began = time.monotonic()
    await backend.aclose()
    assert time.monotonic() - began >= 0.5, "SIGTERM was given its time first"
    assert backend.pids == []
    assert not [pid for pid in backend.pids_started if alive(pid)]


# A scaler process with two local replicas that each write their pid, then wait to be killed.
SCALER_WITH_TWO_REPLICAS = (
    "import asyncio, os, sys\n"
    "from scaler.providers import LocalBackend\n"
    "replica = 'import os, pathlib, time; pathlib.Path(os.environ[\"MARK_DIR\"], str(os.getpid())).touch(); "
    "time.sleep(60)'\n"
    "async def main():\n"
    "    backend = LocalBackend(dict(os.environ), command=(sys.executable, '-c', replica))\n"
    "    await backend.apply(2)\n"
    "    await asyncio.sleep(60)\n"
    "asyncio.run(main())\n"
)


async def test_workers_do_not_outlive_a_scaler_killed_with_sigkill(tmp_path, wait):
    """kill -9 of `comfy-scaler run` (OOM killer, a crash) left its local workers running in their own sessions:
    restarted, it started 2 more beside them (4 workers for a count of 2, on one machine's GPU)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "MARK_DIR": str(marks), "TMPDIR": str(tmp_path)}  # the folder of port files it leaves
    scaler = await asyncio.create_subprocess_exec(sys.executable, "-c", SCALER_WITH_TWO_REPLICAS, env=env)
    try:
        await wait(lambda: len(list(marks.iterdir())) == 2, timeout=10)
        pids = [int(mark.name) for mark in marks.iterdir()]
        assert all(alive(pid) for pid in pids)
        scaler.kill()
        await scaler.wait()
        await wait(lambda: not [pid for pid in pids if alive(pid)], timeout=5)
    finally:
        if scaler.returncode is None:
            scaler.kill()
        for mark in marks.iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(mark.name), signal.SIGKILL)


async def test_a_start_removes_the_port_files_folder_a_killed_scaler_left_and_keeps_a_running_one_s(
    tmp_path, wait, monkeypatch
):
    """A scaler killed outright left its folder of port files in $TMPDIR, one more for each such end, forever. The
    next start removes those, and never the folder of a scaler still running (two on one machine) or one without a
    lock file (an earlier version's, or one being made)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def folders() -> set[Path]:
        return set(tmp_path.glob("local-worker-health-ports-*"))

    async def scaler_with_workers(marks: Path) -> asyncio.subprocess.Process:
        marks.mkdir()
        env = {**os.environ, "MARK_DIR": str(marks), "TMPDIR": str(tmp_path)}
        scaler = await asyncio.create_subprocess_exec(sys.executable, "-c", SCALER_WITH_TWO_REPLICAS, env=env)
        await wait(lambda: len(list(marks.iterdir())) == 2, timeout=10)
        return scaler

    earlier_version = tmp_path / "local-worker-health-ports-earlier"
    earlier_version.mkdir()
    scalers = []
    backend = sleeper_backend(tmp_path)
    try:
        scalers.append(await scaler_with_workers(tmp_path / "running"))
        [running_s] = folders() - {earlier_version}
        scalers.append(killed := await scaler_with_workers(tmp_path / "killed"))
        assert len(folders()) == 3, "a second scaler on the machine keeps the first one's folder"
        killed.kill()
        await killed.wait()
        with capture_logs() as logs:
            await backend.apply(1)
        assert len(folders()) == 3, "the killed scaler's folder went, the backend's own came"
        [removed] = [e for e in logs if e["event"] == "local_abandoned_port_folders_removed"]
        assert (removed["count"], removed["folder"]) == (1, str(tmp_path))
    finally:
        await backend.aclose()
        for scaler in scalers:
            with contextlib.suppress(ProcessLookupError):
                scaler.kill()
            await scaler.wait()
    assert folders() == {earlier_version, running_s}, "a scaler killed outright left its folder"


def test_a_fifo_planted_as_a_port_folders_lock_file_does_not_hang_the_start(tmp_path):
    """The temporary folder is shared: a FIFO planted as `local-worker-health-ports-*/owner.lock` (in a folder of
    another user's, or of this one's) held every LocalBackend start in its open for good; now it is passed by, and
    an abandoned folder beside it still goes."""
    for owner in ("another-user", "this-user"):
        planted = tmp_path / f"local-worker-health-ports-{owner}"
        planted.mkdir()
        os.mkfifo(planted / "owner.lock")
        if owner == "another-user" and os.getuid() == 0:
            os.chown(planted, NOBODY, NOBODY)
    abandoned = tmp_path / "local-worker-health-ports-abandoned"
    abandoned.mkdir()
    (abandoned / "owner.lock").touch()
    start = (
        "import asyncio, os, sys\n"
        "from scaler.providers import LocalBackend\n"
        "async def main():\n"
        "    backend = LocalBackend(dict(os.environ), command=(sys.executable, '-c', 'import time; time.sleep(60)'))\n"
        "    await backend.apply(1)\n"
        "    await backend.aclose()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", start], env=env, check=True, timeout=30)
    assert not abandoned.exists()
    assert sorted(p.name for p in tmp_path.glob("local-worker-health-ports-*")) == [
        "local-worker-health-ports-another-user", "local-worker-health-ports-this-user"
    ]


def fleet_workers_environment(monkeypatch, tmp_path, **queue_tokens: str) -> dict[str, str]:
    """The local workers' environment of a fleet local,verda,runpod, every secret in the scaler's environment."""
    monkeypatch.chdir(tmp_path)
    environ = {
        "PATH": os.environ["PATH"],
        "QUEUE_MANAGER_URL": "http://127.0.0.1:9",
        **queue_tokens,
        "VERDA_CLIENT_ID": "verda-id-not-for-workers",
        "VERDA_CLIENT_SECRET": "verda-secret-not-for-workers",
        "RUNPOD_API_KEY": "runpod-key-not-for-workers",
        "SCALER_ALERT_WEBHOOK_URL": "https://hooks.example.com/not-for-workers",
        "SCALER_PROVIDERS": "local,verda,runpod",
        "HF_TOKEN": "the-workers-own",
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return worker_environment(load_settings(), environ)


def test_local_workers_get_the_queue_credentials_but_not_the_cloud_accounts(monkeypatch, tmp_path):
    """A worker needs the queue's credentials only."""
    env = fleet_workers_environment(monkeypatch, tmp_path, QUEUE_MANAGER_TOKEN="queue-token")
    assert env["QUEUE_MANAGER_TOKEN"] == "queue-token" and env["QUEUE_MANAGER_URL"] == "http://127.0.0.1:9"
    assert env["HF_TOKEN"] == "the-workers-own" and env["PATH"] == os.environ["PATH"]
    assert "not-for-workers" not in repr(env)
    assert "VERDA_CLIENT_ID" not in env


def test_local_workers_get_no_credential_of_the_scalers_in_any_case(monkeypatch, tmp_path):
    """The settings read variables in any case (runpod_api_key is RUNPOD_API_KEY); only the upper-case names were
    withheld, so a lower- or mixed-case cloud key or participants' token went into every local worker."""
    monkeypatch.chdir(tmp_path)
    environ = {"PATH": os.environ["PATH"], "queue_manager_url": "http://127.0.0.1:9",
               "queue_manager_token": "participants-not-for-workers", "Queue_Manager_Worker_Token": "workers-token",
               "runpod_api_key": "runpod-key-not-for-workers", "Verda_Client_Secret": "verda-secret-not-for-workers",
               "SCALER_PROVIDERS": "local,runpod"}
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    env = worker_environment(load_settings(), environ)
    assert env == {"PATH": os.environ["PATH"], "QUEUE_MANAGER_URL": "http://127.0.0.1:9",
                   "QUEUE_MANAGER_TOKEN": "workers-token", "SCALER_PROVIDERS": "local,runpod"}


# A replica that writes its id to its log and exits at once (an idle worker, quicker); local-worker-1 stays.
ONE_RUN = ("sh", "-c", 'echo "$WORKER_ID"; if [ -n "$STAY" ]; then exec sleep 600; fi')


async def restart_until(backend: LocalBackend, starts: int) -> None:
    async with asyncio.timeout(120):
        while backend.starts < starts:
            await backend.observe()  # restarts the replica that exited, as the scaler's tick does
            await asyncio.sleep(0.002)


async def test_a_long_running_backend_keeps_only_its_newest_log_files_and_the_running_ones(tmp_path, wait):
    """Each restart of an idle worker (one every ~22 s) created a new <log_dir>/local-worker-<N>.log and none was
    ever removed: ~3,900 files a day in SCALER_LOCAL_LOG_DIR, for ever."""
    logs = tmp_path / "logs"
    logs.mkdir()
    foreign = {"notes.txt": "mine", "other-worker-1.log": "another backend's", "local-worker-3.log.1": "rotated",
               "local-worker-old.log": "kept by hand"}
    for name, text in foreign.items():
        (logs / name).write_text(text)
    earlier_run = logs / "local-worker-900.log"  # this backend's name, left by a scaler that ran before
    earlier_run.write_text("local-worker-900\n")
    os.utime(earlier_run, (1, 1))
    backend = LocalBackend(os.environ, command=ONE_RUN, log_dir=logs, log_files_kept=5,
                           replica_env=lambda replica: {"STAY": "1"} if replica == "local-worker-901" else {})
    try:
        await backend.apply(2)
        await restart_until(backend, 60)
        files, last = {path.name for path in logs.iterdir()}, 900 + backend.starts
        # The replica started last may not have written its line yet: closing now would kill it before it does.
        await wait(lambda: (logs / f"local-worker-{last}.log").read_text(), timeout=10)
    finally:
        await backend.aclose()
    newest = {f"local-worker-{n}.log" for n in range(last - 3, last + 1)}
    assert files - set(foreign) == {"local-worker-901.log"} | newest, "the running replica's and the 4 newest"
    assert all((logs / name).read_text() == f"{name.removesuffix('.log')}\n" for name in newest)
    assert {name: (logs / name).read_text() for name in foreign} == foreign


# A replica that starts a helper in its process group (as the supervisor starts ComfyUI), records the helper's
# pid, and exits on SIGTERM without stopping it.
WITH_A_HELPER = (
    "import os, pathlib, subprocess, sys, time\n"
    "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "pathlib.Path(os.environ['MARK_DIR'], str(helper.pid)).touch()\n"
    "time.sleep(600)\n"
)


async def test_what_a_scaled_down_replica_left_in_its_group_does_not_outlive_it(tmp_path, wait):
    """A replica stopped by a scale-down that exited on SIGTERM was dropped without its process group being
    killed: a helper it left (a supervisor's ComfyUI) ran on after the replica and after the backend."""
    backend = LocalBackend({**os.environ, "MARK_DIR": str(tmp_path)}, command=(sys.executable, "-c", WITH_A_HELPER))
    try:
        await backend.apply(1)
        await wait(lambda: len(list(tmp_path.iterdir())) == 1, timeout=10)
        helper = int(next(tmp_path.iterdir()).name)
        await backend.apply(0)
        async with asyncio.timeout(10):
            while backend.pids:  # the replica exits on SIGTERM and a reconcile drops it
                await backend.observe()
                await asyncio.sleep(0.02)
        await backend.aclose()
        await wait(lambda: not alive(helper), timeout=5)
    finally:
        await backend.aclose()
        for mark in tmp_path.iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(mark.name), signal.SIGKILL)


async def test_the_record_of_started_pids_holds_the_running_replicas_not_every_restart(tmp_path):
    """pids_started kept the pid of every start (one per idle restart, ~3,900 a day) for the check that no
    process outlives the backend, which then also asked about pids long exited, possibly reused by others."""
    backend = LocalBackend(os.environ, command=ONE_RUN,
                           replica_env=lambda replica: {"STAY": "1"} if replica == "local-worker-1" else {})
    try:
        await backend.apply(2)
        await restart_until(backend, 60)
        assert len(backend.pids_started) == 2 and backend.pids_started == backend.pids
        running = list(backend.pids_started)
        assert alive(running[0]), "local-worker-1 stays; the other may have exited already"
    finally:
        await backend.aclose()
    assert backend.pids_started == running, "what ran until aclose is still checked"
    assert not [pid for pid in backend.pids_started if alive(pid)]


# A worker stand-in: exits $CODE at once, by default 2 as a worker refusing its settings does (saying so); with
# $STAY set it runs, as a good worker does; with $HOLD it exits only once the file $HOLD/$WORKER_ID exists.
WORKER = ("sh", "-c", 'if [ -n "$STAY" ]; then exec sleep 600; fi; '
                      'if [ -n "$HOLD" ]; then while [ ! -e "$HOLD/$WORKER_ID" ]; do sleep 0.01; done; fi; '
                      'code="${CODE:-2}"; [ "$code" = 0 ] || echo "Invalid worker configuration"; exit "$code"')
TICK_S = 3.0  # the scaler's interval in the operator drill


async def tick(backend: LocalBackend, clock: ManualClock, wait, *, exits: bool = True) -> BackendView:
    """One scaler tick on the moved clock; with ``exits``, once the workers started (real processes) have exited."""
    if exits:
        await wait(lambda: all(replica.exited for replica in backend._live), timeout=10)
    clock.advance(TICK_S)
    return await backend.observe()


async def test_a_failing_worker_is_a_warning_with_its_exit_code_run_time_and_output(tmp_path, wait):
    """A worker that refused its settings exited 2 and was logged at info, `local_replica_exited exit_code=2`,
    at every tick: nothing told the operator. An idle exit (0) stays info."""
    clock = ManualClock()
    setting: dict[str, str] = {}
    backend = LocalBackend(os.environ, command=WORKER, clock=clock, log_dir=tmp_path / "logs",
                           replica_env=lambda _: setting)
    try:
        await backend.apply(1)
        setting["CODE"] = "0"  # fixed: the worker restarted at the next tick exits 0 when idle
        with capture_logs() as logs:
            await tick(backend, clock, wait)
        with capture_logs() as idle_logs:
            await tick(backend, clock, wait)
    finally:
        await backend.aclose()
    [failed] = [e for e in logs if e["event"] == "local_replica_exited"]
    assert failed["log_level"] == "warning"
    assert (failed["exit_code"], failed["ran_s"], failed["replica"]) == (2, TICK_S, "local-worker-1")
    assert Path(failed["output"]) == tmp_path / "logs" / "local-worker-1.log"
    assert Path(failed["output"]).read_text() == "Invalid worker configuration\n"
    [idle] = [e for e in idle_logs if e["event"] == "local_replica_exited"]
    assert (idle["log_level"], idle["exit_code"]) == ("info", 0)
    assert not [e for e in idle_logs if e["log_level"] == "warning"]


async def test_a_crash_looping_worker_backs_off_growing_capped_and_a_good_run_resets_it(tmp_path, wait):
    """Operator drill: 3 workers refusing their settings were started again at every 3-s tick (9 starts in 8 s,
    20 a minute each) and listed as 3 serving replicas. Now: restarts back off, and none counts as ready."""
    clock = ManualClock()
    setting: dict[str, str] = {}
    backend = LocalBackend(os.environ, command=WORKER, clock=clock, replica_env=lambda _: setting)
    try:
        await backend.apply(1)
        starts_at = [clock()]
        for _ in range(round(1800 / TICK_S)):  # half an hour of ticks
            starts = backend.starts
            view = await tick(backend, clock, wait)
            assert view.ready == 0, "a crash-looping worker is not serving"
            starts_at += [clock()] * (backend.starts - starts)
        gaps = [round(b - a) for a, b in itertools.pairwise(starts_at)]
        assert backend.starts <= 12, f"{backend.starts} starts in 30 min (600 ticks; one a tick before)"
        assert gaps == sorted(gaps) and gaps[0] == TICK_S, f"the first restart at once, then growing: {gaps}"
        assert max(gaps) <= RESTART_BACKOFF_MAX_S + 2 * TICK_S and gaps[-1] == gaps[-2], f"capped: {gaps}"

        setting["STAY"] = "1"  # the setting is fixed: the next start runs
        starts = backend.starts
        while backend.starts == starts:
            view = await tick(backend, clock, wait, exits=False)
        good_start = clock()
        assert view.ready == 0, "restarted after failed starts, it is not ready at once"
        while clock() - good_start < FAILED_START_S:
            view = await tick(backend, clock, wait, exits=False)
        assert view.ready == 0, "not before it has outlived the failed run it replaces"
        while clock() - good_start < FAILED_START_S + RESTART_BACKOFF_MAX_S:
            view = await tick(backend, clock, wait, exits=False)
        assert view.ready == 1
        del setting["STAY"]  # it fails after a good run: restarted at once, then the back-off starts over
        os.kill(backend.pids[0], signal.SIGTERM)
        starts = backend.starts
        await tick(backend, clock, wait)
        assert backend.starts == starts + 1, "restarted at the next tick"
        for _ in range(5):  # fails at the first, restarted 10 s later (at its cap: 300 s later)
            await tick(backend, clock, wait)
        assert backend.starts == starts + 2, "the back-off starts over from its first step"
    finally:
        await backend.aclose()
    assert not [pid for pid in backend.pids_started if alive(pid)]


def test_the_back_off_stays_at_its_cap_however_long_the_streak():
    """The back-off was 10 s doubled at each failure in a row, then capped: at the 1,026th (3.6 days of a worker
    refusing its settings at the 300-s cap) 10 * 2**1024 raised OverflowError out of observe, a traceback in the
    tick, and the streak started over from a restart at once. Now it stays at the cap."""
    assert [restart_delay_s(failed) for failed in (0, 1, 2, 3, 6)] == [0, 0, 10, 20, 160]
    assert {restart_delay_s(failed) for failed in range(7, 100_000)} == {RESTART_BACKOFF_MAX_S}


async def test_a_worker_failing_again_and_again_is_restarted_at_the_capped_back_off():
    clock = ManualClock()
    backend = LocalBackend(os.environ, command=("false",), clock=clock)
    try:
        await backend.apply(1)
        with capture_logs():  # a warning a failure
            async with asyncio.timeout(30):
                while True:
                    while not all(replica.exited for replica in backend._live):
                        await asyncio.sleep(0.001)
                    if backend.starts == 12:
                        break
                    clock.advance(RESTART_BACKOFF_MAX_S)
                    await backend.observe()
                view = await backend.observe()
        assert view.crash_loop is not None and view.crash_loop.exits == 12
        assert view.crash_loop.next_start_at == clock() + RESTART_BACKOFF_MAX_S
    finally:
        await backend.aclose()


async def test_a_worker_command_that_cannot_be_started_backs_off_and_leaves_no_log_files(tmp_path):
    """A command that cannot be started (missing, fork limit) raised out of observe with its place's failures
    forgotten: started again at every tick (601 starts in 30 min of 3-s ticks), each leaving an empty log file that
    rotated out the earlier run's, its handle left open. Now it is a failed run: backed off, crash-looping, no file."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "local-worker-1.log").write_text("why the earlier run ended\n")
    clock = ManualClock()
    backend = LocalBackend(os.environ, command=(str(tmp_path / "no-such-worker"),), clock=clock, log_dir=logs,
                           log_files_kept=1)
    try:
        with capture_logs() as said:
            await backend.apply(1)
            for _ in range(round(1800 / TICK_S)):  # half an hour of ticks
                clock.advance(TICK_S)
                view = await backend.observe()
    finally:
        await backend.aclose()
    assert backend.starts <= 12, f"{backend.starts} starts in 30 min (600 ticks; one a tick before)"
    assert view.crash_loop is not None and view.crash_loop.exits == backend.starts
    assert [p.name for p in logs.iterdir()] == ["local-worker-1.log"], "the earlier run's log is kept, no new one"
    failed = [e for e in said if e["event"] == "local_replica_start_failed"]
    assert len(failed) == backend.starts and failed[0]["log_level"] == "warning"
    assert "FileNotFoundError" in failed[0]["error"] and failed[0]["command"].endswith("no-such-worker")


async def test_a_new_worker_counts_as_ready_once_it_has_run_a_while(tmp_path, wait):
    """Every listed local replica counted as serving from the instant it was spawned."""
    clock = ManualClock()
    backend = sleeper_backend(tmp_path, clock=clock)
    try:
        await backend.apply(2)
        assert (await backend.observe()).ready == 0
        clock.advance(MIN_READY_S)
        assert (await backend.observe()).ready == 2
    finally:
        await backend.aclose()


async def test_a_healthy_worker_s_idle_exits_restart_at_every_tick_and_it_stays_ready(tmp_path, wait):
    """Idle exits (0) are restarted at once, as before, and the replacement counts as ready at once: made to wait
    MIN_READY_S as a new place does, idle workers restarting every ~22 s were un-ready ~45 % of the time, and a
    fleet took a healthy local provider for one whose workers fail."""
    clock = ManualClock()
    backend = LocalBackend(os.environ, command=WORKER, clock=clock,
                           replica_env=lambda _: {"CODE": "0", "HOLD": str(tmp_path)})
    try:
        await backend.apply(2)
        view = await backend.observe()
        for ticks in range(1, 21):
            for replica in view.replicas:  # each worker now reaches its idle limit and exits
                (tmp_path / replica.id).touch()
            view = await tick(backend, clock, wait)
            assert (backend.starts, view.ready) == (2 + 2 * ticks, 2)
    finally:
        await backend.aclose()


async def test_a_single_local_backend_s_crash_loop_shows_in_the_decision_line_and_in_status(
    cli_env, monkeypatch, qm, tmp_path, capsys, wait
):
    """Drill: SCALER_BACKEND=local alone, its workers refusing their settings (exit 2 within a second): the
    decision line read `steady` at info and `status` showed nothing of it, then (judged at the start deadline)
    `healthy` between back-offs for up to SCALER_FALLBACK_START_DEADLINE_S (10 min), though the backend knew it was
    holding the worker back after failed runs. Now it says crash-looping from the first back-off, while the policy
    decides as before."""
    qm.store.submit("alice", {"1": {"class_type": "Noop", "inputs": {}}})
    state_file = tmp_path / "scaler.json"
    env = operator_env_with(cli_env, monkeypatch, {
        "SCALER_BACKEND": "local",
        "COMFYUI_URL": "not-a-url",  # what the workers refuse (the scaler does not read it)
        "SCALER_STATE_FILE": str(state_file),
        "SCALER_INTERVAL_S": "1",
    })
    async with running_scaler({**os.environ, **env}) as process:
        await wait(lambda: "local" in ((saved_health(state_file) or {}).get("degraded") or {}), timeout=30)
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["status", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        health = report["health"]
        assert (health["known"], health["backend"], health["degraded"]) == (True, "local", "crash_loop")
        assert re.fullmatch(r"crash-looping: \d+ exits in a row, next start in \d+ s", health["degraded_detail"])
        assert health["retry_in_s"] > 0
        assert report["deployment"]["ready"] == 0
        assert await asyncio.to_thread(main, ["status"]) == 0
        out = capsys.readouterr().out
        assert "local: crash_loop: crash-looping: " in out, out
        err = await sigterm_and_wait(process)
    assert process.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    [degraded] = [line for line in lines if line["event"] == "Provider degraded"]
    assert (degraded["provider"], degraded["reason"], degraded["level"]) == ("local", "crash_loop", "warning")
    decisions = [line for line in lines if line["event"] == "Scaling decision" and "degraded" in line]
    assert decisions, "no decision line said the backend is degraded"
    for decision in decisions:
        assert (decision["degraded"], decision["level"]) == ("crash_loop", "warning")
        assert (decision["reason"], decision["desired"]) == ("steady", 1), "the policy decides as before"


async def test_status_shows_the_running_scaler_s_local_workers_and_says_when_none_runs(
    cli_env, monkeypatch, qm, comfy, tmp_path, capsys, wait
):
    """`status` with SCALER_BACKEND=local built a backend of its own, which had started nothing: `healthy`,
    0 replicas, while `comfy-scaler run` had 2 workers up. Now it shows what the running scaler last read (and how
    old that is); without a running scaler it says it cannot know; once the scaler stopped, that it did."""
    state_file = tmp_path / "scaler.json"
    env = operator_env_with(cli_env, monkeypatch, {
        "SCALER_BACKEND": "local",
        "SCALER_STATE_FILE": str(state_file),
        "SCALER_INTERVAL_S": "1",
        "SCALER_MIN_REPLICAS": "2",
        "COMFYUI_URL": comfy.url,
        "OUTPUTS_PATH": str(tmp_path / "outputs"),
        "COMFYUI_STARTUP_TIMEOUT_S": "10",
    })
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["status", "--json"]) == 1, "no scaler ran: what runs is not known"
    report = json.loads(capsys.readouterr().out)
    assert "no `comfy-scaler run` has saved one there" in report["deployment"]["error"], report["deployment"]
    assert report["health"]["known"] is False
    assert await asyncio.to_thread(main, ["status"]) == 1
    out = capsys.readouterr().out
    assert "healthy" not in out and re.search(r"replicas\s*│\s*unknown", out), out

    def recorded() -> list:
        return ((saved_health(state_file) or {}).get("view") or {}).get("replicas") or []

    async with running_scaler({**os.environ, **env}) as process:
        await wait(lambda: len(recorded()) == 2, timeout=30)
        assert await asyncio.to_thread(main, ["status", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert [r["id"] for r in report["replicas"]] == ["local-worker-1", "local-worker-2"]
        assert report["deployment"]["status"] == "healthy" and report["deployment"]["read_age_s"] >= 0
        assert (report["decision"]["current"], report["decision"]["desired"]) == (2, 2)
        assert await asyncio.to_thread(main, ["status"]) == 0
        out = capsys.readouterr().out
        assert re.search(r"replicas\s*│\s*2 \(\d ready\)", out), out
        assert "healthy (from `comfy-scaler" in out, out
        err = await sigterm_and_wait(process)
    assert process.returncode == 0, err.decode()[-2000:]
    assert await asyncio.to_thread(main, ["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["deployment"]["status"], report["replicas"]) == ("stopped", []), "its workers stopped with it"
    saved = json.loads(state_file.read_text())
    saved["health"]["at"] -= 3600  # an hour later: stopped it stays (it read unknown, exit 1, once stale)
    state_file.write_text(json.dumps(saved))
    assert await asyncio.to_thread(main, ["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["deployment"]["status"], report["replicas"]) == ("stopped", [])


async def test_status_of_a_fleet_shows_the_running_scaler_s_local_workers_and_says_when_none_runs(
    fleet_env, monkeypatch, qm, comfy, tmp_path, capsys, wait
):
    """In a fleet, `status` built a local backend of its own, which had started nothing: the local row read 0 live,
    healthy, while `comfy-scaler run` kept 2 workers there, and the decision line said to start 2 more. Now the row
    is the running scaler's last read (with its age); with no scaler running it is unknown and counts none; once
    the scaler stopped, stopped, however old that record is."""
    ledger = Path(fleet_env["SCALER_LEDGER_FILE"])
    env = operator_env_with(fleet_env, monkeypatch, {
        "SCALER_PROVIDERS": "local,verda",  # local is the cheaper (free): both workers go there
        "SCALER_INTERVAL_S": "1",
        "SCALER_MIN_REPLICAS": "2",
        "COMFYUI_URL": comfy.url,
        "OUTPUTS_PATH": str(tmp_path / "outputs"),
        "COMFYUI_STARTUP_TIMEOUT_S": "10",
    })

    async def status() -> dict:
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["status", "--json"]) == 0, "Verda was read"
        return json.loads(capsys.readouterr().out)

    report = await status()
    local = report["fleet"]["providers"]["local"]
    assert (local["live"], local["ready"], local["status"]) == (None, None, None), "no scaler ran: not known"
    assert "no `comfy-scaler run` has saved one there" in local["error"], local
    assert await asyncio.to_thread(main, ["status"]) == 0
    out = capsys.readouterr().out
    assert "+ unknown on local (not counted in the decision above)" in out, out
    monkeypatch.delenv("SCALER_LEDGER_FILE")
    assert "no SCALER_LEDGER_FILE" in (await status())["fleet"]["providers"]["local"]["error"]
    monkeypatch.setenv("SCALER_LEDGER_FILE", str(ledger))

    def recorded() -> list:
        return (((saved_health(ledger) or {}).get("views") or {}).get("local") or {}).get("replicas") or []

    async with running_scaler({**os.environ, **env}) as process:
        await wait(lambda: len(recorded()) == 2, timeout=30)
        report = await status()
        local = report["fleet"]["providers"]["local"]
        assert (local["live"], local["status"], local["error"]) == (2, "healthy", None), local
        assert local["read_age_s"] >= 0 and local["read_at"]
        assert (report["decision"]["current"], report["decision"]["desired"]) == (2, 2), report["decision"]
        assert {r["id"] for r in report["replicas"]} == {"local/local-worker-1", "local/local-worker-2"}
        err = await sigterm_and_wait(process)
    assert process.returncode == 0, err.decode()[-2000:]
    for age_s in (0, 3600):  # a stop is believed however old its record: nothing restarts the workers
        os.utime(ledger, (time.time() - age_s,) * 2)
        saved = json.loads(ledger.read_text())
        saved["health"]["at"] -= age_s
        ledger.write_text(json.dumps(saved))
        local = (await status())["fleet"]["providers"]["local"]
        assert (local["live"], local["status"], local["error"]) == (0, "stopped", None), local


async def test_workers_that_cannot_reach_the_queue_manager_back_off_however_long_each_ran(comfy, tmp_path, wait):
    """A serverless worker that cannot reach its queue manager exits 1 after SERVERLESS_MAX_UNREACHABLE_S (10 min
    by default). A non-zero exit counted as a failure only within 60 s of the start: each was restarted at once
    with failed_starts=1, for ever, and counted as serving for 9 of its 10 minutes."""
    clock = ManualClock()
    with socket.socket() as closed:  # bound and never listening: the queue manager's port refuses every poll
        closed.bind(("127.0.0.1", 0))
        env = {
            **os.environ,
            "QUEUE_MANAGER_URL": f"http://127.0.0.1:{closed.getsockname()[1]}",
            "COMFYUI_URL": comfy.url,
            "OUTPUTS_PATH": str(tmp_path / "outputs"),
            "WORKER_POLL_INTERVAL": "0.05",
            "SERVERLESS_MAX_UNREACHABLE_S": "0.3",
            "COMFYUI_STARTUP_TIMEOUT_S": "10",
            "LOG_FORMAT": "json",
        }
        backend = LocalBackend(env, clock=clock, log_dir=tmp_path / "logs")
        exits, views = [], []
        try:
            await backend.apply(1)
            for _ in range(4):
                await wait(lambda: backend.pids and all(r.exited for r in backend._live), timeout=60)
                clock.advance(60)  # the backend's clock: each ran its SERVERLESS_MAX_UNREACHABLE_S and a slow start
                with capture_logs() as logs:
                    views.append(await backend.observe())
                [exited] = [e for e in logs if e["event"] == "local_replica_exited"]
                exits.append(exited)
                clock.advance(exited["restart_in_s"])
                await backend.observe()
        finally:
            await backend.aclose()
    assert [(e["exit_code"], e["ran_s"], e["log_level"]) for e in exits] == [(1, 60.0, "warning")] * 4
    assert [(e["failed_starts"], e["restart_in_s"]) for e in exits] == [(1, 0.0), (2, 10.0), (3, 20.0), (4, 40.0)]
    assert [len(v.replicas) for v in views] == [1, 0, 0, 0], "restarted at once after the first, then backing off"
    said = Path(exits[0]["output"]).read_text()
    assert "Queue manager unreachable; exiting" in said, said
    assert backend.starts == 5


async def test_workers_failing_after_ten_minutes_each_degrade_the_provider_once_held_back(tmp_path, wait):
    """Workers exiting 1 after 10 min each (unreachable queue manager) counted as ready from their 10th (then 60th)
    second to their exit: never short for SCALER_FALLBACK_START_DEADLINE_S, the provider was never degraded and a
    fleet kept its replicas there for ever. Now the second failure in a row is held back, and that degrades it."""
    clock = ManualClock()
    backend = LocalBackend(os.environ, command=WORKER, clock=clock,
                           replica_env=lambda _: {"CODE": "1", "HOLD": str(tmp_path)})
    health = BackendHealth("local", AllocatorConfig((ProviderSpec("local", 1, 0.0),), start_deadline_s=600))
    began = clock()
    try:
        await backend.apply(1)
        view = await backend.observe()
        while clock() - began < 3 * 3600 and health.state.health.get("local", ProviderHealth()).degraded is None:
            for replica in view.replicas:
                if clock() - replica.started_at >= 600:  # its 10 min are up: it exits 1
                    (tmp_path / replica.id).touch()
                    await wait(lambda: all(r.exited for r in backend._live), timeout=10)
            clock.advance(TICK_S * 10)
            view = await backend.observe()
            health.see(view, None, 1, clock())
    finally:
        await backend.aclose()
    degraded = health.state.health["local"]
    assert degraded.degraded is DegradedReason.CRASH_LOOP, f"not degraded in {clock() - began:.0f} s"
    # 2 runs of 10 min: the second's exit is held back, seen at the tick after it
    assert clock() - began <= 2 * (600 + TICK_S * 10), f"degraded {clock() - began:.0f} s in"
    assert backend.starts == 2


async def test_a_restarted_scaler_s_workers_keep_the_earlier_run_s_logs_and_write_their_own(tmp_path, wait):
    """Replica numbers restarted at 1 with the scaler: first local-worker-1 of a new run appended to the earlier
    run's local-worker-1.log (its failure then read as the new worker's), then it replaced that file, so the lines
    that said why the earlier run ended were gone as soon as the restarted scaler started its first worker."""
    logs = tmp_path / "logs"
    logs.mkdir()
    earlier = {"local-worker-1.log": "local-worker-1\n",
               "local-worker-2.log": "Queue manager unreachable; exiting (an earlier run)\n"}
    for name, text in earlier.items():
        (logs / name).write_text(text)
    backend = LocalBackend(os.environ, command=ONE_RUN, log_dir=logs, replica_env=lambda _: {"STAY": "1"})
    try:
        await backend.apply(1)
        await wait(lambda: (logs / "local-worker-3.log").exists() and (logs / "local-worker-3.log").read_text(),
                   timeout=10)
    finally:
        await backend.aclose()
    files = {path.name: path.read_text() for path in logs.iterdir()}
    assert files == {**earlier, "local-worker-3.log": "local-worker-3\n"}


@pytest.mark.parametrize("provider", ["SCALER_BACKEND", "SCALER_PROVIDERS"])
def test_a_log_folder_that_is_a_file_stops_the_start_naming_the_setting(
    monkeypatch, tmp_path, capsys, restore_logging, provider
):
    """SCALER_LOCAL_LOG_DIR naming a file: `comfy-scaler run` died of NotADirectoryError, a 40-line traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").write_text("not a folder")
    for name, value in {"QUEUE_MANAGER_URL": "http://127.0.0.1:9", provider: "local", "SCALER_METRICS_PORT": "0",
                        "SCALER_LOCAL_LOG_DIR": str(tmp_path / "notes")}.items():
        monkeypatch.setenv(name, value)
    assert main(["run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"run: local: SCALER_LOCAL_LOG_DIR {tmp_path / 'notes'} cannot be read as a folder "
                          "(NotADirectoryError: Not a directory)"), err


@pytest.mark.parametrize("kept", [0, -1])
def test_keeping_no_log_file_is_refused_naming_the_setting(tmp_path, kept):
    with pytest.raises(ValueError, match=rf"log_files_kept must be >= 1.*got {kept}"):
        LocalBackend(os.environ, log_dir=tmp_path, log_files_kept=kept)


async def test_after_crashes_ending_long_busy_runs_the_next_worker_is_ready_within_the_start_deadline(tmp_path, wait):
    """Two crashes in a row after 3-hour runs: the next worker counted as ready only once it had run 3 h + 60 s,
    so a fleet degraded a local provider whose polls had been answered for hours at its 600-s start deadline."""
    clock = ManualClock()
    backend = LocalBackend(os.environ, command=WORKER, clock=clock,
                           replica_env=lambda _: {"CODE": "1", "HOLD": str(tmp_path)})
    health = BackendHealth("local", AllocatorConfig((ProviderSpec("local", 1, 0.0),), start_deadline_s=600))
    try:
        await backend.apply(1)
        for _ in range(2):  # a 3-hour busy run, then a crash (exit 1)
            crash_at = clock() + 3 * 3600
            while clock() < crash_at:
                clock.advance(TICK_S * 10)
                health.see(await backend.observe(), None, 1, clock())
            [replica] = backend._live
            (tmp_path / replica.id).touch()
            await wait(lambda: all(r.exited for r in backend._live), timeout=10)
        crashed_at = clock()
        while clock() - crashed_at < 900:
            clock.advance(TICK_S * 10)
            view = await backend.observe()
            health.see(view, None, 1, clock())
    finally:
        await backend.aclose()
    assert view.ready == 1 and backend.starts == 3
    assert health.state.health["local"].degraded is None


def test_local_workers_of_a_split_queue_get_the_worker_token_and_no_scaler_secret(monkeypatch, tmp_path):
    """One shell running the queue manager and the scaler: QUEUE_MANAGER_WORKER_TOKEN reached the workers (alone, a
    worker exits 2) and they were given the participants' token (403 on every poll)."""
    env = fleet_workers_environment(monkeypatch, tmp_path, QUEUE_MANAGER_TOKEN="participants-not-for-workers",
                                    QUEUE_MANAGER_WORKER_TOKEN="workers-token")
    assert env["QUEUE_MANAGER_TOKEN"] == "workers-token" and "QUEUE_MANAGER_WORKER_TOKEN" not in env
    assert "not-for-workers" not in repr(env)


def test_every_secret_the_scaler_holds_is_withheld_from_its_workers():
    """A secret setting added to the scaler must be kept from its local workers too."""
    from common.settings import SCALER_CREDENTIALS
    from scaler.config import ScalerSettings

    secrets = {field.validation_alias for field in ScalerSettings.model_fields.values()
               if "SecretStr" in repr(field.annotation) or "SecretStr" in repr(field.metadata)}
    assert "QUEUE_MANAGER_WORKER_TOKEN" in secrets
    assert secrets <= SCALER_CREDENTIALS | {"QUEUE_MANAGER_TOKEN", "QUEUE_MANAGER_WORKER_TOKEN"}


async def test_local_workers_poll_a_split_token_queue_with_its_worker_token(monkeypatch, comfy, workflows, tmp_path,
                                                                           wait):
    """A queue manager with both tokens and a scaler given both: its local workers complete jobs."""
    from queue_manager.server import QueueManagerServer

    async with QueueManagerServer(tmp_path / "q.db", token="participants-t", worker_token="workers-w") as server:
        monkeypatch.chdir(tmp_path)
        for name, value in {"QUEUE_MANAGER_URL": server.url, "QUEUE_MANAGER_TOKEN": "participants-t",
                            "QUEUE_MANAGER_WORKER_TOKEN": "workers-w", "SCALER_BACKEND": "local"}.items():
            monkeypatch.setenv(name, value)
        env = {**worker_environment(load_settings(), os.environ), "COMFYUI_URL": comfy.url,
               "OUTPUTS_PATH": str(tmp_path / "outputs"), "WORKER_POLL_INTERVAL": "0.05",
               "SERVERLESS_MAX_IDLE_POLLS": "400", "COMFYUI_STARTUP_TIMEOUT_S": "10", "LOG_FORMAT": "json"}
        backend = LocalBackend(env, log_dir=tmp_path / "logs", stop_timeout_s=5)
        try:
            jobs = [server.store.submit("alice", workflows["quick"]) for _ in range(2)]
            await backend.apply(2)
            await wait(lambda: all(server.store.get(job.id).status == "completed" for job in jobs), timeout=30)
        finally:
            await backend.aclose()


def test_a_worker_token_without_the_scaler_s_own_is_refused_naming_both(monkeypatch, tmp_path):
    from common.settings import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QUEUE_MANAGER_TOKEN", raising=False)
    monkeypatch.setenv("QUEUE_MANAGER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("QUEUE_MANAGER_WORKER_TOKEN", "workers-token")
    with pytest.raises((ConfigError, ValueError), match="QUEUE_MANAGER_WORKER_TOKEN is set and QUEUE_MANAGER_TOKEN"):
        load_settings()
