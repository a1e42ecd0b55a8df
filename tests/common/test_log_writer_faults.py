"""The queued log writer (common.log_writer) against readers that stall, then read, and other faults of the file
it writes to; each case a real process writing to a real pipe."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from common.log_writer import EXIT_FLUSH_S, MAX_QUEUED_CHARS

REPO = Path(__file__).resolve().parents[2]
LINES = 2 * MAX_QUEUED_CHARS // 200  # twice what the queue holds
# Says "exiting" on fd SAY_FD once the exit waits for the log's reader, its lines queued as they will be written:
# the reader starts then, not before (it would write them out before the exit comes to them).
_SAY_WHEN_EXIT_WAITS = """
def _say_when_exit_waits(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "wait_written":
        sys.setprofile(None)
        os.write(SAY_FD, b"exiting\\n")
sys.setprofile(_say_when_exit_waits)
"""

_OVERFLOW_THEN_EXIT = f"""
import os, structlog, sys
SAY_FD = 1
from common.logs import configure_logging
configure_logging("json", "info")
log = structlog.get_logger()
for i in range({LINES}):
    log.info("Filler", i=i, pad="x" * 200)
print("logged", flush=True)
sys.stdin.readline()
log.info("Worker shutdown complete")
{_SAY_WHEN_EXIT_WAITS}"""


def _start(code: str, **kwargs) -> subprocess.Popen:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    kwargs = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, **kwargs)


def test_lines_dropped_are_reported_before_the_last_line_written_at_exit() -> None:
    """stderr read only once the process logged its last line: before, the report of the lines dropped came after
    "Worker shutdown complete", the tail reading as if the process went on past its shutdown."""
    child = _start(_OVERFLOW_THEN_EXIT, stdin=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"logged\n"  # stderr unread until now: the queue overflowed
        head = b""
        while len(head) < 1 << 20:  # room for the last line, the queue far from written out
            head += os.read(child.stderr.fileno(), 1 << 16)  # unbuffered: communicate reads the rest from the fd
        child.stdin.write(b"\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"exiting\n"  # stderr unread until the exit waits for it
        _, rest = child.communicate(timeout=60)
    finally:
        child.kill()
    err = head + rest
    assert child.returncode == 0, err[-2000:]
    records = [json.loads(line) for line in err.splitlines()]
    fillers = [record["i"] for record in records if record["event"] == "Filler"]
    assert 0 < len(fillers) < LINES
    assert records[-2]["event"] == "Log lines dropped: the log's reader fell behind"
    assert records[-2]["dropped"] == LINES - len(fillers)
    assert records[-1]["event"] == "Worker shutdown complete"


def _bytes_waiting(read_end: int) -> int:
    return struct.unpack("i", fcntl.ioctl(read_end, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_a_non_blocking_log_pipe_full_for_a_while_loses_no_line() -> None:
    """stderr a pipe another process set non-blocking (O_NONBLOCK is shared by all who hold it): before, once it was
    full each write failed with EAGAIN and the line was lost, uncounted (3001 lines logged, 209 arrived); now the
    writer waits for room, as a blocking pipe makes it."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    child = _start(_OVERFLOW_THEN_EXIT.replace(f"range({LINES})", "range(3000)"), stderr=write_end)
    os.close(write_end)
    with open(read_end, "rb") as logged:
        try:
            assert child.stdout.readline() == b"logged\n"
            full = fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) - 4096
            deadline = time.monotonic() + 30
            while _bytes_waiting(read_end) < full and time.monotonic() < deadline:
                time.sleep(0.05)
            err = logged.read()
            assert child.wait(timeout=30) == 0
        finally:
            child.kill()
    events = [(record["event"], record.get("i")) for record in map(json.loads, err.splitlines())]
    assert events == [*(("Filler", i) for i in range(3000)), ("Worker shutdown complete", None)]


_FOUR_STALLED_LOGS = """
import os, sys
from common.logs import unblocking
pipes = []
for _ in range(4):
    pipes.append(pipe := [os.fdopen(end, mode) for end, mode in zip(os.pipe(), "rw")])  # kept open: never read
    sink = unblocking(pipe[1])
    for _ in range(1000):
        sink.write("y" * 200 + "\\n")  # 200 KB: a pipe takes 64 KiB
print("logged", flush=True)
sys.exit(7)
"""


def test_exit_waits_for_stalled_logs_exit_flush_s_in_all_not_each() -> None:
    """Logs no one reads in several files (stdout and stderr separate pipes to a stalled collector): each file's
    lines were given EXIT_FLUSH_S in turn, 4 files 20 s to exit, past a platform's stop grace (10 s) and killed;
    now EXIT_FLUSH_S for them all, and the exit code kept."""
    child = _start(_FOUR_STALLED_LOGS, stderr=subprocess.DEVNULL)
    try:
        assert child.stdout.readline() == b"logged\n"
        assert child.wait(timeout=3 * EXIT_FLUSH_S) == 7  # before: TimeoutExpired
    finally:
        child.kill()


_COMFYUI_TALKING_WITHOUT_STDOUT = """
import asyncio, sys, structlog
from common.logs import configure_logging
from supervisor.comfyui_process import ComfyUIProcess
configure_logging("json", "info")
TALKER = "for i in range(20000): print('z' * 200)"  # 4 MB: more than the pipe and the copy's buffer (2 MiB) hold

async def main():
    comfyui = ComfyUIProcess([sys.executable, "-c", TALKER])
    await comfyui.start()
    try:
        code = await asyncio.wait_for(comfyui.wait(), 30)
    except TimeoutError:
        code = "still writing"
    await comfyui.stop()
    structlog.get_logger().info("ComfyUI ended", code=code)

asyncio.run(main())
"""


def test_comfyui_output_is_copied_on_in_a_supervisor_started_without_stdout() -> None:
    """Started with stdout closed (`>&-`, Python's sys.stdout None): the copy of ComfyUI's stdout died at its first
    line (None has no write), and ComfyUI, its pipe full, stopped at its next print for good; now its lines go to
    /dev/null and it runs on."""
    child = _start(_COMFYUI_TALKING_WITHOUT_STDOUT, stdout=None, preexec_fn=lambda: os.close(1))
    try:
        _, err = child.communicate(timeout=90)
    finally:
        child.kill()
    assert child.returncode == 0, err[-2000:]
    records = [json.loads(line) for line in err.splitlines() if line.startswith(b"{")]
    ended = [record["code"] for record in records if record["event"] == "ComfyUI ended"]
    assert ended == [0]  # before: ["still writing"]


_COPY_OVERFLOW_THEN_EXIT = """
import os, structlog, sys
from common.logs import configure_logging, unblocking
configure_logging("json", "info")
copy = unblocking(sys.stdout)  # where the supervisor copies ComfyUI's stdout
for i in range(1000):
    structlog.get_logger().info("Job done", i=i)
for i in range(30000):  # 9 MB: more than the queue holds
    copy.write("[comfyui] " + "y" * 300 + "\\n")
structlog.get_logger().info("Supervisor shutdown complete")
SAY_FD = int(sys.argv[1])
""" + _SAY_WHEN_EXIT_WAITS


def test_lines_dropped_from_another_file_are_reported_before_the_log_s_last_line_at_exit() -> None:
    """ComfyUI's stdout copied to stdout, the log on stderr, both unread (one stalled collector): the copy's lines
    dropped were reported on stderr after "Supervisor shutdown complete"; now just before it."""
    read_end, write_end = os.pipe()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _COPY_OVERFLOW_THEN_EXIT, str(write_end)], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=[write_end])  # fmt: skip
    os.close(write_end)
    try:
        with open(read_end, "rb") as said:
            assert said.read(8) == b"exiting\n"  # both pipes unread until the exit waits for them
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err[-2000:]
    records = [json.loads(line) for line in err.splitlines()]
    assert records[-2]["event"] == "Log lines dropped: the log's reader fell behind"
    assert records[-2]["dropped"] == 30000 - len(out.splitlines())
    assert records[-1]["event"] == "Supervisor shutdown complete"
