"""The queued log writer (common.log_writer) with a reader that reads on, but slower than lines come, for long: its
queue never written out."""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import threading

from common.log_writer import REPORT_DROPPED_EVERY_S, QueuedLogWriter

QUEUED = 16 * 1024
ROUNDS = 14
ROUND_S = REPORT_DROPPED_EVERY_S / 6


def test_lines_dropped_while_the_reader_stays_behind_are_reported_every_minute() -> None:
    """A page (4 KiB) read each round while twice the queue is logged: the count of lines dropped waited for the
    queue to be written out, which never came, and the gaps went unexplained; now it is logged once a minute
    (clock time) while lines are dropped, each count honest, the lines in order."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    now = [0.0]
    writer = QueuedLogWriter(
        write_end, "utf-8", lambda count, _: writer.write(f"dropped {count} at {now[0]}\n"), QUEUED, lambda: now[0]
    )
    received = bytearray()
    written = 0
    for _ in range(ROUNDS):
        for _ in range(2 * QUEUED // 100):  # more than the queue takes, however far the thread has written it out
            writer.write(f"line {written:05} {'x' * 85}\n")
            written += 1
        received += os.read(read_end, 4096)  # the reader's steady pace, slower than the lines'
        now[0] += ROUND_S
    now[0] = 1000 * REPORT_DROPPED_EVERY_S  # the drain's own report, if any, stamped far later
    reader = threading.Thread(target=lambda: received.extend(b"".join(iter(lambda: os.read(read_end, 65536), b""))))
    reader.start()
    assert writer.wait_written(timeout_s=30)
    os.close(write_end)
    reader.join(timeout=30)
    lines = received.decode().splitlines()
    numbers = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    reports = [re.fullmatch(r"dropped (\d+) at (\S+)", line).groups() for line in lines if line.startswith("dropped")]
    counts, times = [int(count) for count, _ in reports], [float(at) for _, at in reports]
    assert numbers == sorted(set(numbers)) and len(numbers) + sum(counts) == written
    while_dropping = [at for at in times if at < now[0]]
    assert len(while_dropping) >= 2  # before: none, the one report stamped after the queue was written out
    assert all(later - earlier >= REPORT_DROPPED_EVERY_S for earlier, later in itertools.pairwise(while_dropping))
