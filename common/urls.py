"""URLs that may carry credentials (https://user:password@host/…): detect them, and show them without."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def url_credentials(url: str) -> list[str]:
    """The user name and password in `url`, those present (for common.logs.register_secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    return [value for value in (parts.username, parts.password) if value]


def url_has_credentials(url: str) -> bool:
    return bool(url_credentials(url))


def redact_url(url: str) -> str:
    """`url` with its user name and password replaced by ***, for output, status pages and logs."""
    if not url_has_credentials(url):
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))
