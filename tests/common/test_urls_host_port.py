"""host:port as a URL writes it."""

from __future__ import annotations

from common.urls import host_port


def test_an_ipv6_address_is_bracketed_and_a_name_or_ipv4_address_is_not() -> None:
    assert host_port("::", 8080) == "[::]:8080"
    assert host_port("::1", 8080) == "[::1]:8080"
    assert host_port("127.0.0.1", 8080) == "127.0.0.1:8080"
    assert host_port("queue.example.com", 443) == "queue.example.com:443"
