"""ComfyUI as a child process: start it, copy its output (scrubbed) into the container log, stop it in bounded
time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import structlog

from common.children import die_with_parent
from common.log_writer import QueuedLogWriter
from common.logs import MAX_LOG_VALUE_CHARS, scrub_all, unblocking
from common.text import escape_controls

log = structlog.get_logger()

LOG_PREFIX = "[comfyui] "
_MAX_LINE_BYTES = 1 << 20  # progress bars redraw with \r and can make one very long "line"
_PUMP_DRAIN_TIMEOUT_S = 2.0
# A process in uninterruptible sleep (a GPU driver call, a hung network mount) outlives its SIGKILL until it leaves
# it: the supervisor goes on and exits rather than wait without end; the container's end takes the process.
_KILL_WAIT_S = 5.0
_EXIT_POLL_S = 0.1


def port_taken(host: str, port: int) -> OSError | None:
    """Why ComfyUI could not listen on host:port, or None when it can. A process that already listens there (a
    ComfyUI left over from an earlier run) would otherwise answer the worker in place of the one started now."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ComfyUI's server: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


def first_unprivileged_port() -> int:
    """The lowest port a process without root or CAP_NET_BIND_SERVICE may listen on (a sysctl; 1024 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


class ComfyUIProcess:
    def __init__(
        self, argv: list[str], *, stop_timeout_s: float = 3.0, env: Mapping[str, str] | None = None
    ) -> None:
        self._argv = argv
        self._stop_timeout_s = stop_timeout_s
        self._env = dict(env) if env is not None else None
        self._process: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> int:
        # A session of its own: a Ctrl-C on a terminal reaches the supervisor only, so the worker drains
        # before ComfyUI goes; and stop() can signal ComfyUI's own children with the group.
        self._process = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=_MAX_LINE_BYTES,
            env=self._env,
            preexec_fn=die_with_parent(os.getpid()),
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        self._pumps = [
            # Through the log's own writer: a log reader that stalls must not block this event loop (/health).
            asyncio.create_task(_copy_lines(self._process.stdout, unblocking(sys.stdout))),
            asyncio.create_task(_copy_lines(self._process.stderr, unblocking(sys.stderr))),
        ]
        log.info("comfyui.started", pid=self._process.pid, argv=self._argv)
        return self._process.pid

    async def wait(self) -> int:
        """The exit code once ComfyUI's own process has exited. Not Process.wait(), which also waits until every
        holder of its output pipes closed them: a helper it started left its crash unseen."""
        assert self._process is not None, "start() first"
        while self._process.returncode is None:  # noqa: ASYNC110 (asyncio has no event for the exit alone)
            await asyncio.sleep(_EXIT_POLL_S)
        return self._process.returncode

    async def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after timeout_s (default stop_timeout_s); returns the exit code (None if never
        started, or if it outlived its SIGKILL by _KILL_WAIT_S)."""
        process = self._process
        if process is None:
            return None
        wait_s = self._stop_timeout_s if timeout_s is None else max(0.0, timeout_s)
        if process.returncode is None:
            log.info("comfyui.stopping", pid=process.pid, kill_after_s=round(wait_s, 2))
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.wait(), wait_s)
            except TimeoutError:
                log.warning("comfyui.kill", pid=process.pid, after_s=round(wait_s, 2))
                self._signal_group(signal.SIGKILL)
                try:
                    await asyncio.wait_for(self.wait(), _KILL_WAIT_S)
                except TimeoutError:
                    log.error("comfyui.kill_ignored", pid=process.pid, after_s=_KILL_WAIT_S)
        self.kill_leftovers()  # they would hold the pipes open otherwise
        await self._drain_pumps()
        log.info("comfyui.stopped", pid=process.pid, code=process.returncode)
        return process.returncode

    def kill_leftovers(self) -> None:
        """SIGKILL what is left of ComfyUI's group (its session): the children it started (custom nodes' helpers)."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)

    async def _drain_pumps(self) -> None:
        _done, pending = await asyncio.wait(self._pumps, timeout=_PUMP_DRAIN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


async def _copy_lines(stream: asyncio.StreamReader, sink: TextIO | QueuedLogWriter) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # longer than _MAX_LINE_BYTES: asyncio drops it; keep copying what follows
            _write_line(sink, f"<line longer than {_MAX_LINE_BYTES} bytes dropped>")
            continue
        if not line:
            return
        # Scrubbed, and its control characters escaped, as every other line: ComfyUI prints a workflow's inputs (a
        # presigned URL, an ESC sequence) in its errors. Cut as every other log value first: scrubbing a whole 1 MiB
        # line held this event loop (the worker's, the health server's) for 0.5 s.
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        _write_line(sink, escape_controls(scrub_all(text, MAX_LOG_VALUE_CHARS), keep_lines=True))


def _write_line(sink: TextIO | QueuedLogWriter, text: str) -> None:
    """Never raises: a copy that stopped would leave ComfyUI blocked on its next write once the pipe is full."""
    try:
        try:
            sink.write(f"{LOG_PREFIX}{text}\n")
        except UnicodeEncodeError:  # a log that is not UTF-8 (PYTHONIOENCODING=ascii, a Latin-1 locale)
            sink.write(f"{LOG_PREFIX}{text.encode('ascii', 'backslashreplace').decode('ascii')}\n")
        sink.flush()
    except (OSError, ValueError):  # a closed or full log: the line is lost, the copying goes on
        pass
