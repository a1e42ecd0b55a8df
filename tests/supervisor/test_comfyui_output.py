"""ComfyUI's output copied into the container log: a line the log cannot take never stops the copying."""

from __future__ import annotations

import asyncio
import io
import sys

import pytest

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
