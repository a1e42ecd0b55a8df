"""Limits of the small HTTP servers that answer probes and scrapes: the worker's health server (:8000) and the
scaler's metrics server. Probes and scrapers send a short head at once; anything else is held off cheaply."""

# A request head (line and headers) must arrive complete within this of the connection opening or of the last
# answer on it: aiohttp's keepalive timer covers both, at an hour by default, and a client dripping its headers
# held up to ~1 MB of them in the process all that time. A keep-alive scraper just reconnects. Not a common
# probe period (5, 10, 15, 30 s): a client reusing a connection every that many seconds would race our close.
REQUEST_HEAD_TIMEOUT_S = 12.0
# What a probe or a scraper sends is a few short headers; aiohttp's default is 128 of up to 8190 bytes each.
MAX_HEADERS = 32
