"""A stop signal (SIGTERM: `docker stop`, a scale-down; SIGHUP) during the start, before the worker takes the
signals: nothing runs yet, so nothing is lost; the container says so in one line and exits 0, as after any stop."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_a_stop_signal_before_comfyui_started_is_one_line_and_exit_0(
    base_env, run_supervisor, tmp_path: Path, sig: signal.Signals
) -> None:
    """Before: the signal's default action ended the process, 143 (129 for SIGHUP), without a word, where
    docs/container.md promises exit 0 for a stop. The start is held by a FIFO in place of the temporary file of
    ComfyUI's model paths file, which the supervisor writes last before its event loop."""
    marker = tmp_path / "comfyui-was-started"
    partial_model_paths = tmp_path / "data" / "comfyui" / ".extra_model_paths.yaml.partial"
    partial_model_paths.parent.mkdir(parents=True)
    os.mkfifo(partial_model_paths)
    env = {**base_env, "COMFYUI_COMMAND": f"{sys.executable} -c \"open({str(marker)!r}, 'w').close()\""}
    supervisor = await run_supervisor(env)
    await supervisor.wait_until(lambda: "supervisor.scratch_emptied" in supervisor.output, what="the scratch emptied")

    supervisor.signal(sig)

    assert await supervisor.wait() == 0, supervisor.output
    assert supervisor.stderr.decode().splitlines()[-1:] == [
        f"comfy-supervisor: stopped ({sig.name}) before ComfyUI started; exiting"
    ], supervisor.output
    assert "Traceback" not in supervisor.output
    assert not marker.exists()
    assert not partial_model_paths.exists()
