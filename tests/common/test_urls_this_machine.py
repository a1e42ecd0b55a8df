"""One rule for "this machine" (common.urls.names_this_machine): localhost, a loopback address, and 0.0.0.0 / ::, which
a connection reaches as the loopback, written in any form a client's resolver reads as an address (inet_aton's 127.1
and 0 too). The deploy's QUEUE_MANAGER_URL check and the proxy and clear-text rules of every client read it alike."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from common.urls import direct_transport, encrypted_or_local, names_this_machine
from queue_manager import QueueManagerServer
from worker.queue_client import QueueClient

from ..hostile.test_secrets import TOKEN, only_proxy, recording_proxy  # noqa: F401 - the fixture

THIS_MACHINE = [
    "http://localhost:8080", "http://127.0.0.1:8080", "http://127.1.2.3:8080", "http://[::1]:8080",
    "http://0.0.0.0:8080", "http://[::]:8080", "http://[0:0:0:0:0:0:0:0]:8080", "http://[::ffff:127.0.0.1]:8080",
    "http://[::ffff:0.0.0.0]:8080", "http://user:pw@0.0.0.0:8080/",
]
ELSEWHERE = [
    "http://queue.example.com:8080", "http://10.0.0.5:8080", "http://[2001:db8::1]:8080", "http://[::ffff:10.0.0.5]",
    "http://0.0.0.0.example.com", "http://[not-an-address", "", "queue",
]


@pytest.mark.parametrize("url", THIS_MACHINE)
def test_loopback_and_the_unspecified_addresses_name_this_machine(url: str) -> None:
    """Before: 0.0.0.0, :: and the IPv4-mapped forms were not this machine's (the deploy check added 0.0.0.0 and ::
    on its own): a proxy set for the machine was given their requests, a queue token with them."""
    assert names_this_machine(url)
    assert encrypted_or_local(url) and direct_transport(url) is not None


@pytest.mark.parametrize("url", ELSEWHERE)
def test_other_hosts_do_not(url: str) -> None:
    assert not names_this_machine(url)
    assert direct_transport(url) is None


# inet_aton's shorthand, which getaddrinfo reads as 127.0.0.1 or 0.0.0.0 without a lookup; httpx connects to the
# loopback for them.
SHORTHAND_THIS_MACHINE = [
    "http://127.1:8080", "http://0:8080", "http://0.0:8080", "http://127.0.1", "http://0x7f.1", "http://0X7F000001",
    "http://2130706433:8080", "http://0177.0.0.1", "http://user:pw@127.1:8080/",
]
SHORTHAND_ELSEWHERE = [
    "http://10.1:8080", "http://1:8080", "http://167772161", "http://256.1", "http://0x100000000", "http://0x",
    "http://127.1.:8080", "http://127.0.0.1.5", "http://0x7f.example.com", "http://1e3",
]


@pytest.mark.parametrize("url", SHORTHAND_THIS_MACHINE)
def test_inet_aton_shorthand_for_loopback_or_unspecified_names_this_machine(url: str) -> None:
    """Before: http://127.1 and http://0 were other hosts, which httpx reaches on the loopback: a proxy set for the
    machine was given their requests (the proxy's own loopback, a token with them), and http:// with a credential to
    them was refused as clear text."""
    assert names_this_machine(url)
    assert encrypted_or_local(url) and direct_transport(url) is not None


@pytest.mark.parametrize("url", SHORTHAND_ELSEWHERE)
def test_other_numeric_hosts_do_not(url: str) -> None:
    assert not names_this_machine(url)
    assert not encrypted_or_local(url) and direct_transport(url) is None



async def test_a_worker_polling_0000_reaches_its_queue_manager_directly_never_through_a_proxy(
    monkeypatch: pytest.MonkeyPatch, recording_proxy  # noqa: F811
) -> None:
    """Before: with HTTP_PROXY set, a worker given QUEUE_MANAGER_URL=http://0.0.0.0:<port> (the queue manager on this
    machine) sent every poll, its token in the Authorization header, to the proxy, and never reached the queue."""
    proxy_url, seen = recording_proxy
    only_proxy(monkeypatch, "HTTP_PROXY", proxy_url)
    async with QueueManagerServer(token=TOKEN) as queue:
        queue.store.submit("alice", {"1": {}})
        client = QueueClient(f"http://0.0.0.0:{urlsplit(queue.url).port}", "w", token=TOKEN)
        try:
            job = await client.next_job()
        finally:
            await client.aclose()
    assert seen == []
    assert job is not None
