"""Helpers every process shares: structured logging and settings-error formatting."""
