"""Deployment: the spec in verda/deployment.toml and the command that applies it."""
