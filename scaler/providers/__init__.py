"""Providers the scaler drives, each a client + backend: Verda serverless containers, or workers on this machine."""

from scaler.providers.base import Backend, BackendView
from scaler.providers.local import LocalBackend
from scaler.providers.verda.backend import VerdaBackend

__all__ = ["Backend", "BackendView", "LocalBackend", "VerdaBackend"]
