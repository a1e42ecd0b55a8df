"""How far a connection's peer has taken what a server wrote to it (the bytes not yet sent, and a mark that moves
only when the peer takes some), and how to drop what it has not taken.

asyncio counts only what it holds itself (``get_write_buffer_size``): below that, the kernel takes a client's
answers into a send queue that grows up to 4 MB on Linux (``tcp_wmem``) whether or not the client reads any, so
that count stays 0 while a server fills the queue for minutes. On Linux ``TCP_INFO`` says what the kernel holds
unsent and how many bytes the peer has acknowledged, which grows only as it reads (RFC 4898's ThruOctetsAcked).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked (u64) and tcpi_notsent_bytes (u32), in kernels since 4.6.
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_AT = 120
_NOTSENT = struct.Struct("=I")
_NOTSENT_AT = 144
_TCP_INFO_BYTES = _NOTSENT_AT + _NOTSENT.size


def send_progress(transport: asyncio.Transport) -> tuple[int, int]:
    """``(unsent, mark)``: the bytes written to ``transport`` its peer has not been sent, and a number that changes
    when the peer takes some. Without TCP_INFO (not Linux, not TCP), asyncio's own buffer is both: it shrinks as
    the kernel takes from it."""
    unsent = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    tcp_info = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None  # the offsets are Linux's
    if sock is None or tcp_info is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return unsent, unsent
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_BYTES)
    except OSError:  # closed meanwhile
        return unsent, unsent
    if len(info) < _TCP_INFO_BYTES:  # a kernel older than 4.6
        return unsent, unsent
    (acked,) = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)
    (not_sent,) = _NOTSENT.unpack_from(info, _NOTSENT_AT)
    return unsent + not_sent, acked


def drop(transport: asyncio.Transport) -> None:
    """Close ``transport`` at once, dropping what it has not sent: closed, or aborted, the kernel keeps what it holds
    and goes on offering it for minutes to a peer that takes none, so a connection with bytes unsent is reset
    (nginx's reset_timedout_connection)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) and send_progress(transport)[0]:
        with contextlib.suppress(OSError):  # closed meanwhile
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
