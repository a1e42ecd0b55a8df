"""Stop signals outside the time the worker takes them: after the supervisor's stop, and before its event loop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from ..conftest import imports_held, interrupted_when, run_to_exit

# The supervisor's main(), then a stop signal to itself: one arriving once the supervisor has stopped everything,
# in the moment before the process ends (a platform's scale-down meeting an idle exit).
MAIN_THEN_SIGNAL = (
    "import os, signal, sys\n"
    "from supervisor.__main__ import main\n"
    "sig = signal.Signals[sys.argv.pop()]\n"
    "code = main()\n"
    "os.kill(os.getpid(), sig)\n"
    "sys.exit(code)\n"
)
IMPORTS_HELD = imports_held("supervisor")
# The supervisor's hand-over of the stop signals, the loop's handler to "ignored", over and over while another process
# sends exactly SENDS SIGTERMs, threads alive as in the supervisor (asyncio.to_thread's, the log's): any moment in
# between with the default action ends this process with -15. It ends when the sender has sent them all, however
# loaded the machine.
SENDS = 200_000
SWAPS_WHILE_SIGTERMS_ARRIVE = (
    "import asyncio, os, signal, subprocess, sys, types\n"
    "from common.logs import configure_logging\n"
    "from supervisor.run import _route_stop_signals_to\n"
    "from worker.service import ignore_stop_signals\n"
    "configure_logging('json')  # its writer's thread alive, as in the supervisor\n"
    "SENDER = 'import os, signal, sys\\nfor _ in range(int(sys.argv[2])): os.kill(int(sys.argv[1]), signal.SIGTERM)'\n"
    "async def swaps():\n"
    "    _route_stop_signals_to(types.SimpleNamespace(request_shutdown=lambda: None))\n"
    "    await asyncio.to_thread(int)\n"
    "    sender = subprocess.Popen([sys.executable, '-c', SENDER, str(os.getpid()), sys.argv[1]],\n"
    "                              stderr=subprocess.DEVNULL)\n"
    "    while sender.poll() is None:\n"
    "        ignore_stop_signals()\n"
    "        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: None)\n"
    "        await asyncio.sleep(0)\n"
    "    print('all swapped, the sender exited with', sender.returncode)\n"
    "asyncio.run(swaps())\n"
)
# SIGTERMs faster than the loop reads them (sent by the loop's own thread, which reads none meanwhile): its wakeup
# socket fills after a few hundred, and the rest meet it full.
FLOOD_WHILE_THE_LOOP_IS_BUSY = (
    "import asyncio, os, signal, types\n"
    "from supervisor.run import _route_stop_signals_to\n"
    "stops = []\n"
    "async def flood():\n"
    "    _route_stop_signals_to(types.SimpleNamespace(request_shutdown=lambda: stops.append(1)))\n"
    "    for _ in range(2000):\n"
    "        os.kill(os.getpid(), signal.SIGTERM)\n"
    "    await asyncio.sleep(0.1)\n"
    "    print('stop requested:', bool(stops))\n"
    "asyncio.run(flood())\n"
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_after_the_stop_leaves_the_workers_exit_code(
    base_env, tmp_path: Path, sig: signal.Signals
) -> None:
    """Before: the stop signals went back to their defaults once ComfyUI was stopped: a SIGTERM then ended the
    process with 143 (a SIGINT with a KeyboardInterrupt traceback and 130) in place of the worker's exit code."""
    env = {**base_env, "SERVERLESS_MODE": "true", "SERVERLESS_MAX_IDLE_POLLS": "3"}
    argv = [sys.executable, "-c", MAIN_THEN_SIGNAL, sig.name]
    code, output, _ = await run_to_exit(argv, env=env, cwd=tmp_path, stderr_into_stdout=True)

    assert "Serverless idle timeout reached" in output
    assert code == 0, output
    assert "Traceback" not in output


async def test_no_sigterm_meets_the_default_action_while_the_supervisor_stops_taking_signals(tmp_path: Path) -> None:
    """Before: the loop's handlers were removed (the default action back) and SIG_IGN set after: a SIGTERM between
    the two, the platform's stop meeting the worker's own exit, killed the process (-15 in 31 runs of 40 here)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    argv = [sys.executable, "-c", SWAPS_WHILE_SIGTERMS_ARRIVE, str(SENDS)]
    code, output, _ = await run_to_exit(argv, env=env, cwd=tmp_path, timeout_s=60, stderr_into_stdout=True)

    # (a loaded machine may fill the loop's wakeup socket: Python's "Exception ignored" lines come before)
    assert (code, output.splitlines()[-1:]) == (0, ["all swapped, the sender exited with 0"]), output[-2000:]


@pytest.mark.timeout(90)  # its imports alone took 28 s on a loaded 2-core machine
async def test_a_flood_of_stop_signals_stops_the_supervisor_and_leaves_stderr_clean(tmp_path: Path) -> None:
    """Before: with the loop's wakeup socket full, each SIGTERM printed a Python traceback on stderr (1,722 for 2,000:
    no log line) through a path CPython calls not signal-safe (a signal in it can deadlock the process)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    argv = [sys.executable, "-c", FLOOD_WHILE_THE_LOOP_IS_BUSY]
    code, output, errors = await run_to_exit(argv, env=env, cwd=tmp_path, timeout_s=50)

    assert (code, output, errors) == (0, "stop requested: True\n", "")


async def test_ctrl_c_before_comfyui_started_is_one_line_and_exit_130(base_env, run_supervisor, tmp_path: Path) -> None:
    """Before: a SIGINT (Ctrl-C in `docker run -it`) during the start's checks or the emptying of the scratch folders,
    before the event loop, printed a KeyboardInterrupt traceback. The start is held here by a FIFO in place of the
    temporary file ComfyUI's model paths file is written to, which the supervisor writes last before the event loop."""
    marker = tmp_path / "comfyui-was-started"
    partial_model_paths = tmp_path / "data" / "comfyui" / ".extra_model_paths.yaml.partial"
    partial_model_paths.parent.mkdir(parents=True)
    os.mkfifo(partial_model_paths)
    env = {**base_env, "COMFYUI_COMMAND": f"{sys.executable} -c \"open({str(marker)!r}, 'w').close()\""}
    supervisor = await run_supervisor(env)
    await supervisor.wait_until(lambda: "supervisor.scratch_emptied" in supervisor.output, what="the scratch emptied")

    supervisor.signal(signal.SIGINT)

    assert await supervisor.wait() == 130
    assert supervisor.stderr.decode().splitlines()[-1:] == [
        "comfy-supervisor: interrupted (SIGINT) before ComfyUI started; exiting"
    ], supervisor.output
    assert "Traceback" not in supervisor.output
    assert not marker.exists()
    assert not partial_model_paths.exists()


async def test_ctrl_c_while_the_supervisor_loads_is_one_line_and_exit_130(base_env, tmp_path: Path) -> None:
    """Before: a SIGINT during the supervisor's imports (0.4 s at every start, seconds from a cold disk) printed a
    KeyboardInterrupt traceback and ended the process by the signal (-2), not the start's one line and 130."""
    marker = tmp_path / "imports-held"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", IMPORTS_HELD, str(marker), env=base_env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    code, stderr = await interrupted_when(process, marker.exists)
    assert code == 130, stderr
    assert stderr.splitlines() == ["comfy-supervisor: interrupted (SIGINT) before ComfyUI started; exiting"]
