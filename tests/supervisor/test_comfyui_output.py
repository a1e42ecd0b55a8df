"""ComfyUI's output copied into the container log: a line the log cannot take never stops the copying."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path

import pytest

from common.logs import MAX_LOG_VALUE_CHARS, register_secret
from supervisor.comfyui_process import ComfyUIProcess

# A non-ASCII line, then far more than a pipe and the reader's buffer hold (~2 MB), then a last line.
FLOODS_AFTER_NON_ASCII = r"""
import os
os.write(1, b'loading caf\xc3\xa9.safetensors\n')
for _ in range(40_000):
    os.write(1, b'x' * 100 + b'\n')
os.write(1, b'done\n')
"""


async def test_a_line_the_log_cannot_encode_does_not_wedge_comfyui(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the ASCII log (PYTHONIOENCODING=ascii, a non-UTF-8 locale) raised on the first non-ASCII line, its
    copying stopped, and ComfyUI blocked on its next write once the pipe was full."""
    log = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(log, encoding="ascii", write_through=True))
    comfyui = ComfyUIProcess([sys.executable, "-c", FLOODS_AFTER_NON_ASCII], stop_timeout_s=1)
    await comfyui.start()
    try:
        assert await asyncio.wait_for(comfyui.wait(), 10) == 0
    finally:
        await comfyui.stop()
    lines = [line for line in log.getvalue().splitlines() if line.startswith(b"[comfyui] ")]
    assert lines[0] == rb"[comfyui] loading caf\xe9.safetensors"
    assert lines[-1] == b"[comfyui] done"
    assert len(lines) == 40_002


IGNORES_SIGTERM = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(sys.argv[1]).touch()
time.sleep(600)
"""


async def test_stop_goes_on_when_comfyui_outlives_its_sigkill(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A process in uninterruptible sleep (a GPU driver call, a hung network mount) does not die at SIGKILL until it
    leaves it. Before: stop() waited for it without limit, and the supervisor never exited. Here the SIGKILL is
    withheld to stand for such a process."""
    real_killpg = os.killpg

    def killpg_without_sigkill(pgid: int, sig: int) -> None:
        if sig != signal.SIGKILL:
            real_killpg(pgid, sig)

    ready = tmp_path / "ready"
    comfyui = ComfyUIProcess([sys.executable, "-c", IGNORES_SIGTERM, str(ready)], stop_timeout_s=0.2)
    await comfyui.start()
    pid = comfyui.pid
    assert pid is not None
    try:
        while not ready.exists():  # its SIGTERM handler installed
            await asyncio.sleep(0.05)
        monkeypatch.setattr(os, "killpg", killpg_without_sigkill)
        assert await asyncio.wait_for(comfyui.stop(), 30) is None
    finally:
        monkeypatch.undo()
        os.killpg(pid, signal.SIGKILL)
        await comfyui.stop()


PRINTS_WHAT_A_WORKFLOW_GAVE_IT = r"""
import sys
print("!!! Exception during processing !!! 403 Forbidden for url: "
      "https://bucket.example.com/in.png?X-Amz-Signature=sig-in-a-workflow-5c1e&X-Amz-Date=1")
print("Failed to validate prompt: image: 'https://user:pw-in-a-workflow-8d2f@images.example.com/a.png' not in []",
      file=sys.stderr)
print("echoed registered-secret-3b9a7c")
"""


async def test_what_comfyui_prints_reaches_the_log_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """ComfyUI prints a workflow's inputs in its errors (a value not in a list, a download's failed URL): a
    presigned URL's signature or a URL's password went into the container log as is, past the scrubber that
    masks them in every other line."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    register_secret("registered-secret-3b9a7c")
    comfyui = ComfyUIProcess([sys.executable, "-c", PRINTS_WHAT_A_WORKFLOW_GAVE_IT], stop_timeout_s=1)
    await comfyui.start()
    try:
        assert await asyncio.wait_for(comfyui.wait(), 10) == 0
    finally:
        await comfyui.stop()
    log = "\n".join(line for line in (out.getvalue() + err.getvalue()).splitlines() if line.startswith("[comfyui] "))
    assert "X-Amz-Signature=***&X-Amz-Date=1" in log and "https://***@images.example.com/a.png" in log, log
    assert "[comfyui] echoed ***" in log, log
    for secret in ("sig-in-a-workflow-5c1e", "pw-in-a-workflow-8d2f", "registered-secret-3b9a7c"):
        assert secret not in log, log


PRINTS_A_LONG_LINE = r"""
print("echo registered-secret-6f1d4e " + "?a=b&" * 200_000)
print("next")
"""


async def test_a_line_longer_than_a_log_value_is_cut_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: each line of up to 1 MiB was scrubbed whole on the event loop the worker and its health server run
    on, 0.5 s for a line of `?a=b` pairs (a workflow's text a custom node echoes); now cut to MAX_LOG_VALUE_CHARS
    first, as every other log value."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    register_secret("registered-secret-6f1d4e")
    comfyui = ComfyUIProcess([sys.executable, "-c", PRINTS_A_LONG_LINE], stop_timeout_s=1)
    await comfyui.start()
    try:
        assert await asyncio.wait_for(comfyui.wait(), 10) == 0
    finally:
        await comfyui.stop()
    long_line, last = [line for line in out.getvalue().splitlines() if line.startswith("[comfyui] ")]
    assert long_line.startswith("[comfyui] echo *** ?a=b&")
    assert long_line.endswith("… (cut: 1000030 characters)")
    assert len(long_line) < MAX_LOG_VALUE_CHARS + 100
    assert last == "[comfyui] next"


# ComfyUI prints a refused value as the job gave it ("Value not in list: ckpt_name: '<value>' not in [...]").
PRINTS_A_VALUE_WITH_CONTROL_CHARACTERS = r"""
import sys
print("  - Value not in list: ckpt_name: 'a.safetensors\x1b]0;owned\x07\x1b[2J' not in []", file=sys.stderr)
print("  - Value not in list: image: 'ok.png\rEverything is fine \u202egnp.exe' not in []", file=sys.stderr)
print("next", file=sys.stderr)
"""


async def test_control_characters_a_job_gave_comfyui_reach_the_log_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other log line shows a job's control characters escaped (docs/worker.md, LOG_FORMAT); ComfyUI's lines
    were copied raw: a workflow's value echoed in ComfyUI's error retitled and cleared the terminal of an operator
    reading `docker logs`, a CR wrote over the line's start, a bidi override reversed what followed."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    comfyui = ComfyUIProcess([sys.executable, "-c", PRINTS_A_VALUE_WITH_CONTROL_CHARACTERS], stop_timeout_s=1)
    await comfyui.start()
    try:
        assert await asyncio.wait_for(comfyui.wait(), 10) == 0
    finally:
        await comfyui.stop()
    lines = [line for line in err.getvalue().split("\n") if line.startswith("[comfyui] ")]
    assert lines == [
        r"[comfyui]   - Value not in list: ckpt_name: 'a.safetensors\x1b]0;owned\x07\x1b[2J' not in []",
        r"[comfyui]   - Value not in list: image: 'ok.png\rEverything is fine \u202egnp.exe' not in []",
        "[comfyui] next",
    ]
