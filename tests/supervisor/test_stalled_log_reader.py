"""ComfyUI's output is copied into the container's log by the supervisor, on the event loop that also answers
/health. Before: once the log's reader stopped reading (a pipe full, 64 KiB), the copy of the next line blocked that
loop, /health went unanswered, and the platform killed the replica mid-job."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINES = 4000  # of 200 characters: 800 kB, over 12 times a pipe's 64 KiB, well inside the log's queue

_COMFYUI = f"import sys\nfor i in range({LINES}): print(f'line {{i:05}} ' + 'x' * 190, file=sys.stderr)\n"
_SUPERVISOR_LIKE = f"""
import asyncio, sys
from common.logs import configure_logging
from supervisor.comfyui_process import ComfyUIProcess

configure_logging("json", "info")

async def main():
    comfyui = ComfyUIProcess([sys.executable, "-c", {_COMFYUI!r}])
    await comfyui.start()
    print("ComfyUI exited", await comfyui.wait(), flush=True)
    await asyncio.sleep(0.1)
    print("the loop goes on", flush=True)
    await asyncio.to_thread(sys.stdin.read)

asyncio.run(main())
"""


def _lines_of(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def test_comfyuis_output_copied_to_a_log_nobody_reads_does_not_stall_the_supervisors_loop() -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _SUPERVISOR_LIKE], env=env, cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        said = _lines_of(child.stdout)  # stderr, the log, is not read yet
        assert said.get(timeout=60) == "ComfyUI exited 0\n"
        assert said.get(timeout=60) == "the loop goes on\n"  # before: never, the loop blocked on a copied line
        logged = _lines_of(child.stderr)
        copied: list[str] = []
        while len(copied) < LINES:
            if (line := logged.get(timeout=60)).startswith("[comfyui]"):
                copied.append(line)
        child.stdin.close()
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()
    assert [line.split()[2] for line in copied] == [f"{i:05}" for i in range(LINES)]
