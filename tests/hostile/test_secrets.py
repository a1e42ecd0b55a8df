"""Secrets never reach a log line, an answer or /status: the queue manager's token, a URL's password."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import io
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import structlog
from aiohttp import web

import supervisor.__main__ as supervisor_main
from common.handbacks import HandBackCause
from common.logs import MAX_LOG_VALUE_CHARS, configure_logging, error_text, register_secret, scrub
from common.urls import redact_url, secret_url_secrets, url_credentials, url_has_credentials, url_secrets
from demo.results import fetch_results
from demo.workload import Submission, submit_all
from health.server import HealthServer
from queue_manager import JobStatus, QueueManagerServer
from scaler import cli as scaler_cli
from scaler.alerts import Alert, AlertSender
from scaler.providers.runpod.client import RunPodClient
from scaler.providers.runpod.health import PodHealthProbe
from scaler.providers.verda.client import VerdaClient
from scaler.queue_status import QueueStatusError, QueueStatusReader
from standins.comfyui import ComfyUISimulator
from standins.runpod import FakeRunPod
from standins.verda import FakeVerda
from supervisor.comfyui_process import ComfyUIProcess
from supervisor.config import comfyui_environment
from worker.comfyui import ComfyUIClient, ComfyUIUnavailable
from worker.queue_client import PollError, QueueClient, TransientHTTPError
from worker.state import WorkerState

from ..conftest import served

TOKEN = "qm-secret-token-7f3a"
RUNPOD_KEY = "rpa_proxy_test_key"
RUNPOD_POD = {"name": "comfy-proxy-00000000", "image": "ghcr.io/acme/worker:1.0.0",
              "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}, "ports": ["8000/http"]}


@pytest.fixture
def log_buffer():
    buffer = io.StringIO()
    configure_logging("json", "debug", stream=buffer)
    register_secret(TOKEN)
    yield buffer
    structlog.reset_defaults()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
    ids=["no-token", "token-plus-one", "token-as-basic", "token-without-scheme"],
)
async def test_a_refused_token_is_never_echoed_or_logged(log_buffer: io.StringIO, headers: dict[str, str]) -> None:
    async with QueueManagerServer(token=TOKEN) as queue, httpx.AsyncClient(base_url=queue.url) as client:
        response = await client.post("/api/jobs", headers=headers, json={"user_id": TOKEN, "workflow": {"1": {}}})
    assert response.status_code == 401
    assert TOKEN not in response.text and TOKEN not in json.dumps(dict(response.headers))
    assert TOKEN not in log_buffer.getvalue()


async def test_a_header_too_long_for_the_parser_is_refused_without_its_value_in_the_log(
    log_buffer: io.StringIO,
) -> None:
    """aiohttp's reason for the 400 quotes the first 100 bytes of the header, and our warning line carried it:
    a bearer token longer than a probe server reads (4096 bytes) had its first 93 characters logged."""
    state = WorkerState(worker_id="w", provider="verda", version="1.0", max_idle_polls=10, serverless=True)
    health = HealthServer(state, host="127.0.0.1", port=0, heartbeat_timeout_s=30)
    port = await health.start()
    jwt = "eyJhbGciOiJSUzI1NiJ9." + "p" * 5000
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {jwt}"})
    finally:
        await health.stop()
    assert response.status_code == 400
    refused = [json.loads(line) for line in log_buffer.getvalue().splitlines() if "Malformed HTTP" in line]
    assert [(line["level"], line["event"].rsplit(": ", 1)[1]) for line in refused] == [
        ("warning", "Got more than 4096 bytes when reading")
    ]
    assert "eyJhbGci" not in log_buffer.getvalue()


async def test_the_queue_managers_start_line_says_whether_tokens_are_set_and_never_shows_one(
    log_buffer: io.StringIO,
) -> None:
    """A field named like a credential had its whole value masked, so `worker_token=true` (whether one is set, as
    docs/queue-manager.md tells the operator to check) read `***` whatever the setting."""
    async with QueueManagerServer(token=TOKEN, worker_token=TOKEN + "-workers"):
        pass
    async with QueueManagerServer(token=TOKEN):
        pass
    started = [json.loads(line) for line in log_buffer.getvalue().splitlines() if "queue_manager_started" in line]
    assert [(line["auth"], line["worker_token"]) for line in started] == [(True, True), (True, False)]
    assert TOKEN not in log_buffer.getvalue()
    structlog.get_logger().info("a secret-named field that holds text", worker_token=TOKEN, api_key="k-123")
    assert '"worker_token": "***"' in log_buffer.getvalue() and "k-123" not in log_buffer.getvalue()


CREDENTIAL_FIELDS = {
    "token": "t", "worker_token": "t", "hf_token": "t", "access_token": "t", "accessToken": "t", "api_key": "k",
    "apiKey": "k", "X-Api-Key": "k", "api_key_id": "k", "key": "k", "private_key": "k", "ssh_key": "k", "secret": "s",
    "client_secret": "s", "aws_secret_access_key": "s", "password": "p", "passwd": "p", "passphrase": "p", "pass": "p",
    "db_pass": "p", "pw": "p", "pwd": "p", "Authorization": "b", "auth": "a", "proxy_auth": "a", "session": "s",
    "session_id": "s", "sessionId": "s", "jsessionid": "s", "sig": "s", "signature": "s", "bearer": "b", "jwt": "j",
    "credentials": "c", "tokens": ["t-1"], "api_keys": ["k-1"], "passwords": {"db": "p"}, "SECRETS": "s",
}
OPERATIONAL_FIELDS = {
    "max_tokens": 512, "prompt_tokens": 7, "tokens": 3, "tokens_per_s": 41.5, "tokenizer": "clip", "keyframes": 24,
    "key_frame": 1, "keyboard": "us", "author": "ann", "auth_mode": "basic", "passes": 2, "pass_count": 3,
    "compass": "n", "session_state": "s", "secretary": "x", "worker_token": True, "auth": False, "api_key": None,
}


def test_a_log_field_is_masked_by_the_words_of_its_name_not_by_letters_inside_them(log_buffer: io.StringIO) -> None:
    """A field's value was masked when its name held "token", "secret", "password", "authorization" or "api_key"
    anywhere: max_tokens, tokenizer and tokens_per_s read *** (6 of these 18 operational figures), while apiKey,
    X-Api-Key, db_pass, pw, key, auth, session_id, sig, jwt, credentials... were shown (22 of these 38 credentials).
    A plural may hold credentials and is masked unless it holds a number, as a count does."""
    structlog.get_logger().info("fields", **CREDENTIAL_FIELDS)
    structlog.get_logger().info("figures", **OPERATIONAL_FIELDS)
    credentials, figures = (json.loads(line) for line in log_buffer.getvalue().splitlines())
    assert [name for name in CREDENTIAL_FIELDS if credentials[name] != "***"] == []
    assert {name: figures[name] for name in OPERATIONAL_FIELDS} == OPERATIONAL_FIELDS


async def test_a_token_that_travels_in_a_request_field_is_scrubbed_from_logs(log_buffer: io.StringIO) -> None:
    """A worker id, a failure message or a hand-back reason that happens to contain the token."""
    async with QueueManagerServer(token=TOKEN) as queue, httpx.AsyncClient(
        base_url=queue.url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        job = queue.store.submit("alice", {"1": {}})
        await client.get("/api/workers/next-job", params={"worker_id": f"w-{TOKEN}"})
        await client.post(
            "/api/workers/release-job",
            params={"job_id": job.id, "worker_id": f"w-{TOKEN}", "attempt": 1},
            json={"reason": f"leaked {TOKEN}"},
        )
        await client.get("/api/workers/next-job", params={"worker_id": "w2"})
        await client.post("/api/workers/fail-job", params={"job_id": job.id}, json={"error": f"boom {TOKEN}"})
    logged = log_buffer.getvalue()
    assert "job_released" in logged and "job_failed" in logged
    assert TOKEN not in logged


def test_a_log_value_of_megabytes_is_cut_scrubbed_and_says_so(log_buffer: io.StringIO) -> None:
    """A value of 8 MiB (a peer's page, a client's text quoted in an error) was scrubbed whole, 13 s for "?a=b&"
    pairs with the process stalled, then written as one 8 MiB line. Now cut to MAX_LOG_VALUE_CHARS, still
    scrubbed (a secret across the cut included), the line saying how long the value was."""
    unit = "?a=b&"
    head = "?a=b&" * ((MAX_LOG_VALUE_CHARS - len(TOKEN) // 2) // len(unit))
    value = f"{head}{TOKEN}&token=tk-secret-1&{unit * ((8 << 20) // len(unit))}"
    structlog.get_logger().warning("peer answered", details={"page": value})
    [line] = [json.loads(line) for line in log_buffer.getvalue().splitlines()]
    page = line["details"]["page"]
    assert page.endswith(f"… (cut: {len(value)} characters)")
    assert len(page) < MAX_LOG_VALUE_CHARS + 100
    assert page.startswith(head) and TOKEN[: len(TOKEN) // 2] not in page[len(head):]
    assert "tk-secret-1" not in log_buffer.getvalue()


def test_a_log_value_of_exactly_the_longest_kept_is_whole_and_a_character_more_is_cut(log_buffer: io.StringIO) -> None:
    longest = MAX_LOG_VALUE_CHARS
    structlog.get_logger().warning("peer answered", page="p" * longest, other="q" * (longest + 1))
    [line] = [json.loads(line) for line in log_buffer.getvalue().splitlines()]
    assert line["page"] == "p" * MAX_LOG_VALUE_CHARS
    assert line["other"] == "q" * MAX_LOG_VALUE_CHARS + f"… (cut: {MAX_LOG_VALUE_CHARS + 1} characters)"


async def test_control_characters_in_a_logged_value_reach_an_operators_terminal_escaped() -> None:
    """A failure message carries text from the job (a workflow's node name in ComfyUI's error, say). On a
    terminal the console renderer printed a value without spaces raw, and the event always: an escape sequence
    retitled or cleared the operator's screen, and a newline forged a log line of its own. JSON escaped them."""
    buffer = io.StringIO()
    configure_logging("console", "info", stream=buffer)
    error = "NoSuchNode\x1b]0;owned\x07\x1b[2J\x9b"
    try:
        async with QueueManagerServer() as queue, httpx.AsyncClient(base_url=queue.url) as client:
            job = queue.store.submit("alice", {"1": {}})
            await client.get("/api/workers/next-job", params={"worker_id": "w"})
            answer = await client.post("/api/workers/fail-job", params={"job_id": job.id}, json={"error": error})
            logging.getLogger("aiohttp.access").warning("%s\n2026-12-01T00:00:00Z [info] Job forged completed", error)
    finally:
        structlog.reset_defaults()
    assert answer.status_code == 200
    lines = [line for line in buffer.getvalue().splitlines() if "owned" in line]
    assert len(lines) == 2, lines  # one line each: none forged
    assert r"'NoSuchNode\x1b]0;owned\x07\x1b[2J\x9b'" in lines[0]
    assert r"NoSuchNode\x1b]0;owned\x07\x1b[2J\x9b\n2026-12-01T00:00:00Z [info] Job forged completed" in lines[1]
    for line in lines:
        assert not [raw for raw in ("\x1b]", "\x1b[2J", "\x07", "\x9b") if raw in line], line  # colours stay


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("QUEUE_MANAGER_TOKEN", "child-must-not-see-this"),
        # An image that runs the queue manager beside the worker holds its worker token too.
        ("QUEUE_MANAGER_WORKER_TOKEN", "child-must-not-see-this"),
        ("QUEUE_MANAGER_URL", "https://user:child-must-not-see-this@queue.example.com"),
        ("VERDA_CLIENT_SECRET", "child-must-not-see-this"),
        # A RunPod pod carries an API key (RunPod's pod-scoped one, or the operator's), and an image that runs the
        # scaler beside the worker its webhook: ComfyUI and its custom nodes had both.
        ("RUNPOD_API_KEY", "child-must-not-see-this"),
        ("SCALER_ALERT_WEBHOOK_URL", "https://hooks.example.com/services/child-must-not-see-this"),
    ],
    # The ids are not the values: PYTEST_CURRENT_TEST would carry them.
    ids=["queue-token", "queue-worker-token", "queue-url-password", "verda-secret", "runpod-key", "alert-webhook"],
)
async def test_comfyui_and_its_custom_nodes_never_see_the_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    dump = tmp_path / "env.txt"
    code = f"import os, pathlib; pathlib.Path({str(dump)!r}).write_text(repr(dict(os.environ)))"
    child = ComfyUIProcess([sys.executable, "-c", code], stop_timeout_s=1, env=comfyui_environment(os.environ))
    await child.start()
    await child.wait()
    await child.stop()
    assert "child-must-not-see-this" not in dump.read_text()


@pytest.mark.parametrize(
    ("url", "shown", "secrets"),
    [
        ("https://user:pw-1@queue.example.com/api", "https://***@queue.example.com/api", ["user", "pw-1"]),
        ("https://queue.example.com/api?token=tk-2", "https://queue.example.com/api?token=***", ["tk-2"]),
        ("https://q.example.com/?region=eu&api_key=k-3&sort=new", "https://q.example.com/?region=eu&api_key=***&sort=new",
         ["k-3"]),
        ("https://b.example.com/o?X-Amz-Signature=s-4&X-Amz-Date=1", "https://b.example.com/o?X-Amz-Signature=***&X-Amz-Date=1",
         ["s-4"]),
        ("https://u:p-5@q.example.com/?access%5Ftoken=t-5", "https://***@q.example.com/?access%5Ftoken=***",
         ["u", "p-5", "t-5"]),
        ("https://queue.example.com/api?design=a&monkey=b", "https://queue.example.com/api?design=a&monkey=b", []),
        # Before, names in camelCase or run together were not seen: accessToken's value was shown in clear.
        ("https://q.example.com/?accessToken=t-6&page=2", "https://q.example.com/?accessToken=***&page=2", ["t-6"]),
        ("https://q.example.com/?authToken=t-7&clientSecret=s-7", "https://q.example.com/?authToken=***&clientSecret=***",
         ["t-7", "s-7"]),
        ("https://q.example.com/?refreshtoken=t-8&jwt=j-8", "https://q.example.com/?refreshtoken=***&jwt=***",
         ["t-8", "j-8"]),
        ("https://q.example.com/?bearer=b-9&session=s-9", "https://q.example.com/?bearer=***&session=***",
         ["b-9", "s-9"]),
        ("https://q.example.com/?maxTokens=5&keyboard=us&tokens=3", "https://q.example.com/?maxTokens=5&keyboard=us&tokens=3",
         []),
        # An "@" left unencoded in the password: clients take the userinfo up to the last "@" (before: the log
        # scrubber stopped at the first, and "ss-10" reached the log line).
        ("https://u:p@ss-10@q.example.com/a@b", "https://***@q.example.com/a@b", ["u", "p@ss-10"]),
        # A token in the fragment (OAuth's implicit flow: …/callback#access_token=…). Before: shown in clear.
        ("https://app.example.com/cb#access_token=at-11&state=xyz", "https://app.example.com/cb#access_token=***&state=xyz",
         ["at-11"]),
        ("https://app.example.com/cb?code=c&token=t-12#id_token=i-12", "https://app.example.com/cb?code=c&token=***#id_token=***",
         ["t-12", "i-12"]),
        ("https://docs.example.com/guide#section-2&page=3", "https://docs.example.com/guide#section-2&page=3", []),
        # A URL urlsplit cannot parse (an unclosed "["): before, no credentials and shown as is.
        ("https://u:pw-13@[q.example.com/x?token=t-13", "https://***@[q.example.com/x?token=***",
         ["u", "pw-13", "t-13"]),
        ("https://[q.example.com/x#access_token=t-14", "https://[q.example.com/x#access_token=***", ["t-14"]),
        # Backblaze B2's download link (and Baidu BOS's presigned one) carries its token as ?Authorization=: shown in
        # clear before.
        ("https://f0.backblazeb2.com/file/b/in.png?Authorization=t-15", "https://f0.backblazeb2.com/file/b/in.png?Authorization=***",
         ["t-15"]),
        # A name percent-encoded (%74oken is token, pass%77ord password) is read decoded.
        ("https://q.example.com/?%74oken=t-16&pass%77ord=p-16", "https://q.example.com/?%74oken=***&pass%77ord=***",
         ["t-16", "p-16"]),
    ],
)
def test_a_urls_credentials_are_found_and_hidden_in_its_userinfo_and_its_query(url, shown, secrets) -> None:
    assert url_credentials(url) == secrets
    assert url_has_credentials(url) == bool(secrets)
    assert redact_url(url) == shown
    assert scrub(f"GET {url} failed") == f"GET {shown} failed"
    # Glued to what comes before it (a scheme is tried once per run of scheme characters, from its start).
    for before in ("...", "-", "1", "x1.", "("):
        assert scrub(f"GET {before}{url} failed") == f"GET {before}{shown} failed"


@pytest.mark.parametrize(
    "name", ["jsessionid", "JSESSIONID", "PHPSESSID", "pass", "db_pass", "pw", "userPw", "passphrase",
             "ssh_passphrase", "secretkey", "privatekey"],
)
def test_a_query_parameter_named_like_a_password_or_a_session_id_is_masked(name: str) -> None:
    """Before, ?pass=…, ?pw=…, ?passphrase=… and a Java or PHP session id (?jsessionid=…, which signs its
    holder in) were not seen as credentials: shown in clear in every log line, error and status quoting the URL."""
    url = f"https://app.example.com/login?user=ann&{name}=s3cr3t-val&page=2"
    shown = f"https://app.example.com/login?user=ann&{name}=***&page=2"
    assert url_credentials(url) == ["s3cr3t-val"]
    assert (redact_url(url), scrub(f"GET {url} failed")) == (shown, f"GET {shown} failed")


def test_a_parameter_whose_name_only_contains_a_secret_word_is_left_as_it_is() -> None:
    url = "https://h.example.com/a?compass=n&bypass=1&passage=3&pwm=4&sessionids=5&code=c&country_code=fr"
    assert (url_credentials(url), redact_url(url), scrub(url)) == ([], url, url)


@pytest.mark.parametrize(
    ("name", "credential"),
    [(name, True) for name in ("key", "api_key", "apiKey", "auth", "proxy_auth", "session", "session_id", "sessionId",
                               "sig", "X-Amz-Signature", "bearer", "jwt", "db_pass", "AWSAccessKeyId", "api_key_2")]
    + [(name, False) for name in ("auth_mode", "key_frame", "keyframes", "pass_count", "session_state",
                                  "signature_version", "sig_alg", "bearer_scheme", "jwt_issuer", "author")],
)
def test_a_word_that_names_a_credential_only_as_its_last_word_leaves_other_names_alone(name, credential) -> None:
    """pass, pw, key, auth, session, sig, signature, bearer and jwt made a credential wherever they stood in a
    parameter's name: a deployment's [env] URL with ?auth_mode=basic or ?key_frame=1 was refused as "a URL with a
    user, password or token in it" (8 of these 10 names), and logs showed its value as ***."""
    url = f"https://models.example.com/get?{name}=v-1&page=2"
    shown = f"https://models.example.com/get?{name}=***&page=2" if credential else url
    assert (url_has_credentials(url), redact_url(url), scrub(url)) == (credential, shown, shown)


@pytest.mark.parametrize("unit", ["?a=b", "%3Fa%3Db", ";a=b"])
def test_a_megabyte_of_parameters_whose_values_never_end_is_scrubbed_whole(unit: str) -> None:
    """Each parameter's value was read before its name was checked, to the end of the text when nothing ended it:
    a megabyte of ?a=b?a=b… took minutes (40 KiB: 0.56 s; quadratic). In a child, killed at the guard if it stalls."""
    code = f"from common.logs import scrub; text = {unit!r} * ({1 << 20} // {len(unit)}); assert scrub(text) == text"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://app.example.com/shop;jsessionid=0AB1CD2EF3", "https://app.example.com/shop;jsessionid=***"),
        ("https://app.example.com/a;v=2/b;JSESSIONID=0AB1CD2EF3#top", "https://app.example.com/a;v=2/b;JSESSIONID=***#top"),
        ("https://proxy.example.com/?url=https%3A%2F%2Fapp.example.com%2Fshop%3Bjsessionid%3D0AB1CD2EF3&lang=en",
         "https://proxy.example.com/?url=https%3A%2F%2Fapp.example.com%2Fshop%3Bjsessionid%3D***&lang=en"),
        ("https://proxy.example.com/?url=https%3A%2F%2Fapp.example.com%2Fshop%3bpassword%3Dhunter2-pw",
         "https://proxy.example.com/?url=https%3A%2F%2Fapp.example.com%2Fshop%3bpassword%3D***"),
        ("https://app.example.com/a;v=2;lang=en/b?page=2", "https://app.example.com/a;v=2;lang=en/b?page=2"),
    ],
)
def test_a_path_parameter_named_like_a_credential_is_masked(url: str, shown: str) -> None:
    """A Java server's session id rides in the path (…/shop;jsessionid=…) and signs in whoever holds it: before,
    ";" was no parameter separator and the id reached every log line and status quoting the URL, nested too."""
    assert (redact_url(url), scrub(f"GET {url} failed")) == (shown, f"GET {shown} failed")
    line = "Content-Type: multipart/form-data;boundary=x-1; charset=utf-8"
    assert scrub(line) == line


def _nested(levels: int, url: str) -> str:
    """``url`` as it reads nested ``levels`` deep in other URLs' queries: each of its ://, @, ?, &, # and =
    percent-encoded, each % of that as %25 once more per further level (test data: nothing checks it)."""
    url = url.replace("%", "%" + "25" * levels)
    for char, code in ((":", "3A"), ("/", "2F"), ("@", "40"), ("?", "3F"), ("&", "26"), ("#", "23"), ("=", "3D")):
        url = url.replace(char, f"%{'25' * (levels - 1)}{code}")
    return url


@pytest.mark.parametrize(
    ("levels", "nested", "shown"),
    [
        # The presigned link a custom node failed to download, quoted in ComfyUI's error, or a proxy's error page.
        (1, "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=sig-1&X-Amz-Date=1",
         "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=***&X-Amz-Date=1"),
        (2, "https://b.example.com/k?token=tk-2&page=2#id_token=id-2", "https://b.example.com/k?token=***&page=2#id_token=***"),
        (1, "https://user:pw-3@host.example.com/k", "https://***@host.example.com/k"),
        (2, "https://user:pw-4@host.example.com/k", "https://***@host.example.com/k"),
        (3, "https://u:pw-5@h.example.com/k?access%5Ftoken=at-5&s=1", "https://***@h.example.com/k?access%5Ftoken=***&s=1"),
        # Deeper than any recursion could go.
        (5000, "https://u:pw-6@h.example.com/k?a=1&X-Amz-Signature=sig-6", "https://***@h.example.com/k?a=1&X-Amz-Signature=***"),
        # Nothing named like a credential: as it was.
        (1, "https://h.example.com/k?sort=new&page=2#top", "https://h.example.com/k?sort=new&page=2#top"),
        (2, "https://h.example.com/k?maxTokens=5&keyboard=us", "https://h.example.com/k?maxTokens=5&keyboard=us"),
    ],
)
def test_the_credentials_of_a_url_nested_percent_encoded_in_anothers_query_are_masked(levels, nested, shown) -> None:
    """Before, only the outer URL was searched: ?url=https%3A%2F%2F…%3FX-Amz-Signature%3D… kept the signature, and
    https%3A%2F%2Fuser%3Apassword%40… the password, in every log line, error and status that quoted it."""
    url = f"https://proxy.example.com/fetch?url={_nested(levels, nested)}&lang=en"
    expected = f"https://proxy.example.com/fetch?url={_nested(levels, shown)}&lang=en"
    assert redact_url(url) == expected
    assert scrub(f"download failed (HTTP 403): {url}. Retrying") == f"download failed (HTTP 403): {expected}. Retrying"
    url, expected = _lower_hex(url), _lower_hex(expected)
    assert (redact_url(url), scrub(url)) == (expected, expected), "hex in lower case too"


def _lower_hex(text: str) -> str:
    for code in ("3A", "2F", "3F", "3D"):
        text = text.replace(code, code.lower())
    return text


@pytest.mark.parametrize("times", [1, 2])
def test_a_url_quoted_by_pythons_quote_keeps_no_credential(times: int) -> None:
    """urllib.parse.quote, as a custom node calls it, keeps the "/": before, https%3A//user%3Apass%40host kept
    its password in the log line that quoted it."""
    url = "https://user:pw-7@host.example.com/k?X-Amz-Signature=sig-7&a=1"
    shown = "https://***@host.example.com/k?X-Amz-Signature=***&a=1"
    for _ in range(times):
        url, shown = quote(url), quote(shown, safe="/*")
    proxy = "https://proxy.example.com/?url="
    assert scrub(f"GET {proxy}{url} failed") == f"GET {proxy}{shown} failed"
    assert redact_url(f"{proxy}{url}") == f"{proxy}{shown}"


def test_percent_encoded_text_that_is_no_url_is_left_as_it_is() -> None:
    text = "50%25 done%3F 100%25%3D%25 of a%3Fb%26c%3Dd; %252525; https%3A%2F%2Fh.example.com%2Fa%40b"
    assert scrub(text) == text
    assert redact_url(f"https://h.example.com/?q={text}") == f"https://h.example.com/?q={text}"


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("https://worker:pw-1@queue.example.com", ["pw-1", "worker:pw-1"]),
        ("https://ghp-token-2@queue.example.com", ["ghp-token-2", "ghp-token-2:"]),
        ("https://worker:pw-3@q.example.com/?token=t-3", ["pw-3", "t-3", "worker:pw-3"]),
        ("https://worker:pw-4@[q.example.com/?token=t-4", ["pw-4", "t-4", "worker:pw-4"]),
        ("https://worker:p%40ss-5@q.example.com", ["p%40ss-5", "worker:p@ss-5"]),
    ],
    ids=["user-and-password", "token-as-user", "and-a-query-token", "unparseable", "percent-encoded"],
)
def test_a_user_name_beside_a_password_is_no_secret_to_mask_everywhere(url, secrets) -> None:
    """The scaler registered "worker" of https://worker:…@… as a secret, and every "worker" in its log lines and
    `status` became *** (comfyui-***-serverless). A user name with no password is the token itself. The last is
    the ``Authorization: Basic`` value a client sends for them (base64 of the URL's user:password, unquoted)."""
    *plain, basic = secrets
    assert url_secrets(url) == [*plain, base64.b64encode(basic.encode()).decode()]


@pytest.mark.parametrize("url", ["https://:pw 16@q.example.com/a", "https://my token-17@q.example.com/a"])
def test_a_url_shown_masks_a_password_or_a_user_name_alone_with_a_space_in_it(url: str) -> None:
    """In free text a space ends a URL, so the scrubber cannot mask such a userinfo (the registered secrets do);
    a URL shown as one (redact_url: status, start lines, dry-runs) masks it whole, a password or a user alone."""
    assert redact_url(url) == "https://***@q.example.com/a"


@pytest.mark.parametrize(
    ("text", "shown"),
    [("?token=t-18 was refused", "?token=*** was refused"), ("&api_key=k-18", "&api_key=***"),
     (";jsessionid=0AB1CD2EF3", ";jsessionid=***"), ("%3Ftoken%3Dt-18 was refused", "%3Ftoken%3D*** was refused")],
)
def test_a_parameter_at_the_very_start_of_a_text_is_masked(text: str, shown: str) -> None:
    """A log value that is a query alone, nothing before its "?" or "&"."""
    assert scrub(text) == shown


def test_a_webhook_path_is_a_secret_of_its_own_from_8_characters() -> None:
    """A webhook's path (or path and query) is its token and a refusing server quotes it alone; masked in every
    line, a short one ("/hook") would garble them, so from 8 characters only."""
    assert secret_url_secrets("https://hooks.example.com/abcdefg") == ["https://hooks.example.com/abcdefg", "/abcdefg"]
    assert secret_url_secrets("https://hooks.example.com/?abcdef") == ["https://hooks.example.com/?abcdef", "/?abcdef"]
    assert secret_url_secrets("https://hooks.example.com/abcdef") == ["https://hooks.example.com/abcdef"]


@pytest.mark.parametrize("secret", [" ", "e", "\t", "verda", "1234567"])
def test_a_value_too_short_to_be_a_secret_is_never_masked_everywhere(secret: str) -> None:
    """VERDA_CLIENT_SECRET=" " or "e" was registered: every space, or every e, of every log line and message became
    *** ("v***rda_auth***nticating"). The settings refuse a credential that short, naming it."""
    register_secret(secret)
    line = "verda_authenticating client_id=cid error=1234567 \t verda"
    assert scrub(line) == line
    register_secret("12345678")
    assert scrub(line + " 12345678") == line + " ***"


def test_a_token_in_a_urls_query_never_reaches_a_log_line(log_buffer: io.StringIO) -> None:
    structlog.get_logger().error(
        "Queue manager unreachable", error="ConnectError for https://queue.example.com/api/jobs?token=qs-token-91"
    )
    structlog.get_logger().info("Worker started", queue_manager="https://queue.example.com/?auth=qs-auth-17")
    assert "qs-token-91" not in log_buffer.getvalue() and "qs-auth-17" not in log_buffer.getvalue()
    assert "token=***" in log_buffer.getvalue()


@pytest.fixture
async def recording_proxy():
    """An HTTP proxy on loopback that records what reaches it (Authorization header included) and answers 502."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.url} {request.headers.get('Authorization', '')}")
        return web.Response(status=502, text="proxy")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with served(app, access_log=None) as url:
        yield url, seen


def only_proxy(monkeypatch: pytest.MonkeyPatch, variable: str, proxy_url: str) -> None:
    """``variable`` the one proxy setting of the environment, NO_PROXY unset."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, proxy_url)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
async def test_a_peer_on_loopback_is_never_reached_through_a_proxy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, recording_proxy, variable: str
) -> None:
    """A proxy set for the machine (HTTP_PROXY, ALL_PROXY; no NO_PROXY) took every request to a loopback peer: the
    worker's polls with QUEUE_MANAGER_TOKEN, the scaler's reads, every workflow sent to ComfyUI and every result
    read back went in clear to the proxy, whose 127.0.0.1 is not ours (the worker never saw its ComfyUI)."""
    proxy_url, seen = recording_proxy
    only_proxy(monkeypatch, variable, proxy_url)
    comfy = ComfyUISimulator(tmp_path)
    async with QueueManagerServer(token=TOKEN) as queue, comfy:
        worker_queue = QueueClient(queue.url, "w", token=TOKEN)
        comfy_client = ComfyUIClient(comfy.url)
        try:
            async with QueueStatusReader(queue.url, token=TOKEN) as reader:
                assert await worker_queue.next_job() is None
                assert (await reader.read()).pending_jobs == 0
                assert (await comfy_client.system_stats())["system"]
        finally:
            await worker_queue.aclose()
            await comfy_client.aclose()
    assert seen == []


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
async def test_the_scalers_peers_on_loopback_are_never_reached_through_a_proxy(
    monkeypatch: pytest.MonkeyPatch, recording_proxy, variable: str
) -> None:
    """The same rule (common.urls.direct_transport) for the scaler's other peers: a Verda or RunPod API, a pod's
    /health and the alert webhook on this machine went to the proxy, the API key and bearer token in clear."""
    proxy_url, seen = recording_proxy
    only_proxy(monkeypatch, variable, proxy_url)
    posted: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook/{token}", hook)
    async with (
        served(app, access_log=None) as webhook_url,
        FakeVerda("verda-id", "verda-secret") as verda_api,
        FakeRunPod(RUNPOD_KEY) as runpod_api,
    ):
        verda = VerdaClient("verda-id", "verda-secret", base_url=verda_api.url, max_attempts=1)
        runpod = RunPodClient(RUNPOD_KEY, base_url=runpod_api.url, max_attempts=1)
        probe = PodHealthProbe(runpod_api.health_url)
        alerts = AlertSender(f"{webhook_url}/hook/T0KEN-secret", attempts=1)
        try:
            assert await verda.list_deployments() == []
            pod = await runpod.create_pod(RUNPOD_POD)
            assert await probe.unhealthy([pod.id]) == {} and probe.phase == {pod.id: "idle"}
            await alerts.send(Alert("budget_warning", "spend near the cap", at=0.0))
        finally:
            await verda.aclose()
            await runpod.aclose()
            await probe.aclose()
            await alerts.aclose()
    assert len(posted) == 1
    assert seen == []

@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
async def test_the_demos_participants_reach_its_loopback_queue_directly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, recording_proxy, variable: str
) -> None:
    """The demo submits its workload and fetches the results with the participants' token. With a proxy set for the
    machine, both went to the proxy, the token in clear, and the demo failed (the proxy's 502)."""
    proxy_url, seen = recording_proxy
    only_proxy(monkeypatch, variable, proxy_url)
    async with QueueManagerServer(token=TOKEN) as queue:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(httpx.HTTPStatusError):
            await submit_all(queue.url, [Submission(0.0, "alice", "quick")], started=loop.time(), token=TOKEN)
        done = replace(queue.store.submit("bob", {"1": {}}), status=JobStatus.COMPLETED,
                       result={"outputs": [{"path": "a.png"}]})
        results = await fetch_results(queue.url, [done], tmp_path, token=TOKEN)
        submitted = list(queue.store.every(user_id="alice"))
    assert seen == []
    assert len(submitted) == 1 and results["files"] == 1


_READ_PARENT_ENVIRONMENT = """
import ctypes, os, subprocess, sys
from common.children import PR_SET_DUMPABLE, keep_environment_private
if os.geteuid() == 0:  # root reads any process's environment; the image runs as a user (10001)
    os.setgid(65534)
    os.setuid(65534)
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # as a process started as that user is
if sys.argv[1] == "private":
    keep_environment_private()
child = subprocess.run(["cat", f"/proc/{os.getpid()}/environ"], env={}, capture_output=True)
print(b"child-must-not-see-this" in child.stdout)
"""


@pytest.mark.parametrize("mode", ["private", "as-before"])
def test_a_child_started_without_the_secrets_cannot_read_them_from_its_parent(tmp_path: Path, mode: str) -> None:
    """ComfyUI is started without QUEUE_MANAGER_TOKEN, yet any custom node read it, with the rest of the
    supervisor's environment, at /proc/<ppid>/environ: same user, readable. The supervisor and the scaler now keep
    theirs private (PR_SET_DUMPABLE 0). `as-before` shows the read the test guards against does succeed."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).parents[2]),
           "QUEUE_MANAGER_TOKEN": "child-must-not-see-this"}
    done = subprocess.run([sys.executable, "-c", _READ_PARENT_ENVIRONMENT, mode], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=30)
    assert done.stdout.strip() == str(mode == "as-before"), done.stderr


def test_the_supervisor_and_the_scaler_keep_their_environment_private() -> None:
    """Both start children without their secrets: each calls keep_environment_private before its first child."""
    for start in (supervisor_main._checked_start, scaler_cli.main):  # the supervisor's main hands over to it
        assert "keep_environment_private()" in inspect.getsource(start), start.__qualname__


_CRASH = """
import sys
from common.logs import configure_logging, register_secret
configure_logging("json", "info")
register_secret("crash-secret-7f3a")
raise RuntimeError("gave up on https://worker:url-password-9@queue.example.com with crash-secret-7f3a")
"""


def test_a_crash_is_one_scrubbed_log_line_not_a_raw_traceback(tmp_path: Path) -> None:
    """An exception nothing caught ended the process in Python's own traceback on stderr: neither JSON nor seen by
    the scrubber, so a registered secret or a URL's password in its message went out as is."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", _CRASH], env=env, capture_output=True, text=True, cwd=tmp_path,
                          timeout=30)
    assert done.returncode == 1
    assert "crash-secret-7f3a" not in done.stderr and "url-password-9" not in done.stderr, done.stderr
    [line] = done.stderr.splitlines()
    record = json.loads(line)
    assert record["event"] == "uncaught_exception" and record["level"] == "critical"
    assert "RuntimeError: gave up on https://***@queue.example.com with ***" in record["exception"]


async def test_a_secret_in_what_the_worker_reports_never_reaches_the_queue_manager(log_buffer: io.StringIO) -> None:
    """A failure message or a hand-back reason is stored by the queue manager and shown to whoever submitted the job
    (GET /api/jobs/{id}); no log scrubber sees it. Some reach it with an exception's text as is (the worker's
    "hit an unexpected error: <exception>" hand back, a failed /view download): a URL's password or the token in
    that text was stored and shown."""
    leaky = f"ConnectError at http://comfy:url-password-3@127.0.0.1:8188 (Bearer {TOKEN})"
    async with QueueManagerServer(token=TOKEN) as queue:
        client = QueueClient(queue.url, "w", token=TOKEN)
        try:
            submitted = queue.store.submit("alice", {"1": {}})
            job = await client.next_job()
            assert job is not None
            await client.release_job(job["id"], f"hit an unexpected error: {leaky}", attempt=job["attempt"],
                                     cause=HandBackCause.FAULT)
            job = await client.next_job()  # the same job, its second attempt
            assert job is not None
            await client.fail_job(job["id"], f"Output delivery failed: {leaky}", attempt=job["attempt"])
            record = queue.store.get(submitted.id)
            assert record is not None and record.error is not None
            stored = json.dumps([record.history, record.error])
        finally:
            await client.aclose()
    assert "hit an unexpected error: ConnectError at http://***@127.0.0.1:8188" in stored, stored
    assert "url-password-3" not in stored and TOKEN not in stored, stored


@pytest.mark.parametrize("offset", [0, 280, 295, 299])
def test_an_error_cut_for_a_log_line_keeps_no_part_of_a_secret_across_the_cut(offset: int) -> None:
    secret = "cut-across-secret-7f3a9c"
    register_secret(secret)
    text = error_text(RuntimeError("x" * offset + secret + " and more"))
    assert len(text) <= 300
    assert secret[:6] not in text, "scrubbed first, then cut: no prefix of the secret survives"


def test_a_secret_longer_than_the_scrubbed_margin_is_masked_across_the_cut() -> None:
    """Only the head of a long text is scrubbed, with room for the longest registered secret past the cut."""
    secret = "long-secret-" + "q" * 20_000
    register_secret(secret)
    text = error_text(RuntimeError("x" * 280 + secret + " and more" + " y" * 1_000_000))
    assert text.startswith("RuntimeError: " + "x" * 280) and "long-s" not in text, text[:400]


def test_a_secret_of_thousands_of_characters_across_the_cut_is_masked_whole() -> None:
    """A bearer token can run to thousands of characters (a JWT with its claims): the head scrubbed reaches past the
    cut by the longest registered secret, on top of the margin for a URL's credentials."""
    secret = "jwt-" + "k" * 3_000
    register_secret(secret)
    text = error_text(RuntimeError("x" * 280 + secret + " and more"))
    assert text == "RuntimeError: " + "x" * 280 + "***" + " and more"[:3], text[:400]


@pytest.fixture
async def echoing_peer():
    """A peer on loopback that answers every request with the status and text the test sets: a proxy's or a
    broken server's error page quoting what it was sent, the bearer token included."""
    answer = {"status": 200, "text": ""}

    async def echo(_request: web.Request) -> web.Response:
        return web.Response(status=answer["status"], text=answer["text"])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    async with served(app) as url:
        yield url, answer


@pytest.mark.parametrize("offset", [180, 190])
async def test_a_peers_answer_quoted_in_an_error_keeps_no_part_of_the_token_across_the_cut(
    echoing_peer, offset: int
) -> None:
    """The worker's and the scaler's clients quote the first 100-200 characters of an answer they cannot use.
    Cut before the scrub, a token echoed across the cut kept its first characters (``qm-secret`` at offset 190),
    which no scrubber knew any more, in the log line, /status and the job's stored error."""
    url, answer = echoing_peer
    register_secret(TOKEN)
    answer["text"] = "x" * offset + TOKEN
    shown: list[str] = []
    async with QueueStatusReader(url, token=TOKEN) as reader:
        answer["status"] = 401
        with pytest.raises(QueueStatusError) as refused:
            await reader.read()
        answer["status"] = 200
        with pytest.raises(QueueStatusError) as not_json:
            await reader.read()
    shown += [str(refused.value), str(not_json.value)]
    comfy = ComfyUIClient(url)
    try:
        with pytest.raises(ComfyUIUnavailable) as comfy_not_json:
            await comfy.system_stats()
    finally:
        await comfy.aclose()
    shown += [str(comfy_not_json.value), str(TransientHTTPError(503, answer["text"]))]
    queue = QueueClient(url, "gpu-1", token=TOKEN)
    try:
        for answer["status"] in (503, 200):  # an error page, then an answer that is not JSON
            with pytest.raises(PollError) as poll_failed:
                await queue.next_job()
            shown.append(str(poll_failed.value))
    finally:
        await queue.aclose()
    assert all("x" * 90 in text for text in shown), shown  # the answer is quoted ...
    assert not [text for text in shown if TOKEN[:6] in text], shown  # ... but no part of the token


def test_a_secret_a_provider_echoed_never_reaches_the_health_record_status_reads() -> None:
    """The running fleet writes why a provider is degraded into SCALER_LEDGER_FILE for `comfy-scaler status`: a
    provider's error that echoes a secret must not land in that file."""
    from scaler.allocator import DegradedReason, ProviderHealth
    from scaler.health_record import HealthRecord

    register_secret("runpod-key-echoed-5e1d")
    record = HealthRecord.of(
        {"runpod": ProviderHealth(degraded=DegradedReason.ERRORS, retry_at=200.0)},
        {"runpod": (100.0, "3 errors in a row: 401 invalid key runpod-key-echoed-5e1d")},
        150.0,
    )
    saved = json.dumps(record.to_json())
    assert "runpod-key-echoed-5e1d" not in saved
    assert "3 errors in a row: 401 invalid key ***" in saved
