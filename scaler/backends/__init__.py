"""Backends the scaler drives: Verda serverless containers, or worker processes on this machine."""

from scaler.backends.base import Backend, BackendView
from scaler.backends.local import LocalBackend
from scaler.backends.verda import VerdaBackend

__all__ = ["Backend", "BackendView", "LocalBackend", "VerdaBackend"]
