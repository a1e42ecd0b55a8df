"""A file truncated on the volume while it is downloaded: the download ends at once, what the kernel had queued for
the client dropped too, as a stalled download's is (a close left it to trickle to a slow client first)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

import httpx
from structlog.testing import capture_logs

from queue_manager import QueueManagerServer

from .test_output_ranges import served  # noqa: F401 - the fixture
from .test_outputs import completed_job, held_open_under, output_url
from .test_with_the_worker import wait_until


async def test_a_file_cut_short_while_a_slow_client_reads_it_is_reset_not_trickled(
    served: tuple[QueueManagerServer, httpx.AsyncClient, str], volume: Path  # noqa: F811
) -> None:
    """Before: the connection was closed with abort(), and a client reading 4 KiB every 5 ms went on receiving what
    the kernel had queued (hundreds of KiB) before it learnt the download was cut; now it is reset at once."""
    queue, client, alice = served
    job_id, [large] = await completed_job(queue, client, "alice", {"b.mp4": os.urandom(1 << 20) * 8})
    host, port = queue.url.removeprefix("http://").split(":")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=raw, limit=4096)
    writer.write(f"GET {output_url(job_id, large)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\r\n"
                 .encode())
    await writer.drain()
    after_cut = 0
    try:
        with capture_logs() as logs:
            async with asyncio.timeout(30):
                assert await reader.read(4096), "the download is under way"
                os.truncate(volume / large, 1000)
                with contextlib.suppress(ConnectionResetError):
                    while chunk := await reader.read(4096):
                        if any(line["event"] == "output_shrank" for line in logs):
                            after_cut += len(chunk)
                        await asyncio.sleep(0.005)
        assert [line["event"] for line in logs if line["event"] == "output_shrank"] == ["output_shrank"]
    finally:
        writer.close()
    assert after_cut < 64 * 1024, f"{after_cut} bytes still sent after the cut"
    await wait_until(lambda: not held_open_under(volume))
