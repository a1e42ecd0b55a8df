"""Log lines written to a file descriptor by one thread, so a log's reader that stalls never stalls the process.

Written where they were made, a reader that stopped reading (a log collector, `docker run` attached to a paused
terminal) filled the pipe (64 KiB), and the next line blocked the event loop: /health went unanswered, and the
platform killed the replica mid-job."""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator

# What waits for a reader, in characters; past it, lines are dropped and counted.
MAX_QUEUED_CHARS = 4 * 1024 * 1024
# The newest of the lines dropped since the last one queued, in characters: kept for the exit, where they are the
# process's last words (its shutdown line, a crash's traceback) and are written after the report of the others.
KEPT_DROPPED_CHARS = 256 * 1024
# While lines are dropped, their count is reported at most this often: a reader that stays behind never lets the
# queue be written out, and the gaps in the log went unexplained.
REPORT_DROPPED_EVERY_S = 60.0
# How long the exit waits for the queued lines to be written (a reader that stalled may never take them).
EXIT_FLUSH_S = 5.0
# Set while this thread reports lines dropped: the report is queued whatever the room, in whichever writer logs it.
_reporting = threading.local()


class QueuedLogWriter:
    """Lines (each ending in a newline) kept in order in a bounded queue and written to ``fd`` by a thread of its
    own. A line that does not fit is dropped and counted; once the queue is written out, ``report_dropped`` gets
    the count (it logs one line saying so, through this writer; with, at exit, the time.time() the last of them
    was dropped, else None), and meanwhile every REPORT_DROPPED_EVERY_S (on
    ``clock``) while lines are dropped. The newest lines dropped are kept until a line is queued after them
    (KEPT_DROPPED_CHARS), for the exit."""

    def __init__(
        self,
        fd: int,
        encoding: str,
        report_dropped: Callable[[int, float | None], None],
        max_queued_chars: int = MAX_QUEUED_CHARS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fd = fd
        self._encoding = encoding
        self._report_dropped = report_dropped
        self._max_queued_chars = max_queued_chars
        self._clock = clock
        self._lines: collections.deque[str] = collections.deque()
        self._queued_chars = 0
        self._dropped = 0
        self._dropping_since: float | None = None
        self._newest_dropped: collections.deque[tuple[str, float]] = collections.deque()  # with when (time.time())
        self._newest_dropped_chars = 0
        self._counted_dropped_at = 0.0  # when the newest of the lines only counted was dropped
        self._held: list[str] | None = None
        self._changed = threading.Condition(threading.RLock())
        threading.Thread(target=self._write_forever, name="log-writer", daemon=True).start()

    def write(self, line: str) -> None:
        with self._changed:
            full = self._queued_chars + len(line) > self._max_queued_chars
            if full and self._held is None and not getattr(_reporting, "active", False):
                self._drop(line)
                return
            self._append([line])

    def _drop(self, line: str) -> None:
        self._dropped += 1
        self._newest_dropped.append((line, time.time()))
        self._newest_dropped_chars += len(line)
        while self._newest_dropped_chars > KEPT_DROPPED_CHARS:
            self._count_oldest_kept()
        if self._dropping_since is None:
            self._dropping_since = self._clock()
        elif self._clock() - self._dropping_since >= REPORT_DROPPED_EVERY_S:
            self._report()

    def _append(self, lines: list[str]) -> None:
        self._lines.extend(lines)
        self._queued_chars += sum(map(len, lines))
        self._forget_newest_dropped()  # older than what was queued: counted only
        self._changed.notify_all()

    def _forget_newest_dropped(self) -> None:
        while self._newest_dropped:
            self._count_oldest_kept()

    def _count_oldest_kept(self) -> None:
        line, self._counted_dropped_at = self._newest_dropped.popleft()
        self._newest_dropped_chars -= len(line)

    def flush(self) -> None:
        """Nothing to do: the thread writes every line in order (for callers that flush a text stream)."""

    def wait_written(self, timeout_s: float = EXIT_FLUSH_S) -> bool:
        """Whether every line queued was written within ``timeout_s``."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._lines, timeout_s)

    @contextlib.contextmanager
    def last_line_held(self) -> Iterator[None]:
        """At exit: the last lines written (the process's last words: its shutdown line, a crash's traceback) kept
        back while the lines dropped are reported, this writer's or another's: after them, the tail read as if the
        process went on past its end. They are the newest lines dropped, if any (no longer counted: they are
        written), else the last line queued. What is written meanwhile, those reports, is queued whatever the
        room."""
        with self._changed:
            self._held = [line for line, _ in self._newest_dropped]
            self._dropped -= len(self._held)
            self._newest_dropped.clear()
            self._newest_dropped_chars = 0
            if not self._held and len(self._lines) > 1:  # the first may be being written
                self._held = [self._lines.pop()]
                self._queued_chars -= len(self._held[0])
        try:
            yield
        finally:
            with self._changed:
                held, self._held = self._held, None
                self._append(held)

    def report_dropped_now(self) -> None:
        """The count of lines dropped not yet reported, reported now (at exit), stamped when the last of them was
        dropped: stamped now, it came after the last lines it precedes, and a collector sorting by time put it
        after them."""
        with self._changed:
            if self._dropped:
                self._report(self._counted_dropped_at)

    def _write_forever(self) -> None:
        # Python runs its handlers in the main thread alone; a signal the kernel gave this one while the main thread
        # swaps a handler (the default action back for a moment) would end the process (worker.service).
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._lines)
                line = self._lines[0]
            self._write(line.encode(self._encoding, "backslashreplace"))
            with self._changed:  # reentrant: the report of lines dropped is queued through write()
                self._lines.popleft()
                self._queued_chars -= len(line)
                if self._dropped and not self._lines:
                    self._report()
                self._changed.notify_all()

    def _report(self, dropped_at: float | None = None) -> None:
        dropped, self._dropped, self._dropping_since = self._dropped, 0, None
        self._forget_newest_dropped()  # counted in this report
        _reporting.active = True
        try:
            self._report_dropped(dropped, dropped_at)  # logged, through write() too (the lock is reentrant)
        finally:
            _reporting.active = False

    def _write(self, data: bytes) -> None:
        # Lost if it cannot be written (a full disk, a reader gone: EPIPE), as the logging module's handlers do.
        with contextlib.suppress(OSError):
            while data:
                try:
                    data = data[os.write(self.fd, data) :]
                except BlockingIOError:  # set non-blocking by a process sharing the file: wait for room
                    self._wait_for_room()

    def _wait_for_room(self) -> None:
        poll = select.poll()
        poll.register(self.fd, select.POLLOUT)
        poll.poll()
