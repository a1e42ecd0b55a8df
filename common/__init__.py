"""Helpers every process shares: structured logging, settings-error formatting, URL redaction and the
hand-back causes the worker and the queue manager agree on."""
