"""bench.queue_memory.url_printed: the wait for the queue manager's URL, bounded whatever the process does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench._processes import child
from bench.queue_memory import url_printed

SILENT = "print('starting', flush=True); import time; time.sleep(600)"  # hung before it listens
EXITS = "print('SOME_SETTING: not valid', flush=True); raise SystemExit(3)"


@pytest.mark.timeout(60)
def test_a_queue_manager_that_never_prints_its_url_fails_the_wait_within_its_bound() -> None:
    with (
        child([sys.executable, "-c", SILENT], stdout=subprocess.PIPE, text=True) as process,
        pytest.raises(RuntimeError, match="the queue manager printed no URL in 2 s"),
    ):
        url_printed(process, timeout_s=2)


@pytest.mark.timeout(60)
def test_a_queue_manager_that_exits_before_its_url_fails_the_wait_with_its_exit_code() -> None:
    with (
        child([sys.executable, "-c", EXITS], stdout=subprocess.PIPE, text=True) as process,
        pytest.raises(RuntimeError, match="the queue manager exited 3 before printing its URL"),
    ):
        url_printed(process, timeout_s=30)


def test_the_url_is_found_among_the_lines_before_it() -> None:
    program = "print('a log line'); print('{\"event\": \"listening\", \"url\": \"http://127.0.0.1:1234\"}', flush=True)"
    with child([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True) as process:
        assert url_printed(process, timeout_s=30) == "http://127.0.0.1:1234"
