"""The benches that hold connections open against a server that accepts them and never reads (another version, a
wedged one): each fails naming it within its bound, rather than blocking in a send for ever."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.test_benches_run import SILENT_HEALTH_SERVER, health_server_source, run_bench

NEVER_READS = """
import socket


class HealthServer:
    def __init__(self, *args, **kwargs):
        self.listener = socket.socket()

    async def start(self):
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)  # the kernel accepts; nothing ever reads
        return self.listener.getsockname()[1]
"""
UNREAD = "the server read nothing of an open connection for 10 s (SOCKET_TIMEOUT_S)"


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("name", "arguments", "failure"), [
    ("head_memory", ["--headers", "100", "--field-bytes", "65536"], UNREAD),
    ("slow_headers", ["--headers", "2000"], "the server did not read a request's first bytes in 10 s"),
])  # fmt: skip
def test_a_server_that_never_reads_fails_the_bench_within_its_bound(
    name: str, arguments: list[str], failure: str, tmp_path: Path
) -> None:
    """Before, the bench blocked in sendall() for good (killed at the test's 60 s)."""
    health_server_source(tmp_path, NEVER_READS)
    run = run_bench(name, ["--server", "health", "--clients", "1", "--hold", "0", *arguments], tmp_path,
                    timeout_s=60, cwd=tmp_path)  # fmt: skip
    assert run.returncode != 0
    assert f"RuntimeError: {failure}" in run.stderr, run.stderr[-3000:]
    assert "rss_" not in run.stdout


@pytest.mark.timeout(90)
def test_a_server_that_never_answers_the_last_probe_is_said_in_the_figures(tmp_path: Path) -> None:
    """A health server (another version, a wedged one) that reads the final GET /health and never answers: before,
    the probe's ReadTimeout ended the bench in a traceback, its figures unprinted. Now they are, the probe's with why
    it has no status."""
    health_server_source(tmp_path, SILENT_HEALTH_SERVER)
    run = run_bench("slow_headers", ["--server", "health", "--clients", "1", "--headers", "2", "--hold", "0"],
                    tmp_path, timeout_s=60, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "'rss_after_hold_mb': " in run.stdout
    assert "'probe': 'no answer: ReadTimeout (5 s timeout)'}" in run.stdout, run.stdout
