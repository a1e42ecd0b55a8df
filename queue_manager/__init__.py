"""Embedded comfy-multi Queue Manager: the default job queue, and the stand-in tests run the worker against."""

from queue_manager.faults import Fault, FaultInjector
from queue_manager.models import JobPriority, JobStatus, QueueMode
from queue_manager.reports import Report, ReportLog
from queue_manager.server import QueueManagerServer
from queue_manager.store import JobRecord, JobStore, QueueFullError

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
