"""Property-based fuzzing of the embedded queue manager's HTTP API (docs/queue-manager-api.md).

The example-based cases of test_queue_http.py pin known answers; these throw generated requests at every route
(arbitrary and near-valid JSON bodies, raw bytes, odd ids, query strings, content types, methods) and check what
must hold for any of them: never a 5xx, every refusal a JSON `detail` naming the field or the problem, the server
still healthy afterwards. A state machine drives jobs through their lives with generated (often wrong) worker
ids, attempts and reports and checks the store against a model after every step.

One real server on loopback per test, run on its own event loop in a thread (hypothesis drives synchronous
tests); derandomized: each run is the same.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from queue_manager import QueueManagerServer

from ..conftest import LoopThread

TOKEN = "fuzz-token"
# No "explain" phase: it traces every line run (Python 3.11) and took over a minute to explain one failure.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, phases=PHASES)


@contextlib.contextmanager
def served_on(loop: LoopThread, **kwargs: Any) -> Iterator[QueueManagerServer]:
    server = QueueManagerServer(**kwargs)
    loop.run(server.start())
    try:
        yield server
    finally:
        loop.run(server.stop())


@pytest.fixture(scope="module", params=[None, TOKEN], ids=["open", "token"])
def served(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    token = request.param
    with LoopThread() as loop, served_on(loop, token=token, max_queue_depth=1000) as server:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(base_url=server.url, headers=headers, timeout=10.0) as client:
            yield client


# -- what to send ----------------------------------------------------------------------------------------

ROUTES = [
    ("GET", "/api/workers/next-job"),
    ("POST", "/api/workers/complete-job"),
    ("POST", "/api/workers/fail-job"),
    ("POST", "/api/workers/heartbeat"),
    ("POST", "/api/workers/release-job"),
    ("GET", "/api/queue/status"),
    ("GET", "/health"),
    ("POST", "/api/jobs"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/{id}"),
    ("DELETE", "/api/jobs/{id}"),
]
QUERY_NAMES = ["worker_id", "job_id", "attempt", "poll_id", "limit", "status", "user_id", "order", "offset", "x"]
BODY_KEYS = ["user_id", "workflow", "priority", "metadata", "result", "error", "reason", "cause"]

numbers_as_text = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "0.0", "2.0", "1e3", "9" * 25, "00", "+1"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["", " ", "\x00", "\ud800", "alice", "2", "shutdown", "fault", "\u202e", "a\nb"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _encode(value: Any) -> bytes:
    """JSON text of value; lone surrogates sent as \\u escapes (as a client's JSON encoder would)."""
    return json.dumps(value, allow_nan=True).encode()


near_valid_bodies = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.one_of(st.just("alice"), json_values),
        "workflow": st.one_of(st.just({"1": {"class_type": "X", "inputs": {}}}), json_values),
        "priority": st.one_of(st.integers(-5, 5), json_values),
        "metadata": st.one_of(st.just({}), json_values),
        "result": st.one_of(st.just({"outputs": []}), json_values),
        "error": st.one_of(st.just("boom"), json_values),
        "reason": st.one_of(st.just("stopping"), json_values),
        "cause": st.one_of(st.sampled_from(["shutdown", "fault"]), json_values),
    },
).map(_encode)
# Text a JSON encoder would never write: bare numbers in odd spellings, duplicate keys, deep nesting, BOMs.
odd_texts = st.one_of(
    st.builds(lambda n: f'{{"user_id":"a","workflow":{{"1":{{"inputs":{{"v":{n}}}}}}},"priority":{n}}}'.encode(),
              numbers_as_text),
    st.builds(lambda k, a, b: f'{{"{k}":{a},"{k}":{b}}}'.encode(), st.sampled_from(BODY_KEYS),
              numbers_as_text, numbers_as_text),
    st.builds(lambda d: b'{"user_id":"a","workflow":{"1":' + b"[" * d + b"]" * d + b"}}", st.integers(1, 200)),
    st.builds(lambda body: b"\xef\xbb\xbf" + body, near_valid_bodies),
    st.builds(lambda body, enc: body.decode().encode(enc), near_valid_bodies,
              st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1"])),
)
bodies = st.one_of(st.none(), json_values.map(_encode), near_valid_bodies, odd_texts, st.binary(max_size=64))
content_types = st.one_of(
    st.none(),
    st.sampled_from([
        "application/json", "application/json; charset=utf-16", "text/plain", "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x", "application/vnd.api+json", ";;;", "",
        "application/", "/json",
    ]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20).map(str.strip),
)
ids = st.one_of(
    st.uuids().map(str),
    st.text(max_size=12),
    st.sampled_from(["", " ", "%00", "%ff", "%ED%A0%80", "..", "x" * 250, "a/b", "%2F", "?", "#"]),
)
query_values = st.one_of(ids, numbers_as_text, st.sampled_from(["pending", "running", "newest", "oldest"]))
queries = st.lists(st.tuples(st.sampled_from(QUERY_NAMES), query_values), max_size=5)
# Query strings as sent on the wire, percent-escapes and all: bytes that are not UTF-8, empty names, bare '='.
raw_queries = st.lists(
    st.one_of(
        st.builds("{}={}".format, st.sampled_from(QUERY_NAMES), st.sampled_from(
            ["%ff", "%ED%A0%80", "%00", "%C3", "%", "%zz", "+", "%20", "a%0Ab", "%E2%80%AE"])),
        st.sampled_from(["", "=", "==", "worker_id", "job_id=", "&", "limit=1&limit=2"]),
    ),
    max_size=4,
).map("&".join)
# Not br, zstd or deflate: aiohttp's parser refuses those itself, as a plain-text 400 (br and zstd are not installed;
# a deflate body that ends early is found at the message's end), like any request it cannot parse.
encodings = st.one_of(st.none(), st.sampled_from(["gzip", "identity", "x-nope", "gzip, gzip", "GZIP", ""]))
WRONG_AUTHORIZATIONS = ["", "Bearer", "bearer x", "Basic Zm9vOmJhcg==", f"Bearer {TOKEN}x", TOKEN, "Bearer ~"]
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]], bytes | None, dict[str, str]]:
    method, path = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) == 0:
        method = draw(methods)
    if "{id}" in path:
        job_id = draw(ids)
        path = path.replace("{id}", quote(job_id, safe="%") if job_id.startswith("%") else quote(job_id, safe=""))
    headers = {}
    content_type = draw(content_types)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if draw(st.integers(0, 9)) == 0:  # on the token server, refused (401) before anything else is read
        headers["Authorization"] = draw(st.sampled_from(WRONG_AUTHORIZATIONS))
    encoding = draw(encodings)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    body = draw(bodies) if method not in ("GET", "HEAD") or draw(st.booleans()) else None
    if draw(st.booleans()):
        path = f"{path}?{draw(raw_queries)}"
        return method, path, [], body, headers
    return method, path, draw(queries), body, headers


def _not_strict(value: Any) -> bool:
    """Whether the manager refuses this value as not strict JSON (400): a lone surrogate, an int over 20 digits."""
    if isinstance(value, str):
        return any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return len(str(abs(value))) > 20
    if isinstance(value, dict):
        return any(_not_strict(k) or _not_strict(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_not_strict(v) for v in value)
    return False


def _post(client: httpx.Client, path: str, params: dict[str, Any], body: Any) -> httpx.Response:
    return client.post(path, params=params, content=_encode(body), headers={"Content-Type": "application/json"})


def _send(client: httpx.Client, method: str, path: str, query: list[tuple[str, str]], body: bytes | None,
          headers: dict[str, str]) -> httpx.Response:
    return client.request(method, path, params=query, content=body, headers=headers)


def _assert_a_clear_answer(response: httpx.Response, method: str) -> None:
    status = response.status_code
    assert status < 500, (status, response.text[:500])
    if status < 400 or method == "HEAD":
        return
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
    detail = response.json()["detail"]
    if isinstance(detail, list):  # 422: each error names where
        assert detail and all(error["loc"] and error["msg"] for error in detail), detail
    else:
        assert isinstance(detail, str) and detail.strip(), detail


def _assert_healthy(client: httpx.Client) -> None:
    assert client.get("/health").json()["status"] == "healthy"


@SETTINGS
@given(sent=requests())
def test_no_request_gets_a_5xx_or_an_unclear_refusal(served: httpx.Client, sent: tuple[Any, ...]) -> None:
    client = served
    method, path, query, body, headers = sent
    response = _send(client, method, path, query, body, headers)
    _assert_a_clear_answer(response, method)
    _assert_healthy(client)


# -- the store under generated job lives -----------------------------------------------------------------


class JobLives(RuleBasedStateMachine):
    """Jobs submitted, polled, reported, handed back and cancelled with generated (often wrong) workers, attempts
    and bodies; a model of what each job must be after every answer."""

    client: httpx.Client

    def __init__(self) -> None:
        super().__init__()
        # id -> {"status", "worker" (the last to take it, cleared by a hand back), "attempt"}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.last_poll: tuple[str, str, str | None] | None = None  # worker, poll_id, the job it answered
        self.last_poll_attempt: int | None = None
        self.user = f"u{uuid.uuid4().hex[:12]}"  # one user per run: its jobs are the ones this run made

    @initialize()
    def drain(self) -> None:
        """Start from an empty line: fail whatever an earlier run left pending or running."""
        for status in ("pending", "running"):
            for job in self.client.get("/api/jobs", params={"status": status, "limit": 1000}).json():
                response = self.client.post("/api/workers/fail-job", params={"job_id": job["id"]},
                                            json={"error": "cleared by the fuzzer"})
                assert response.status_code == 200, response.text

    def _job(self, index: int) -> str | None:
        return list(self.jobs)[index % len(self.jobs)] if self.jobs else None

    @rule(priority=st.integers(0, 3), metadata=json_values)
    def submit(self, priority: int, metadata: Any) -> None:
        body = {"user_id": self.user, "workflow": {"1": {"class_type": "X", "inputs": {}}}, "priority": priority,
                "metadata": metadata}
        response = _post(self.client, "/api/jobs", {}, body)
        _assert_a_clear_answer(response, "POST")
        if _not_strict(metadata):
            assert response.status_code == 400 and response.json()["detail"].startswith("metadata"), response.text
        elif isinstance(metadata, dict):
            assert response.status_code == 201, response.text
            self.jobs[response.json()["id"]] = {"status": "pending", "worker": None, "attempt": 1}
        else:
            assert response.status_code == 422
            assert response.json()["detail"][0]["loc"] == ["body", "metadata"]

    @rule(worker=st.sampled_from(["w1", "w2"]), poll_id=st.sampled_from([None, "new", "again"]))
    def poll(self, worker: str, poll_id: str | None) -> None:
        params = {"worker_id": worker}
        if poll_id == "again" and self.last_poll is not None:  # a retry of the last poll, its answer "lost"
            last_worker, last_poll_id, answered = self.last_poll
            params["poll_id"] = last_poll_id
            state = self.jobs.get(answered or "")
            if state is not None and state["status"] == "running" and state["attempt"] == self.last_poll_attempt:
                response = self.client.get("/api/workers/next-job", params=params)
                if worker == last_worker:  # the same job again, same attempt, nothing else popped
                    assert response.status_code == 200 and response.json()["job"]["id"] == answered, response.text
                    assert response.json()["job"]["attempt"] == state["attempt"]
                else:
                    assert response.status_code == 409, response.text
                return
        elif poll_id is not None:
            params["poll_id"] = str(uuid.uuid4())
        response = self.client.get("/api/workers/next-job", params=params)
        assert response.status_code == 200, response.text
        job = response.json()["job"]
        pending = [job_id for job_id, state in self.jobs.items() if state["status"] == "pending"]
        if "poll_id" in params:
            self.last_poll = (worker, params["poll_id"], job["id"] if job else None)
            self.last_poll_attempt = job["attempt"] if job else None
        if job is None:
            assert not pending
            return
        assert job["id"] == pending[0], "FIFO: the first submitted, a handed-back job at its original place"
        state = self.jobs[job["id"]]
        assert state["status"] == "pending" and job["attempt"] == state["attempt"]
        state.update(status="running", worker=worker)

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 50), worker=st.sampled_from(["w1", "w2", None]), attempt_delta=st.sampled_from(
        [0, 0, 1, -1, None, 10**25]), outcome=st.sampled_from(["complete", "fail"]), body=json_values)
    def report(self, index: int, worker: str | None, attempt_delta: int | None, outcome: str, body: Any) -> None:
        job_id = self._job(index)
        state = self.jobs[job_id]
        params: dict[str, Any] = {"job_id": job_id}
        if worker is not None:
            params["worker_id"] = worker
        if attempt_delta is not None:
            params["attempt"] = state["attempt"] + attempt_delta
        key = "result" if outcome == "complete" else "error"
        response = _post(self.client, f"/api/workers/{outcome}-job", params, {key: body})
        _assert_a_clear_answer(response, "POST")
        if _not_strict(body):
            assert response.status_code == 400 and response.json()["detail"].startswith(key), response.text
            return
        attempt = params.get("attempt")
        valid = isinstance(body, dict) if outcome == "complete" else (isinstance(body, str) and body.strip())
        if not valid or (attempt is not None and attempt < 1):
            assert response.status_code == 422, response.text
            return
        holds = state["status"] == "running" and worker in (None, state["worker"]) and attempt in (
            None, state["attempt"])
        if (worker is not None or attempt is not None) and not holds:  # fenced out: nothing changes
            assert response.status_code == 409, response.text
            return
        assert response.status_code == 200, response.text  # unfenced: lands whatever the state (the peer's rule)
        state["status"] = "completed" if outcome == "complete" else "failed"  # its worker stays on the job

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 50), worker=st.sampled_from(["w1", "w2"]), cause=st.sampled_from(
        ["shutdown", "fault", "other"]), attempt_delta=st.sampled_from([0, 0, 1]))
    def release(self, index: int, worker: str, cause: str, attempt_delta: int) -> None:
        job_id = self._job(index)
        state = self.jobs[job_id]
        params = {"job_id": job_id, "worker_id": worker, "attempt": state["attempt"] + attempt_delta}
        response = self.client.post("/api/workers/release-job", params=params, json={"reason": "r", "cause": cause})
        _assert_a_clear_answer(response, "POST")
        holds = state["status"] == "running" and worker == state["worker"] and attempt_delta == 0
        if cause == "other":
            assert response.status_code in (409, 422)
            return
        if not holds:
            assert response.status_code == 409, response.text
            return
        assert response.status_code == 200, response.text
        answer = response.json()
        state.update(status=answer["status"], worker=None, attempt=state["attempt"] + 1)
        if answer["status"] == "failed":
            state["attempt"] -= 1

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 50), worker=st.sampled_from(["w1", "w2"]), attempt_delta=st.sampled_from([0, 1, None]))
    def heartbeat(self, index: int, worker: str, attempt_delta: int | None) -> None:
        job_id = self._job(index)
        state = self.jobs[job_id]
        params: dict[str, Any] = {"job_id": job_id, "worker_id": worker}
        if attempt_delta is not None:
            params["attempt"] = state["attempt"] + attempt_delta
        response = self.client.post("/api/workers/heartbeat", params=params)
        _assert_a_clear_answer(response, "POST")
        holds = state["status"] == "running" and worker == state["worker"] and attempt_delta in (0, None)
        assert response.status_code == (200 if holds else 409), response.text

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 50))
    def cancel(self, index: int) -> None:
        job_id = self._job(index)
        state = self.jobs[job_id]
        response = self.client.delete(f"/api/jobs/{job_id}")
        _assert_a_clear_answer(response, "DELETE")
        if state["status"] == "pending":  # deleted outright, as comfy-multi does
            assert response.status_code == 204, response.text
            del self.jobs[job_id]
        elif state["status"] == "running":
            assert response.status_code == 204, response.text
            state["status"] = "cancelled"
        else:
            assert response.status_code == 400

    @invariant()
    def jobs_and_counts_are_what_the_model_says(self) -> None:
        listed = self.client.get("/api/jobs", params={"user_id": self.user, "limit": 1000}).json()
        seen = {job["id"]: (job["status"], job["worker_id"], job["attempt"]) for job in listed}
        assert seen == {
            job_id: (state["status"], state["worker"], state["attempt"])
            for job_id, state in self.jobs.items()
        }
        model = {s: sum(1 for state in self.jobs.values() if state["status"] == s) for s in ("pending", "running")}
        # This run's jobs are the only ones pending or running: the run began by clearing the line.
        status = self.client.get("/api/queue/status").json()
        assert (status["pending_jobs"], status["running_jobs"]) == (model["pending"], model["running"])
        assert status["queue_depth"] == status["pending_jobs"]


@pytest.mark.timeout(180)  # ~30 s alone; 60 s was overrun three times on a loaded 2-core machine
def test_job_lives_keep_the_store_consistent() -> None:
    with LoopThread() as loop, served_on(loop, max_queue_depth=1000) as server, \
            httpx.Client(base_url=server.url, timeout=30.0) as client:
        JobLives.client = client
        machine = JobLives.TestCase
        machine.settings = settings(
            max_examples=60, stateful_step_count=25, deadline=None, derandomize=True, phases=PHASES,
            report_multiple_bugs=False,
        )
        machine().runTest()
