"""GET /metrics's answer: a Prometheus registry in the format the scraper's Accept asks for."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


def metrics_response(registry: CollectorRegistry, accept: str) -> web.Response:
    """``registry`` in the format ``accept`` asks for; the text format, as for no Accept, for a version
    prometheus_client cannot compare (version=abc: its choose_encoder raises TypeError, a 500 otherwise)."""
    try:
        encode, content_type = choose_encoder(accept)
    except TypeError:
        encode, content_type = choose_encoder("")
    response = web.Response(body=encode(registry))
    response.headers["Content-Type"] = content_type
    return response
