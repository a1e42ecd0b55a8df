"""Stop signals taken by an asyncio loop without a traceback per signal when they come faster than it reads them."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable


def take_stop_signals(handler: Callable[[], object], signals: Iterable[signal.Signals]) -> None:
    """``handler`` called in the loop for each of ``signals``. asyncio's wakeup socket, filled by a flood of signals the
    loop has yet to read, printed a Python traceback per signal on stderr (not a log line: 1,722 for 2,000 SIGTERMs),
    queued from the C signal handler through a lock that is not signal-safe (CPython's own comment: a signal in it
    can deadlock the process). Unwarned, a full socket drops the same bytes: the loop still takes the signals."""
    signals = tuple(signals)
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, handler)
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # one sent while no wakeup fd is set waits
    try:
        signal.set_wakeup_fd(signal.set_wakeup_fd(-1), warn_on_full_buffer=False)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
