"""The suite's network guard (tests/conftest.py, `no_network`): a test that tries to reach a host on the internet
fails naming it, even when the code under test swallowed the refusal; loopback and reserved names still work."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytest of its own (a child process: in this one, modules an inner run imports are dropped after it), with
    the suite's conftest."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def test_a_request_to_a_real_host_fails_the_test_naming_it_though_the_code_swallowed_the_refusal(inner) -> None:
    # RunPod's proxy is the default of the pods' health probe; the probe counts a connection error as "says
    # nothing", so without the guard this test passed, and on a machine with internet it asked RunPod.
    inner.makepyfile(
        """
        import asyncio
        from scaler.providers.runpod.health import PodHealthProbe

        def test_default_probe():
            async def ask():
                probe = PodHealthProbe()
                try:
                    return await probe.unhealthy(["abc"])
                finally:
                    await probe.aclose()
            assert asyncio.run(ask()) == {}
        """
    )
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_default_probe tried to reach abc-8000.proxy.runpod.net:443 over the network*"])


def test_an_address_on_the_internet_is_refused_and_named(inner) -> None:
    inner.makepyfile(
        """
        import socket, pytest

        def test_connect():
            with socket.socket() as sock:
                assert sock.connect_ex(("8.8.8.8", 53)) != 0
        """
    )
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_connect tried to reach 8.8.8.8:53 over the network*"])


def test_loopback_and_the_names_reserved_for_tests_are_no_violation(inner) -> None:
    inner.makepyfile(
        """
        import asyncio, httpx, pytest

        async def talk() -> None:
            server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            async with server:
                for host in ("localhost", "127.0.0.1"):
                    _, writer = await asyncio.open_connection(host, port)
                    writer.close()
            for host in ("queue.example.com", "no-such-host.invalid", "192.0.2.1"):
                with pytest.raises(OSError):
                    await asyncio.open_connection(host, 443)
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient() as client:
                    await client.get("https://queue.example.com/health")

        def test_talk():
            asyncio.run(talk())
        """
    )
    inner.runpytest_subprocess().assert_outcomes(passed=1)
