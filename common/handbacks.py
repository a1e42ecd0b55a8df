"""Why a job was handed back, as the worker tells the queue manager: the two sides' shared vocabulary.

Only a fault may be the job's own doing (it crashed ComfyUI, or its worker); a replica that stops is not, so a
stop never uses up a job's attempts. Stops are still bounded, so nothing can go round for ever.
"""

from __future__ import annotations

from enum import StrEnum


class HandBackCause(StrEnum):
    # The replica is stopping (scale-down, spot reclaim, deploy) while ComfyUI was healthy.
    SHUTDOWN = "shutdown"
    # ComfyUI died, hung or hit a fatal GPU error, or the worker vanished: the job may have caused it.
    FAULT = "fault"


# A job that twenty stopping replicas could not finish is not helped by another try.
MAX_SHUTDOWN_HANDBACKS = 20


def gives_up(faults: int, shutdowns: int, max_faults: int) -> bool:
    """Is a job handed back this often (this hand-back counted) failed for good rather than put back in line?"""
    return faults >= max_faults or shutdowns >= MAX_SHUTDOWN_HANDBACKS
