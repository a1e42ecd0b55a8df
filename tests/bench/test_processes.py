"""bench._processes.child: the benches' one way to run a server of its own process, ended however the run ends."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from bench._processes import child

DEAF_TO_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
                  "time.sleep(600)"  # fmt: skip
SLEEPER = "print('ready', flush=True); import time; time.sleep(600)"


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    with child([sys.executable, "-c", DEAF_TO_SIGTERM], grace_s=0.5, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout.readline() == "ready\n"  # its SIGTERM handler is in place
    assert process.returncode == -signal.SIGKILL


def test_a_child_is_terminated_when_the_run_fails() -> None:
    with (
        pytest.raises(RuntimeError, match="the bench failed"),
        child([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True) as process,
    ):
        assert process.stdout.readline() == "ready\n"
        raise RuntimeError("the bench failed")
    assert process.returncode == -signal.SIGTERM


def test_a_child_that_already_exited_is_left_as_it_ended() -> None:
    with child([sys.executable, "-c", "raise SystemExit(3)"]) as process:
        process.wait()
    assert process.returncode == 3


def test_a_program_that_is_not_a_bench_keeps_its_own_sigterm_handling() -> None:
    """pytest calls `child` here: SIGTERM must still end it as before, not raise SystemExit inside a test."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with child([sys.executable, "-c", "pass"]) as process:
            process.wait()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
