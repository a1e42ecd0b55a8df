"""Embedded comfy-multi Queue Manager: the default job queue, and the stand-in tests run the worker against."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from queue_manager.faults import Fault, FaultInjector
    from queue_manager.models import JobPriority, JobStatus, QueueMode
    from queue_manager.reports import Report, ReportLog
    from queue_manager.server import QueueManagerServer
    from queue_manager.store import JobRecord, JobStore, QueueFullError

# Each public name's module, imported on first use: `python -m queue_manager` loads the server (aiohttp, 0.4 s) in
# __main__, where a Ctrl-C meanwhile ends in one line rather than a traceback.
_MODULES = {
    "Fault": "faults",
    "FaultInjector": "faults",
    "JobPriority": "models",
    "JobStatus": "models",
    "QueueMode": "models",
    "Report": "reports",
    "ReportLog": "reports",
    "QueueManagerServer": "server",
    "JobRecord": "store",
    "JobStore": "store",
    "QueueFullError": "store",
}

__all__ = [
    "Fault",
    "FaultInjector",
    "JobPriority",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "QueueFullError",
    "QueueManagerServer",
    "QueueMode",
    "Report",
    "ReportLog",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
