"""Stop signals once the bare worker (comfy-worker, no supervisor) has decided its exit code."""

from __future__ import annotations

import signal
import sys

import pytest

from ..conftest import run_to_exit
from .test_lifecycle import _env

# The worker's main(), then a stop signal to itself: one arriving after the event loop closed, in the process's last
# moments (the platform's stop meeting the worker's own exit after its idle timeout or job limit).
MAIN_THEN_SIGNAL = (
    "import os, signal, sys\n"
    "from worker.__main__ import main\n"
    "sig = signal.Signals[sys.argv.pop()]\n"
    "code = main()\n"
    "os.kill(os.getpid(), sig)\n"
    "sys.exit(code)\n"
)
# The worker's main() over and over while another process sends exactly SENDS SIGTERMs: any moment of its exit path
# with the default action ends this process with -15. It ends when the sender has sent them all, however loaded the
# machine (each main() stops at the first signal it takes, or after one idle poll once they stop): 2 to 9 exits here.
SENDS = 500_000
MAINS_WHILE_SIGTERMS_ARRIVE = (
    "import os, signal, subprocess, sys\n"
    "from worker.__main__ import main\n"
    "SENDER = 'import os, signal, sys\\nfor _ in range(int(sys.argv[2])): os.kill(int(sys.argv[1]), signal.SIGTERM)'\n"
    "sends = sys.argv.pop()\n"
    "codes = {main()}  # one before the signals: the first start's imports take as long as several exits\n"
    "sender = subprocess.Popen([sys.executable, '-c', SENDER, str(os.getpid()), sends], stderr=subprocess.DEVNULL)\n"
    "while sender.poll() is None:\n"
    "    codes.add(main())\n"
    "print('all sent, the sender exited with', sender.returncode, 'the worker with', sorted(codes))\n"
)


def worker_env(qm, comfy, tmp_path) -> dict[str, str]:
    return _env(
        QUEUE_MANAGER_URL=qm.url, COMFYUI_URL=comfy.url, OUTPUTS_PATH=tmp_path / "out", HEALTH_PORT=0,
        WORKER_POLL_INTERVAL=0.05, SERVERLESS_MODE="true", SERVERLESS_MAX_IDLE_POLLS=1, LOG_FORMAT="json",
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_after_the_loop_closed_leaves_the_workers_exit_code(qm, comfy, tmp_path, sig):
    """Before: the event loop's close put the stop signals back to their defaults: a SIGTERM then ended the worker
    with -15 (a SIGINT with a KeyboardInterrupt traceback) in place of its exit code 0."""
    argv = [sys.executable, "-c", MAIN_THEN_SIGNAL, sig.name]
    code, _, log = await run_to_exit(argv, env=worker_env(qm, comfy, tmp_path), timeout_s=30)

    assert "Serverless idle timeout reached" in log
    assert code == 0, log[-2000:]
    assert "Traceback" not in log


async def test_no_sigterm_meets_the_default_action_on_the_workers_way_out(qm, comfy, tmp_path):
    """Before: from the loop's close to the interpreter's exit the default action was back: a SIGTERM then, the
    platform's stop meeting the worker's own exit, killed the process (-15)."""
    argv = [sys.executable, "-c", MAINS_WHILE_SIGTERMS_ARRIVE, str(SENDS)]
    code, output, log = await run_to_exit(argv, env=worker_env(qm, comfy, tmp_path), timeout_s=60)

    assert (code, output) == (0, "all sent, the sender exited with 0 the worker with [0]\n"), log[-2000:]
