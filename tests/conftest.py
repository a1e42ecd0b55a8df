"""Fixtures every test folder may use: the recorded data in tests/fixtures (see its README), a hand-moved clock,
and the guard that keeps every test off the internet."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import ipaddress
import json
import logging
import os
import reprlib
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from common import logs

T = TypeVar("T")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORKFLOWS = FIXTURES / "workflows"
TRANSCRIPTS = FIXTURES / "comfyui-0.8.0"


async def wait_for(predicate: Callable[[], object], timeout: float = 15.0, step: float = 0.01) -> None:
    """Poll ``predicate`` every ``step`` seconds until it is true; TimeoutError fails the test after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(step)


@contextlib.asynccontextmanager
async def served(app: web.Application, **runner_options: Any) -> AsyncIterator[str]:
    """``app`` served on a free loopback port while the block runs: its base URL. ``runner_options`` go to
    aiohttp's AppRunner (a short ``shutdown_timeout`` for a handler that never ends)."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class LoopbackPeer:
    """A loopback HTTP server answering every method and path with ``answer``: a peer of one misbehaviour."""

    def __init__(self) -> None:
        self.url = ""
        self._serving = contextlib.AsyncExitStack()

    async def answer(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.answer)
        self.url = await self._serving.enter_async_context(served(app))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._serving.aclose()


class AuthorizationEchoingPeer(LoopbackPeer):
    """A proxy's or a broken server's error page, 503, quoting the request's Authorization header."""

    async def answer(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text=f"upstream down; you sent {request.headers.get('Authorization')}")


# Headers of one connection, not of the request or answer passed on: each side writes its own.
HOP_BY_HOP = frozenset(("host", "connection", "keep-alive", "content-length", "transfer-encoding"))


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """``headers`` without those of one connection."""
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in HOP_BY_HOP)


@dataclass(frozen=True)
class Answer:
    """The upstream's answer to a request a loopback_proxy passed on, read whole."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


# Before the upstream is asked: (the request, its body, the session to the upstream) → an answer of its own, or None.
Instead = Callable[[web.Request, bytes, aiohttp.ClientSession], Awaitable[web.StreamResponse | None]]
# The upstream's answer in hand: (the request, the answer) → another answer (rewritten, delayed, dripped), or None.
Rewrite = Callable[[web.Request, Answer], Awaitable[web.StreamResponse | None]]


@contextlib.asynccontextmanager
async def loopback_proxy(
    upstream_url: str, instead: Instead | None = None, rewrite: Rewrite | None = None
) -> AsyncIterator[str]:
    """A proxy on loopback in front of ``upstream_url`` (its base URL): every request's method, path, query,
    headers and body passed on and the answer passed back, but what ``instead`` or ``rewrite`` answer."""
    async with aiohttp.ClientSession(auto_decompress=False) as upstream:

        async def forward(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            if instead is not None and (own := await instead(request, body, upstream)) is not None:
                return own
            async with upstream.request(
                request.method, upstream_url + str(request.rel_url), data=body, headers=end_to_end(request.headers)
            ) as passed_on:
                answer = Answer(passed_on.status, passed_on.headers, await passed_on.read())
            if rewrite is not None and (other := await rewrite(request, answer)) is not None:
                return other
            return web.Response(status=answer.status, body=answer.body, headers=end_to_end(answer.headers))

        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{path:.*}", forward)
        async with served(app, shutdown_timeout=0.5) as url:
            yield url


NOBODY = 65534


def run_as_nobody(work: Callable[[], Any]) -> Any:
    """``work()`` in a forked child running as nobody when we are root (root writes and removes anywhere, the
    container's uid 10001 does not); its result comes back as JSON through a pipe. The child leaves without
    running pytest's clean-up."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            os.write(write_end, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(report)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another uid can reach (pytest's tmp_path sits under a 0700 folder)."""
    with tempfile.TemporaryDirectory(prefix="shared-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


class ManualClock:
    """A monotonic clock the test moves by hand, shared by a fake API and the code under test."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# Names and addresses no test may reach but that tests use on purpose as "a host nothing answers": the names
# RFC 2606/6761 reserve for documentation and tests, and RFC 5737's documentation networks (TEST-NET-1/2/3). They
# are refused like any other host, but a test naming them is not a mistake, so they are not reported.
RESERVED_DOMAINS = ("example.com", "example.net", "example.org", "example", "invalid", "test")
RESERVED_NETWORKS = tuple(map(ipaddress.ip_network, ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")))


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@functools.cache
def _this_machines(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is one of this machine's own addresses (a socket can bind to it), as servers under test
    bound to 0.0.0.0 or to the machine's address are reached."""
    with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


class NoNetwork:
    """Refuses, at once, to resolve any name but localhost and to connect anywhere but this machine, and records
    each refused host that is not reserved for tests. Covers the test process only (the asyncio loop, anyio, httpx,
    aiohttp and requests all resolve through socket.getaddrinfo and connect through socket.socket.connect); the
    child processes that supervisor, worker and demo tests start are not covered, and talk to loopback only."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._getaddrinfo = socket.getaddrinfo
        self._connect = socket.socket.connect

    def allowed(self, host: str | bytes | None, port: object) -> bool:
        """Whether ``host`` is this machine; if it is not, and not reserved for tests, the attempt is recorded."""
        name = (host.decode() if isinstance(host, bytes) else host or "").lower().rstrip(".")
        ip = _ip(name.split("%")[0])  # an IPv6 address may carry its interface: fe80::1%eth0
        if name in ("", "localhost") or (ip is not None and (ip.is_loopback or _this_machines(ip))):
            return True
        reserved = any(name == domain or name.endswith("." + domain) for domain in RESERVED_DOMAINS) or (
            ip is not None and any(ip in network for network in RESERVED_NETWORKS)
        )
        if not reserved:
            self.attempts.append(f"{name}:{port}")
        return False

    def getaddrinfo(self, host: str | bytes | None, port: object, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if _ip(name or "") is None and not self.allowed(name, port):  # an address is checked when connected to
            raise socket.gaierror(socket.EAI_NONAME, f"{reprlib.repr(name)}: refused by the test suite's network guard")
        return self._getaddrinfo(host, port, *args, **kwargs)

    def connect(self, sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not self.allowed(address[0], address[1]):
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{address[0]}: refused by the test suite's network guard")
        return self._connect(sock, address)

    def connect_ex(self, sock: socket.socket, address: Any) -> int:
        try:
            self.connect(sock, address)
        except OSError as exc:
            return exc.errno or errno.ECONNREFUSED
        return 0


@pytest.fixture(autouse=True)
def no_network(request: pytest.FixtureRequest) -> Iterator[NoNetwork]:
    """Nothing may leave this machine at test time: a test that tried fails, naming the hosts, even when the
    refusal was swallowed on the way (a test must not pass because a request it should not make failed)."""
    guard = NoNetwork()
    with pytest.MonkeyPatch.context() as patch:  # a context of its own: a test's monkeypatch.undo() keeps it
        patch.setattr(socket, "getaddrinfo", guard.getaddrinfo)
        patch.setattr(socket.socket, "connect", lambda sock, address: guard.connect(sock, address))
        patch.setattr(socket.socket, "connect_ex", lambda sock, address: guard.connect_ex(sock, address))
        yield guard
    if guard.attempts:
        pytest.fail(
            f"{request.node.name} tried to reach {', '.join(dict.fromkeys(guard.attempts))} over the network: "
            "point it at a stand-in on loopback (standins/)"
        )


@functools.cache
def _workflow_texts() -> dict[str, str]:
    return {path.stem: path.read_text() for path in WORKFLOWS.glob("*.json")}


@pytest.fixture
def workflows() -> dict[str, dict]:
    """The API-format test workflows of tests/fixtures/workflows, by file name without .json: each test's own copy,
    which it may change (one shared by the session, changed by one test, failed later tests using it)."""
    return {name: json.loads(text) for name, text in _workflow_texts().items()}


@pytest.fixture(autouse=True)
def _restore_stdlib_logging() -> Iterator[None]:
    """configure_logging routes the standard logging module to the stream it is given; in a test that is
    pytest's capture stream, closed afterwards, and a later test's httpx record would fail writing there."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def forget_registered_secrets() -> Iterator[None]:
    """The scaler's CLI and the deploy register their settings' secrets process-wide (a URL's user name "worker"
    too): one test's must not mask another test's output, now that `status` and errors are scrubbed like logs."""
    before = set(logs._secret_values)
    yield
    logs._secret_values.intersection_update(before)


async def interrupted_when(process: asyncio.subprocess.Process, holding) -> tuple[int, str]:
    """SIGINT once ``holding()`` says the start is held there; the exit code and stderr."""
    try:
        async with asyncio.timeout(30):
            while not holding():
                await asyncio.sleep(0.02)
            process.send_signal(signal.SIGINT)
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


def imports_held(module: str) -> str:
    """A `python -c` script: `python -m <module>` with its import of structlog held until a signal comes, a marker
    file (the script's last argument) made once it is held."""
    return (
        "import runpy, sys, time\n"
        "marker = sys.argv.pop()\n"
        "class Hold:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'structlog':\n"
        "            open(marker, 'w').close()\n"
        "            time.sleep(60)\n"
        "sys.meta_path.insert(0, Hold())\n"
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    )


# linux/capability.h: binding a port below net.ipv4.ip_unprivileged_port_start; reading any file whatever its mode
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_NET_BIND_SERVICE = 1, 2, 10
PR_CAPBSET_DROP = 24  # linux/prctl.h


def without_capabilities(*capabilities: int) -> Callable[[], None]:
    """A preexec_fn: the child's exec drops these from root's rights (the bounding set), so it runs as the image's
    uid 10001 would on them, keeping its others (a test needs no folders another uid can reach). As any user,
    nothing to drop."""

    def drop() -> None:
        if os.geteuid() != 0:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in capabilities:
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {capability})")

    return drop


async def run_to_exit(
    argv: list[str], *, env: dict[str, str], cwd: Path | None = None, timeout_s: float = 30,
    preexec_fn: Callable[[], None] | None = None, stderr_into_stdout: bool = False,
) -> tuple[int, str, str]:
    """Run ``argv`` to its end: its exit code, stdout and stderr (with ``stderr_into_stdout``, both in stdout as
    written, and stderr empty). One that outlives ``timeout_s`` is killed and fails the test."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, preexec_fn=preexec_fn, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if stderr_into_stdout else asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except TimeoutError:
        raise AssertionError(f"still running after {timeout_s} s") from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), (err or b"").decode(errors="replace")


async def run_module_to_exit(
    module: str, *args: str, env: dict[str, str], cwd: Path, timeout_s: float = 30,
    preexec_fn: Callable[[], None] | None = None,
) -> tuple[int, str]:
    """Run `python -m module args` to its end (run_to_exit): its exit code and stderr."""
    argv = [sys.executable, "-m", module, *args]
    code, _, err = await run_to_exit(argv, env=env, cwd=cwd, timeout_s=timeout_s, preexec_fn=preexec_fn)
    return code, err


async def drip_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, within_s: float = 5) -> None:
    """Send one more byte every 50 ms (never idle, never done) until the server closes the connection. A reset
    is a close too: a server closing with our last bytes unread sends RST, not FIN, depending on timing."""
    async with asyncio.timeout(within_s):
        while not reader.at_eof():
            writer.write(b"a")
            try:
                async with asyncio.timeout(0.05):
                    await reader.read(1024)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
    writer.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server has closed this connection (one it closed is at its end at once; an open one is given
    0.3 s to say something)."""
    try:
        async with asyncio.timeout(0.3):
            return await reader.read(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


async def half_sent_requests(
    host: str, port: int, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` connections opened one after the other, each with a request head never finished."""
    connections = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        connections.append((reader, writer))
    return connections


@contextlib.asynccontextmanager
async def stalling_clients(port: int, post_path: str) -> AsyncIterator[None]:
    """Two clients a server's stop must not wait on: one pipelines 2000 scrapes and never reads the answers (a
    handler blocked writing), one sends a POST head and never its body (lingered on)."""
    with socket.socket() as never_reads, socket.create_connection(("127.0.0.1", port)) as never_sends_its_body:
        never_reads.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        never_reads.connect(("127.0.0.1", port))
        never_reads.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)
        head = f"POST {post_path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        never_sends_its_body.sendall(head.encode() + b"abc")
        await asyncio.sleep(0.5)  # both in the server's hands
        yield


class LoopThread:
    """An event loop running in a thread of its own, for synchronous tests (hypothesis drives only those) that
    need real servers on loopback: `run(coro)` runs a coroutine there and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
