"""A token per participant (QUEUE_MANAGER_PARTICIPANTS_FILE): each sees, lists and cancels only their own jobs.
Before it, a workshop's 20 people held one token, user_id was whatever the client said, and anyone could read, list
or cancel anyone's job and see where its outputs went."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from queue_manager import JobStatus, QueueManagerServer
from queue_manager.participants import (
    MAX_FILE_BYTES,
    ParticipantsFileError,
    add_participant,
    read_participants,
    remove_participant,
    token_hash,
)

from ..conftest import run_module_to_exit
from .test_cli import REPO, start_cli
from .test_worker_token import WORKER_ROUTES, bearer, head_answering_a_report_of_50_mb_unsent

OPERATOR = "operator-token-1"
WORKERS = "workers-token-2"
WORKFLOW = {"1": {}}
ZEROS = "sha256:" + "0" * 64


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("QUEUE_MANAGER")}, **extra}


@pytest.fixture
def participants_file(tmp_path: Path) -> Path:
    return tmp_path / "participants"


@pytest.fixture
def tokens(participants_file: Path) -> dict[str, str]:
    return {user: add_participant(participants_file, user) for user in ("alice", "bob")}


@pytest.fixture
async def queue(participants_file: Path, tokens: dict[str, str]) -> AsyncIterator[QueueManagerServer]:
    async with QueueManagerServer(token=OPERATOR, participants_file=participants_file) as server:
        yield server


@pytest.fixture
async def client(queue: QueueManagerServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=queue.url, timeout=5.0) as http:
        yield http


async def test_a_participant_submits_as_themselves_only(client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
    with capture_logs() as logs:
        other = await client.post("/api/jobs", json={"user_id": "bob", "workflow": WORKFLOW},
                                  headers=bearer(tokens["alice"]))
    own = await client.post("/api/jobs", json={"user_id": "alice", "workflow": WORKFLOW},
                            headers=bearer(tokens["alice"]))
    assert other.status_code == 403
    assert "user_id" in other.json()["detail"] and "alice's own token" in other.json()["detail"]
    assert own.status_code == 201 and own.json()["user_id"] == "alice"
    [refusal] = [line for line in logs if line["event"] == "Request refused"]
    assert (refusal["status"], refusal["route"]) == (403, "submit-job")
    assert tokens["alice"] not in repr(logs)


async def test_another_participants_job_answers_as_an_unknown_one(
    queue: QueueManagerServer, client: httpx.AsyncClient, tokens: dict[str, str]
) -> None:
    bobs = queue.store.submit("bob", WORKFLOW)
    alice = bearer(tokens["alice"])
    unknown_get = await client.get("/api/jobs/no-such-job", headers=alice)
    unknown_delete = await client.delete("/api/jobs/no-such-job", headers=alice)
    got = await client.get(f"/api/jobs/{bobs.id}", headers=alice)
    deleted = await client.delete(f"/api/jobs/{bobs.id}", headers=alice)
    assert (got.status_code, got.json()) == (unknown_get.status_code, unknown_get.json()) == (404, {
        "detail": "Job not found"})
    assert (deleted.status_code, deleted.json()) == (unknown_delete.status_code, unknown_delete.json())
    assert queue.store.get(bobs.id).status is JobStatus.PENDING, "not cancelled"
    own = await client.get(f"/api/jobs/{bobs.id}", headers=bearer(tokens["bob"]))
    cancelled = await client.delete(f"/api/jobs/{bobs.id}", headers=bearer(tokens["bob"]))
    assert (own.status_code, cancelled.status_code) == (200, 204)


async def test_a_participant_lists_their_own_jobs_page_by_page(
    queue: QueueManagerServer, client: httpx.AsyncClient, tokens: dict[str, str]
) -> None:
    ids = {user: [] for user in ("alice", "bob")}
    for user in ("bob", "alice", "bob", "alice", "bob", "alice"):
        ids[user].append(queue.store.submit(user, WORKFLOW).id)
    alice = bearer(tokens["alice"])
    seen, positions, params = [], [], {"limit": "1"}
    while True:
        page = await client.get("/api/jobs", params=params, headers=alice)
        assert page.status_code == 200
        seen += [job["id"] for job in page.json()]
        positions += [job["position_in_queue"] for job in page.json()]
        if "X-Next-Cursor" not in page.headers:
            break
        params = {"limit": "1", "after": page.headers["X-Next-Cursor"]}
    named = await client.get("/api/jobs", params={"user_id": "alice"}, headers=alice)
    other = await client.get("/api/jobs", params={"user_id": "bob"}, headers=alice)
    assert seen == ids["alice"]
    assert positions == [1, 3, 5], "places in the whole line, as before: bob's jobs ahead count, unnamed"
    assert [job["id"] for job in named.json()] == ids["alice"]
    assert other.status_code == 403 and "user_id" in other.json()["detail"]


async def test_a_participant_reads_the_queue_status_which_names_nobody(
    queue: QueueManagerServer, client: httpx.AsyncClient, tokens: dict[str, str]
) -> None:
    queue.store.submit("bob", WORKFLOW)
    theirs = await client.get("/api/queue/status", headers=bearer(tokens["alice"]))
    operators = await client.get("/api/queue/status", headers=bearer(OPERATOR))
    assert theirs.status_code == 200
    assert theirs.json() == operators.json()
    assert "bob" not in theirs.text


@pytest.mark.parametrize("worker_token", [None, WORKERS], ids=["one-token", "worker-token"])
@pytest.mark.parametrize(("method", "path"), WORKER_ROUTES)
async def test_a_participants_token_is_refused_on_every_worker_route(
    participants_file: Path, tokens: dict[str, str], worker_token: str | None, method: str, path: str
) -> None:
    async with (
        QueueManagerServer(token=OPERATOR, worker_token=worker_token, participants_file=participants_file) as queue,
        httpx.AsyncClient(base_url=queue.url) as client,
    ):
        job = queue.store.submit("alice", WORKFLOW)
        refused = await client.request(method, path, headers=bearer(tokens["alice"]),
                                       json={"result": {}, "error": "x", "reason": "x"})
        untouched = queue.store.get(job.id)
    assert refused.status_code == 403
    assert "participant alice's own token" in refused.json()["detail"]
    assert (untouched.status, untouched.worker_id) == (JobStatus.PENDING, None)


async def test_a_participants_report_is_refused_before_its_body_is_read(
    queue: QueueManagerServer, tokens: dict[str, str]
) -> None:
    head = await head_answering_a_report_of_50_mb_unsent(queue.url, tokens["alice"])
    assert head.startswith(b"HTTP/1.1 403 ")
    assert b"Connection: close" in head


async def test_the_operators_token_still_sees_and_does_everything(
    queue: QueueManagerServer, client: httpx.AsyncClient, tokens: dict[str, str]
) -> None:
    alices = queue.store.submit("alice", WORKFLOW)
    operator = bearer(OPERATOR)
    submitted = await client.post("/api/jobs", json={"user_id": "carol", "workflow": WORKFLOW}, headers=operator)
    listed = await client.get("/api/jobs", headers=operator)
    got = await client.get(f"/api/jobs/{alices.id}", headers=operator)
    polled = await client.get("/api/workers/next-job", params={"worker_id": "w"}, headers=operator)
    cancelled = await client.delete(f"/api/jobs/{submitted.json()['id']}", headers=operator)
    nobody = await client.get("/api/jobs", headers=bearer("not-a-token"))
    assert submitted.status_code == 201
    assert {job["user_id"] for job in listed.json()} == {"alice", "carol"}
    assert got.status_code == 200
    assert polled.json()["job"]["id"] == alices.id
    assert cancelled.status_code == 204
    assert (nobody.status_code, nobody.json()) == (401, {"detail": "Not authenticated"})


async def test_the_running_server_follows_the_file(
    queue: QueueManagerServer, client: httpx.AsyncClient, participants_file: Path, tokens: dict[str, str]
) -> None:
    async def status(token: str) -> int:
        return (await client.get("/api/jobs", headers=bearer(token))).status_code

    carol = add_participant(participants_file, "carol")
    with capture_logs() as logs:
        assert await status(carol) == 200, "added while running"
        new_alice = add_participant(participants_file, "alice")
        assert (await status(tokens["alice"]), await status(new_alice)) == (401, 200), "replaced: the old one stops"
    reloads = [line for line in logs if line["event"] == "participants_file_reloaded"]
    assert [line["participants"] for line in reloads] == [3, 3]


def break_file(path: Path, breakage: str, good: str) -> None:
    if breakage == "syntax-error":
        path.write_text(good.replace("bob sha256:", "bob sha265:"))  # a hand edit's typo on bob's line
    elif breakage == "half-written":
        path.write_text(good[: good.index("bob ") + 20])  # an editor's save cut short: bob's hash half there
    elif breakage == "removed":
        path.unlink()
    elif breakage == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.unlink()
        os.mkfifo(path)


def restore_file(path: Path, text: str) -> None:
    if path.is_dir():
        path.rmdir()
    elif path.exists() and not path.is_file():
        path.unlink()
    path.write_text(text)


@pytest.mark.parametrize(
    ("breakage", "line", "reason"),
    [
        ("syntax-error", 2, "the hash must be"),
        ("half-written", 2, "the hash must be"),
        ("removed", None, "cannot be read: No such file"),
        ("directory", None, "is not a regular file"),
        ("fifo", None, "is not a regular file"),
    ],
    ids=["syntax-error", "half-written", "removed", "directory", "fifo"],
)
async def test_a_broken_file_while_running_refuses_participants_with_503_until_fixed(
    queue: QueueManagerServer, client: httpx.AsyncClient, participants_file: Path, tokens: dict[str, str],
    breakage: str, line: int | None, reason: str,
) -> None:
    """Before: a change that could not be read kept the last good set working, so an edit revoking bob's token
    with a typo in it (or cut short) left bob's token working, all signs but a log line: 200. Now every
    participant's token answers 503 saying the file is broken (fail closed) until it is fixed; the operator's and
    /health answer as before."""
    good = participants_file.read_text()
    with capture_logs() as logs:
        break_file(participants_file, breakage, good)
        async with asyncio.timeout(10):
            answers = [await client.get("/api/jobs", headers=bearer(tokens[user])) for user in ("alice", "bob", "bob")]
            unknown = await client.get("/api/jobs", headers=bearer("not-a-token"))
            operator = await client.get("/api/jobs", headers=bearer(OPERATOR))
            health = await client.get("/health")
            restore_file(participants_file, good.replace("bob ", "bobby "))
            after_fix = [await client.get("/api/jobs", headers=bearer(tokens[user])) for user in ("alice", "bob")]
    assert [answer.status_code for answer in answers] == [503, 503, 503]
    assert "participants file is broken" in answers[0].json()["detail"]
    assert str(participants_file) not in answers[0].text, "the file's path is the operator's to see"
    assert (unknown.status_code, operator.status_code, health.json()["status"]) == (401, 200, "healthy")
    [invalid] = [entry for entry in logs if entry["event"] == "participants_file_invalid"]
    assert invalid["log_level"] == "error"
    assert (invalid["file"], invalid["line"], invalid["refused"]) == (str(participants_file), line, 2)
    assert reason in invalid["reason"]
    for token in tokens.values():
        assert token not in repr(logs) and token_hash(token).removeprefix("sha256:") not in repr(logs)
    assert [answer.status_code for answer in after_fix] == [200, 200]
    assert after_fix[1].json() == [], "the fixed file is read: the token is bobby's now"


async def test_an_emptied_file_while_running_lets_nobody_in_until_refilled(
    queue: QueueManagerServer, client: httpx.AsyncClient, participants_file: Path, tokens: dict[str, str]
) -> None:
    """An empty file is a valid one, listing nobody (as at start): every participant's token answers 401."""
    good = participants_file.read_text()
    participants_file.write_text("")
    emptied = [(await client.get("/api/jobs", headers=bearer(tokens[user]))).status_code for user in ("alice", "bob")]
    participants_file.write_text(good)
    refilled = [(await client.get("/api/jobs", headers=bearer(tokens[user]))).status_code for user in ("alice", "bob")]
    assert (emptied, refilled) == ([401, 401], [200, 200])


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ("# workshop\n\nalice\n", 3, "expected 'user_id sha256:"),
        ("alice sha256:" + "0" * 64 + "\nbad/name sha256:" + "1" * 64 + "\n", 2, "user_id must be"),
        ("alice sha256:" + "A" * 64 + "\n", 1, "64 lowercase hex"),
        ("alice " + "0" * 64 + "\n", 1, "hash must be 'sha256:'"),
        (f"alice {ZEROS}\nalice sha256:" + "1" * 64 + "\n", 2, "alice is listed twice (first on line 1)"),
        (f"alice {ZEROS}\nbob {ZEROS}\n", 2, "the same token as alice's"),
    ],
    ids=["one-field", "user-id", "uppercase", "no-prefix", "twice", "shared-token"],
)
def test_a_bad_line_is_named_with_its_number(tmp_path: Path, content: str, line: int, reason: str) -> None:
    path = tmp_path / "participants"
    path.write_text(content)
    with pytest.raises(ParticipantsFileError) as raised:
        read_participants(path)
    assert raised.value.line == line
    assert reason in raised.value.reason


def test_a_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Before: the BOM an editor on Windows puts first was read as part of line 1's user_id, and the file refused
    ('line 1: the user_id must be 1 to 100 letters…'): the server did not start, add-participant did not add."""
    path = tmp_path / "participants"
    path.write_text(f"alice {ZEROS}\r\n", encoding="utf-8-sig")
    assert read_participants(path).user_by_hash == {ZEROS: "alice"}
    bob = add_participant(path, "bob")
    assert read_participants(path).holder(bob) == "bob"
    assert remove_participant(path, "alice")
    assert read_participants(path).user_by_hash == {token_hash(bob): "bob"}


def test_a_participant_added_to_a_file_whose_last_line_has_no_newline_goes_on_a_line_of_its_own(tmp_path: Path) -> None:
    """An editor may save the last line without its newline: the line added comes after it, not joined to it."""
    path = tmp_path / "participants"
    path.write_text(f"alice {ZEROS}")
    bob = add_participant(path, "bob")
    assert read_participants(path).user_by_hash == {ZEROS: "alice", token_hash(bob): "bob"}


def test_a_file_larger_than_any_participants_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "participants"
    path.write_text(f"alice {ZEROS}\n" + "#" * MAX_FILE_BYTES)
    with pytest.raises(ParticipantsFileError) as raised:
        read_participants(path)
    assert raised.value.line is None and "larger than 4 MiB" in raised.value.reason
    endless = Path("/dev/zero")  # a size of 0 to stat, and no end: refused, never read
    with pytest.raises(ParticipantsFileError, match="is not a regular file"):
        read_participants(endless)


async def test_the_cli_exits_2_naming_the_file_and_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "participants"
    path.write_text("# workshop\nalice sha256:" + "0" * 64 + "\nbob sha256:nothex\n")
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", str(tmp_path / "q.db"), "--participants-file", str(path),
        env=clean_env(QUEUE_MANAGER_TOKEN=OPERATOR), cwd=REPO, timeout_s=20,
    )  # fmt: skip
    assert code == 2
    [line] = err.strip().splitlines()
    assert f"{path} line 3: the hash must be" in line


@pytest.mark.parametrize("by", ["flag", "variable"])
async def test_the_cli_refuses_a_participants_file_without_the_operators_token(tmp_path: Path, by: str) -> None:
    path = tmp_path / "participants"
    add_participant(path, "alice")
    env = clean_env(QUEUE_MANAGER_PARTICIPANTS_FILE=str(path)) if by == "variable" else clean_env()
    flag = ("--participants-file", str(path)) if by == "flag" else ()
    code, err = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", str(tmp_path / "q.db"), *flag, env=env, cwd=REPO, timeout_s=20,
    )  # fmt: skip
    assert code == 2
    assert "QUEUE_MANAGER_PARTICIPANTS_FILE" in err and "without QUEUE_MANAGER_TOKEN" in err


async def test_a_fifo_as_participants_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Before: the server's start, and add-participant, blocked opening a FIFO named as the participants file (no
    writer) for good; SIGTERM could not end them. Now they exit 2 naming it, and add- and remove-participant leave
    it be."""
    fifo = tmp_path / "participants"
    os.mkfifo(fifo)
    served = await run_module_to_exit(
        "queue_manager", "--port", "0", "--db", str(tmp_path / "q.db"), "--participants-file", str(fifo),
        env=clean_env(QUEUE_MANAGER_TOKEN=OPERATOR), cwd=REPO, timeout_s=20,
    )  # fmt: skip
    changed = [await run_module_to_exit(
        "queue_manager", command, "alice", "--participants-file", str(fifo), env=clean_env(), cwd=REPO, timeout_s=20,
    ) for command in ("add-participant", "remove-participant")]  # fmt: skip
    for code, err in changed:
        assert code == 2, err
        assert f"participants file {fifo}: is not a regular file" in err
    # The server refuses it with its arguments, before it writes the database's lock file
    assert served[0] == 2 and "argument --participants-file:" in served[1] and "is not a regular file" in served[1]
    assert os.listdir(tmp_path) == ["participants"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


async def add_by_cli(path: Path, user_id: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "queue_manager", "add-participant", user_id, cwd=REPO,
        env=clean_env(QUEUE_MANAGER_PARTICIPANTS_FILE=str(path)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    assert process.returncode == 0, err
    [token] = out.decode().splitlines()
    assert token not in err.decode()
    return token


async def test_add_participant_prints_a_token_that_opens_their_jobs_and_a_rerun_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "participants"
    alice = await add_by_cli(path, "alice")
    bob = await add_by_cli(path, "bob")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    process, url = await start_cli(
        "--db", str(tmp_path / "q.db"),
        env={"QUEUE_MANAGER_TOKEN": OPERATOR, "QUEUE_MANAGER_PARTICIPANTS_FILE": str(path)},
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            async def submit(token: str, user_id: str) -> int:
                body: dict[str, Any] = {"user_id": user_id, "workflow": WORKFLOW}
                return (await client.post("/api/jobs", json=body, headers=bearer(token))).status_code

            before = (await submit(alice, "alice"), await submit(bob, "bob"), await submit(bob, "alice"))
            new_alice = await add_by_cli(path, "alice")
            after = (await submit(alice, "alice"), await submit(new_alice, "alice"))
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            output = (await process.stdout.read()).decode()
            assert await process.wait() == 0
    assert before == (201, 201, 403)
    assert after == (401, 201)
    assert "participants=2" in output or '"participants": 2' in output
    text = path.read_text()
    assert [line.split()[0] for line in text.splitlines()] == ["alice", "bob"], "alice's line replaced in place"
    assert token_hash(new_alice) in text
    for token in (alice, bob, new_alice):
        assert token not in text and token not in output


@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_add_participant_whose_token_cannot_be_printed_exits_1_saying_so(tmp_path: Path, stdout: str) -> None:
    """Before: standard output full (/dev/full), a 10-line traceback (OSError: No space left on device); closed
    (`>&-`), exit 0 and "alice's token (above) is shown once", a token nobody ever saw."""
    path = tmp_path / "participants"
    redirect = ">/dev/full" if stdout == "full" else ">&-"
    process = subprocess.run(
        ["sh", "-c", f'exec "$0" -m queue_manager add-participant alice --participants-file "$1" {redirect}',
         sys.executable, str(path)],
        cwd=REPO, env=clean_env(), stderr=subprocess.PIPE, timeout=20, check=False,
    )  # fmt: skip
    err = process.stderr.decode()
    assert process.returncode == 1, err
    assert "Traceback" not in err and "shown once" not in err
    assert err.startswith("alice's new token could not be printed (")
    [line] = path.read_text().splitlines()
    assert line.split()[1] not in err


@pytest.mark.parametrize("command", ["add-participant", "remove-participant"])
async def test_add_or_remove_participant_never_writes_over_a_broken_file(tmp_path: Path, command: str) -> None:
    path = tmp_path / "participants"
    path.write_text("alice\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "queue_manager", command, "alice", "--participants-file", str(path), cwd=REPO,
        env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    assert process.returncode == 2
    assert out == b""
    assert f"{path} line 1" in err.decode()
    assert path.read_text() == "alice\n"


def test_add_participant_through_a_symbolic_link_changes_the_file_it_names(tmp_path: Path) -> None:
    """Before: the new file was renamed onto the link, which became a file of its own; the file it named, the one
    a server may read, never had the line and the printed token was refused."""
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "participants"
    bob = add_participant(target, "bob")
    link = tmp_path / "participants"
    link.symlink_to(target)
    alice = add_participant(link, "alice")
    assert link.is_symlink()
    listed = read_participants(target)
    assert (listed.holder(alice), listed.holder(bob)) == ("alice", "bob")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_add_participant_run_many_at_once_loses_nobody(tmp_path: Path) -> None:
    """Before: each run read the file, added its line and renamed its copy over it, so two runs at once (an operator
    scripting a workshop's 20 participants with `&`) kept only one of the two new lines, and the other's printed
    token was refused. Now each run holds a lock on the folder from its read to its rename."""
    path = tmp_path / "participants"
    users = [f"user-{n}" for n in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = dict(zip(users, pool.map(lambda user: add_participant(path, user), users), strict=True))
    listed = read_participants(path)
    assert len(listed) == len(users)
    for user, token in tokens.items():
        assert listed.holder(token) == user


async def remove_by_cli(path: Path, user_id: str) -> tuple[int | None, str, str]:
    """remove-participant's exit code, standard output and standard error."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "queue_manager", "remove-participant", user_id, "--participants-file", str(path),
        cwd=REPO, env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


async def test_remove_participant_closes_their_token_on_the_running_server_at_once(
    queue: QueueManagerServer, client: httpx.AsyncClient, participants_file: Path, tokens: dict[str, str]
) -> None:
    """Before: taking a participant's access away meant editing the file by hand."""
    alices = queue.store.submit("alice", WORKFLOW)
    with capture_logs() as logs:
        code, out, err = await remove_by_cli(participants_file, "alice")
        answers = [(await client.get("/api/jobs", headers=bearer(tokens[user]))).status_code
                   for user in ("alice", "bob")]
    assert (code, err) == (0, "")
    assert out == f"alice removed from {participants_file}: their token no longer works (their jobs are left as " \
                  "they are)\n"
    assert answers == [401, 200]
    assert [line["participants"] for line in logs if line["event"] == "participants_file_reloaded"] == [1]
    assert [line.split()[0] for line in participants_file.read_text().splitlines()] == ["bob"]
    assert stat.S_IMODE(participants_file.stat().st_mode) == 0o600
    assert queue.store.get(alices.id).status is JobStatus.PENDING, "their jobs are left as they are"


async def test_removing_a_user_without_a_line_exits_1_and_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "participants"
    path.write_bytes(f"\ufeff# workshop\r\nalice {ZEROS}".encode())
    before = path.stat()
    code, out, err = await remove_by_cli(path, "bob")
    assert (code, out) == (1, "")
    assert err == f"bob has no line in participants file {path}: nothing changed\n"
    assert path.read_bytes() == f"\ufeff# workshop\r\nalice {ZEROS}".encode()
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "not rewritten"


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["al/ice", "--participants-file", "{path}"], {}, "'al/ice' cannot be a user_id"),
        (["alice"], {}, "name the participants file: --participants-file PATH or QUEUE_MANAGER_PARTICIPANTS_FILE"),
        (["alice"], {"QUEUE_MANAGER_PARTICIPANTS_FILE": "{path}.missing"}, "{path}.missing: cannot be read: No such"),
        (["alice", "--participants-file", "{path}/x"], {}, "{path}/x: its folder cannot be opened: Not a directory"),
    ],
    ids=["bad-user-id", "no-file", "missing-file", "no-folder"],
)
async def test_remove_participant_usage_errors_exit_2_saying_which(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    path = tmp_path / "participants"
    add_participant(path, "alice")
    before = path.read_bytes()
    code, err = await run_module_to_exit(
        "queue_manager", "remove-participant", *(arg.format(path=path) for arg in args),
        env=clean_env(**{name: value.format(path=path) for name, value in env.items()}), cwd=REPO, timeout_s=20,
    )  # fmt: skip
    assert code == 2
    assert "Traceback" not in err and says.format(path=path) in err
    assert path.read_bytes() == before


def test_remove_participant_through_a_symbolic_link_changes_the_file_it_names(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "participants"
    bob = add_participant(target, "bob")
    add_participant(target, "alice")
    link = tmp_path / "participants"
    link.symlink_to(target)
    assert remove_participant(link, "alice")
    assert link.is_symlink() and link.resolve() == target
    assert read_participants(target).user_by_hash == {token_hash(bob): "bob"}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
