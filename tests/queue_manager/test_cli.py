"""`python -m queue_manager` serves until SIGTERM/SIGINT and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import structlog.testing

from queue_manager.__main__ import build_parser
from queue_manager.db_lock import lock_database

from ..conftest import CAP_NET_BIND_SERVICE, run_module_to_exit, without_capabilities

REPO = Path(__file__).resolve().parents[2]


async def start_cli(
    *args: str, env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "queue_manager",
        "--port",
        "0",
        *args,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=preexec_fn,
    )
    try:
        async with asyncio.timeout(10):
            while line := (await process.stdout.readline()).decode():
                if (event := json.loads(line))["event"] == "queue_manager_started":
                    return process, event["url"]
        raise AssertionError("the CLI never reported its URL")
    except BaseException:
        process.kill()  # never leave a server behind a failed test
        await process.wait()
        raise


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_cli_serves_persists_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    db = tmp_path / "cli.db"
    process, url = await start_cli("--db", str(db), "--mode", "priority", "--max-queue-depth", "5")
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/health")).json()["status"] == "healthy"
            status = (await client.get("/api/queue/status")).json()
            assert status["mode"] == "priority"
            created = await client.post("/api/jobs", json={"user_id": "alice", "workflow": {"1": {}}})
            assert created.status_code == 201
    finally:
        process.send_signal(signum)
        async with asyncio.timeout(10):
            output = (await process.stdout.read()).decode()
            assert await process.wait() == 0, output
    assert "queue_manager_stopped" in output
    assert db.exists()


CONTAINER_SOFT_LIMIT = 256  # containers often start with 1024 open files; smaller here to keep the test light


def _container_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (CONTAINER_SOFT_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


async def test_cli_answers_with_more_idle_connections_than_the_soft_open_file_limit(tmp_path: Path) -> None:
    """Each connection holds a file descriptor. At the soft limit the queue could accept nothing, /health
    included, until idle clients left (aiohttp closes them after an hour), and logged an error per accept."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * CONTAINER_SOFT_LIMIT:
        pytest.skip(f"the hard open-file limit ({hard}) leaves no room above {CONTAINER_SOFT_LIMIT}")
    process, url = await start_cli("--db", str(tmp_path / "q.db"), preexec_fn=_container_file_limit)
    host, port = url.removeprefix("http://").split(":")
    idle = []
    try:
        for _ in range(CONTAINER_SOFT_LIMIT + 50):
            idle.append((await asyncio.open_connection(host, int(port)))[1])
        async with httpx.AsyncClient(base_url=url, timeout=3) as client:
            assert (await client.get("/health")).json()["status"] == "healthy"
    finally:
        for writer in idle:
            writer.close()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            output = (await process.stdout.read()).decode()
            await process.wait()
    assert "out of system resource" not in output


async def test_cli_token_from_environment_is_required_and_never_logged(tmp_path: Path) -> None:
    token = "env-token-123"
    process, url = await start_cli("--db", str(tmp_path / "q.db"), env={"QUEUE_MANAGER_TOKEN": token})
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/api/queue/status")).status_code == 401
            authorised = await client.get("/api/queue/status", headers={"Authorization": f"Bearer {token}"})
            assert authorised.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            output = (await process.stdout.read()).decode()
            await process.wait()
    assert token not in output


def test_cli_defaults() -> None:
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.mode, args.max_queue_depth, args.job_timeout, args.token) == (
        "127.0.0.1",
        8080,
        "fifo",
        100,
        3600,
        None,
    )


async def test_cli_logs_one_json_object_per_line_off_a_terminal(tmp_path: Path) -> None:
    process, url = await start_cli("--db", str(tmp_path / "q.db"), "--token", "flag-token-456")
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get("/api/queue/status", headers={"Authorization": "Bearer flag-token-456"})
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            output = (await process.stdout.read()).decode()
            assert await process.wait() == 0
    events = [json.loads(line) for line in output.splitlines()]  # fails on a console-coloured line
    assert [e["event"] for e in events][-2:] == ["queue_manager_stopping", "queue_manager_stopped"]
    assert "flag-token-456" not in output


LEASE_ALLOWED = "(allowed: 0 (no lease), or from 1 to 604800)"


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"LEASE_TIMEOUT_S": "inf"}, "LEASE_TIMEOUT_S"),
        ({"LEASE_TIMEOUT_S": "nan"}, "LEASE_TIMEOUT_S"),
        ({"LEASE_TIMEOUT_S": "-1"}, f"LEASE_TIMEOUT_S: Input should be greater than or equal to 0 {LEASE_ALLOWED}"),
        ({"LEASE_TIMEOUT_S": "1e23"}, f"LEASE_TIMEOUT_S: Input should be less than or equal to 604800 {LEASE_ALLOWED}"),
        ({"LEASE_TIMEOUT_S": "0.5"}, "LEASE_TIMEOUT_S: must be 0 (no lease), or from 1 to 604800 seconds"),
        ({"FINISHED_JOB_RETENTION_S": "inf"}, "FINISHED_JOB_RETENTION_S"),
        ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
        ({"MAX_ATTEMPTS": "three"}, "MAX_ATTEMPTS"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"MAX_PENDING_PER_USER": "-1"}, "MAX_PENDING_PER_USER"),
        ({"MAX_PENDING_PER_USER": "ten"}, "MAX_PENDING_PER_USER"),
        ({"ROUND_ROBIN_WINDOW_S": "inf"}, "ROUND_ROBIN_WINDOW_S"),
        ({"ROUND_ROBIN_WINDOW_S": "-60"}, "ROUND_ROBIN_WINDOW_S"),
    ],
)
async def test_cli_bad_environment_exits_2_naming_the_variable(tmp_path: Path, env: dict[str, str], said: str) -> None:
    """The variable, and the values it takes. Before, LEASE_TIMEOUT_S=1e23 was refused '(allowed: from 0, to
    604800)', leaving out that values above 0 and below 1 are refused too."""
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", str(tmp_path / "q.db"),
        env={**os.environ, **env}, cwd=REPO, timeout_s=20,
    )  # fmt: skip
    assert code == 2
    assert said in err


async def test_add_participant_with_a_bad_environment_exits_2_naming_the_variable(tmp_path: Path) -> None:
    """The same settings as the server's, the same words: and no file written."""
    path = tmp_path / "participants"
    code, err = await run_module_to_exit(
        "queue_manager", "add-participant", "alice", "--participants-file", str(path),
        env={**os.environ, "MAX_ATTEMPTS": "three"}, cwd=REPO, timeout_s=20,
    )  # fmt: skip
    assert code == 2
    assert "MAX_ATTEMPTS" in err
    assert not path.exists()


@pytest.mark.parametrize(
    ("request_head", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", "Invalid character in Content-Length"),
        (b"GET /" + b"a" * 17_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "Got more than 16384 bytes"),
    ],
)
async def test_a_malformed_request_is_one_warning_line_not_an_error_with_a_traceback(
    tmp_path: Path, request_head: bytes, reason: str
) -> None:
    """aiohttp logged a request it could not parse at error level with a 30-line traceback: a port scan read as
    a server failure in the operator's log."""
    process, url = await start_cli("--db", str(tmp_path / "q.db"), env={"LOG_FORMAT": "json"})
    try:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request_head)
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/health")).json()["status"] == "healthy"
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            output = (await process.stdout.read()).decode()
            await process.wait()
    assert answer.startswith(b"HTTP/1.0 400"), answer
    events = [json.loads(line) for line in output.splitlines()]
    refused = [e for e in events if e.get("logger") == "aiohttp.server"]
    assert [(e["level"], "exception" in e) for e in refused] == [("warning", False)], refused
    assert refused[0]["event"].startswith("Malformed HTTP request refused (400): Error handling request from 127.0.0.1")
    assert reason in refused[0]["event"]
    assert not [e for e in events if e["level"] == "error"], output


@pytest.mark.parametrize(
    ("make_db", "said"),
    [
        (lambda tmp: tmp / "no-such-folder" / "q.db", "unable to open database file (its folder must exist"),
        (lambda tmp: (tmp / "notes.txt", (tmp / "notes.txt").write_text("not a database " * 100))[0],
         "file is not a database"),
    ],
    ids=["missing folder", "not a database"],
)
async def test_a_db_that_cannot_be_opened_exits_2_naming_db_without_a_traceback(tmp_path: Path, make_db, said) -> None:
    """Before: a 30-line traceback ending in sqlite3.OperationalError, and exit 1."""
    db = make_db(tmp_path)
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", str(db), env={**os.environ, "LOG_FORMAT": "json"}, cwd=REPO,
        timeout_s=20,
    )  # fmt: skip
    assert code == 2
    assert f"--db {db}: {said}" in err
    assert "Traceback" not in err


async def test_a_db_in_a_missing_folder_says_only_that(tmp_path: Path) -> None:
    """Before: a database_lock_not_taken warning ("remove what is in its place": nothing is) came first."""
    db = tmp_path / "no-such-folder" / "q.db"
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", str(db), env={**os.environ, "LOG_FORMAT": "json"}, cwd=REPO,
        timeout_s=20,
    )  # fmt: skip
    assert code == 2
    assert [json.loads(line)["event"] for line in err.splitlines()] == ["queue_manager_failed"], err


@pytest.mark.parametrize(
    ("db", "said"),
    [("", "argument --db: is empty"), ("  ", "argument --db: is empty"), (".", "argument --db: '.' is a folder"),
     ("q" * 300 + ".db", "argument --db: cannot name a file: File name too long")],
    ids=["empty", "blank", "folder", "name-too-long"],
)
async def test_a_db_that_names_no_file_exits_2_before_creating_anything(tmp_path: Path, db: str, said: str) -> None:
    """Before: '  ' served from a file named by two spaces; '' and a folder exited 2 saying the folder must exist; a
    name longer than the system takes, a 30-line argparse traceback (OSError: File name too long) and exit 1."""
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", db, env={**os.environ, "LOG_FORMAT": "json"}, cwd=tmp_path,
        timeout_s=20,
    )  # fmt: skip
    assert code == 2
    assert said in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("host", ["", "  "], ids=["empty", "blank"])
async def test_a_blank_host_exits_2_rather_than_binding_every_interface(tmp_path: Path, host: str) -> None:
    """Before: --host "" served on every interface (0.0.0.0 and ::, each on a port of its own with --port 0), the
    queue open to the network, and logged url http://:PORT."""
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", str(tmp_path / "q.db"), "--host", host,
        env={**os.environ, "LOG_FORMAT": "json"}, cwd=tmp_path, timeout_s=10,
    )  # fmt: skip
    assert code == 2
    assert "argument --host: is empty: name the address to bind" in err


@pytest.mark.parametrize("flag", ["--outputs-dir", "--participants-file"])
async def test_a_blank_path_flag_exits_2_rather_than_naming_the_current_folder(tmp_path: Path, flag: str) -> None:
    """Before: --outputs-dir "$UNSET" served job outputs from the folder the queue manager was started in, and its
    orphan sweep deleted job-like folders there; --participants-file "" said only "participants file .: is not a
    regular file"."""
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", str(tmp_path / "q.db"), "--token", "operator-token-1", flag, "",
        env={**os.environ, "LOG_FORMAT": "json"}, cwd=tmp_path, timeout_s=10,
    )  # fmt: skip
    assert code == 2, err
    assert f"argument {flag}: is empty: name" in err


@pytest.mark.parametrize("host", ["h" * 64, "a..b"], ids=["label-too-long", "empty-label"])
async def test_a_host_no_resolver_takes_exits_2_without_a_traceback(tmp_path: Path, host: str) -> None:
    """Before: the server's start ended in an uncaught UnicodeError (label too long / empty), logged critical with
    its traceback."""
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", str(tmp_path / "q.db"), "--host", host,
        env={**os.environ, "LOG_FORMAT": "json"}, cwd=tmp_path, timeout_s=20,
    )  # fmt: skip
    assert code == 2, err
    assert f"argument --host: {host!r} is no address or host name (label" in err
    assert "Traceback" not in err


async def test_a_port_already_taken_exits_1_saying_what_to_do(tmp_path: Path) -> None:
    """Before: only 'address already in use', with nothing about --port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, err = await run_module_to_exit(
            "queue_manager", "--port", port, "--db", str(tmp_path / "q.db"), env={**os.environ, "LOG_FORMAT": "json"},
            cwd=REPO, timeout_s=20,
        )  # fmt: skip
    assert code == 1
    [failed] = [json.loads(line) for line in err.splitlines() if '"queue_manager_failed"' in line]
    assert "address already in use" in failed["error"]
    assert f"127.0.0.1:{port}" in failed["hint"] and "--port" in failed["hint"]
    assert "Traceback" not in err


@pytest.mark.skipif(int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 1,
                    reason="any user may bind any port here (net.ipv4.ip_unprivileged_port_start)")
async def test_a_privileged_port_exits_1_saying_so_not_that_another_process_has_it(tmp_path: Path) -> None:
    """Before: --port 80 as a user that may not bind it said "another process listens on 127.0.0.1:80: stop it",
    sending the operator after a process that does not exist."""
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "1", "--db", str(tmp_path / "q.db"), env={**os.environ, "LOG_FORMAT": "json"},
        cwd=REPO, timeout_s=20, preexec_fn=without_capabilities(CAP_NET_BIND_SERVICE),
    )  # fmt: skip
    assert code == 1, err
    [failed] = [json.loads(line) for line in err.splitlines() if '"queue_manager_failed"' in line]
    assert "permission denied" in failed["error"]
    assert "another process" not in failed["hint"]
    assert "--port 1024 or above" in failed["hint"]


async def test_a_second_queue_manager_on_the_same_db_exits_1_naming_the_first_until_that_one_is_killed(
    tmp_path: Path,
) -> None:
    """Before: the second served the same file too (exit 0 on SIGTERM), both handing out its jobs and running lease
    passes and retention on their own. The lock goes with its process: after a SIGKILL a new one starts at once."""
    db = tmp_path / "q.db"
    (tmp_path / "link.db").symlink_to(db)
    first, url = await start_cli("--db", str(db), env={"LOG_FORMAT": "json"})
    try:
        for named in (db, tmp_path / "link.db"):
            code, err = await run_module_to_exit(
                "queue_manager", "--port", "0", "--db", str(named), env={**os.environ, "LOG_FORMAT": "json"},
                cwd=REPO, timeout_s=20,
            )  # fmt: skip
            assert code == 1, err
            [failed] = [json.loads(line) for line in err.splitlines() if '"queue_manager_failed"' in line]
            assert failed["error"] == (f"--db {named} is served by another queue manager (pid {first.pid}, "
                                       f"holding {db}.lock)")
            assert "--db" in failed["hint"]
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/health")).json()["status"] == "healthy"
    finally:
        first.kill()
        await first.wait()
    second, _ = await start_cli("--db", str(db), env={"LOG_FORMAT": "json"})
    second.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        await second.communicate()
    assert second.returncode == 0


async def test_a_link_planted_as_the_db_lock_is_not_followed(tmp_path: Path) -> None:
    """The lock file gets the serving process's id written over it: through a link planted in its place (a shared
    folder) that truncated whatever file the link led to."""
    db, precious = tmp_path / "q.db", tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    Path(f"{db}.lock").symlink_to(precious)
    server, url = await start_cli("--db", str(db), env={"LOG_FORMAT": "json"})
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/health")).json()["status"] == "healthy"
    finally:
        server.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await server.communicate()
    assert precious.read_text() == "keep me\n"
    with structlog.testing.capture_logs() as logs:
        lock_database(db)
    [warning] = [line for line in logs if line["event"] == "database_lock_not_taken"]
    assert warning["path"] == f"{db}.lock" and "a second queue manager" in warning["hint"]


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
async def test_a_second_signal_while_stopping_lets_the_stop_finish(tmp_path: Path, second: int) -> None:
    """Before: the stop signals' handlers were removed as the stop began, so a second Ctrl-C while requests in flight
    were finishing (up to 5 s) ended it in a KeyboardInterrupt traceback, and a second SIGTERM killed it (-15),
    neither saying queue_manager_stopped nor closing the database."""
    process, url = await start_cli("--db", str(tmp_path / "q.db"), env={"LOG_FORMAT": "json"})
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        async with asyncio.timeout(20):
            _, in_flight = await asyncio.open_connection(host, int(port))  # a body that never comes: the stop waits
            in_flight.write(b"POST /api/jobs HTTP/1.1\r\nHost: q\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 100\r\n\r\n{")
            await in_flight.drain()
            process.send_signal(signal.SIGTERM)
            while True:  # the listener is closed inside the stop, before it waits for the request in flight
                try:
                    _, probe = await asyncio.open_connection(host, int(port))
                except ConnectionRefusedError:
                    break
                probe.close()
                await asyncio.sleep(0.02)
            process.send_signal(second)
            output = (await process.stdout.read()).decode()
            code = await process.wait()
            in_flight.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0, output
    assert "Traceback" not in output
    assert [json.loads(line)["event"] for line in output.splitlines()][-1] == "queue_manager_stopped"


async def test_a_fifo_in_place_of_the_db_lock_never_holds_a_second_queue_manager(tmp_path: Path) -> None:
    """The second one read the first's id from the lock file to name it: from a FIFO planted in its place (a shared
    folder), empty, that read waited for good, and the second queue manager neither served nor exited."""
    db = tmp_path / "q.db"
    os.mkfifo(f"{db}.lock")
    first, _ = await start_cli("--db", str(db), env={"LOG_FORMAT": "json"})
    try:
        code, err = await run_module_to_exit(
            "queue_manager", "--port", "0", "--db", str(db), env={**os.environ, "LOG_FORMAT": "json"}, cwd=REPO,
            timeout_s=20,
        )  # fmt: skip
    finally:
        first.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await first.communicate()
    assert code == 1, err
    [failed] = [json.loads(line) for line in err.splitlines() if '"queue_manager_failed"' in line]
    assert failed["error"] == f"--db {db} is served by another queue manager (pid unknown, holding {db}.lock)"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
async def test_an_ipv6_host_is_logged_as_a_url_that_reaches_the_queue_manager(tmp_path: Path) -> None:
    """Before: `--host ::1` logged `url=http://::1:PORT`, which no client parses (the address needs brackets)."""
    process, url = await start_cli("--db", str(tmp_path / "jobs.db"), "--host", "::1")
    try:
        assert url.startswith("http://[::1]:")
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            assert (await client.get("/health")).json()["status"] == "healthy"
    finally:
        process.kill()
        await process.wait()


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
async def test_a_taken_ipv6_port_is_named_in_brackets(tmp_path: Path) -> None:
    """Before: `--host ::1` on a taken port said "another process listens on ::1:PORT" (":::8080" for `--host ::`),
    an address no client or `ss` filter reads as host and port."""
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = await run_module_to_exit(
            "queue_manager", "--host", "::1", "--port", str(port), "--db", str(tmp_path / "q.db"),
            env={**os.environ, "LOG_FORMAT": "json"}, cwd=REPO, timeout_s=20,
        )  # fmt: skip
    assert code == 1, err
    [failed] = [json.loads(line) for line in err.splitlines() if '"queue_manager_failed"' in line]
    assert "address already in use" in failed["error"]
    assert f"another process listens on [::1]:{port}: stop it" in failed["hint"]
