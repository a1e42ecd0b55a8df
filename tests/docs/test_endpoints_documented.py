"""The HTTP endpoints the docs show are the ones the servers route, and the /status example is the real document;
every call the Verda client makes is one docs/verda-api.md describes.

Routes are read from the route tables (health/server.py, queue_manager/app.py, scaler/metrics.py); the servers
themselves are exercised by tests/health and tests/queue_manager."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
from pathlib import Path

import aiohttp

from health.status import status_document
from queue_manager.server import QueueManagerServer
from standins.comfyui import ComfyUISimulator
from worker.state import Phase, WorkerState

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
ROUTE = re.compile(r"router\.add_(get|post|delete|put|patch)\(\s*\"([^\"]+)\"")


def routes(module: str) -> set[tuple[str, str]]:
    """(METHOD, path) of a server's route table, path parameters written {id}."""
    text = (REPO / module).read_text()
    return {(method.upper(), re.sub(r"\{[a-z_]+(?::[^}]*)?\}", "{id}", path)) for method, path in ROUTE.findall(text)}


HEALTH = routes("health/server.py")
QUEUE = routes("queue_manager/app.py")
SCALER = routes("scaler/metrics.py")
SERVERS = {"8000": HEALTH, "8080": QUEUE, "9110": SCALER}


def documented_calls(doc: Path) -> set[tuple[str, str]]:
    """(METHOD, path) for each `METHOD /path...` the doc names in code, query strings dropped."""
    found = set()
    for method, path in re.findall(r"`(GET|POST|DELETE|PUT|PATCH|HEAD) (/[^`?\s]*)", doc.read_text()):
        found.add((method, re.sub(r"\{[a-z_]+\}", "{id}", path)))
    return found


def curl_calls() -> list[tuple[str, str, str, str]]:
    """(doc, port, METHOD, path) of every curl example against localhost or 127.0.0.1."""
    found = []
    for doc in [*sorted(DOCS.glob("*.md")), REPO / "README.md"]:
        for line in doc.read_text().splitlines():
            if "curl" not in line:
                continue
            for port, path in re.findall(r"(?:localhost|127\.0\.0\.1|<worker>):(\d+)(/[^\s'\"`]*)", line):
                method = re.search(r"-X ?(POST|DELETE|PUT|PATCH)|$", line)[1] or "GET"
                found.append((doc.name, port, method, re.sub(r"<[a-z_]+>", "{id}", path.split("?")[0])))
    return found


def curl_commands() -> list[tuple[str, str]]:
    """(doc, the whole command) of each curl example in a code block, lines continued with a backslash joined."""
    found = []
    for doc in [*sorted(DOCS.glob("*.md")), REPO / "README.md"]:
        in_block = False
        for line in doc.read_text().replace("\\\n", " ").splitlines():
            if line.lstrip().startswith("```"):
                in_block = not in_block
            elif in_block and line.lstrip().startswith("curl "):
                found.append((doc.name, line.strip()))
    return found


def submitted_jobs() -> list[tuple[str, dict]]:
    """(doc, body) of each curl example that submits a job; `$(cat FILE)` is read from the repository."""
    jobs = []
    for doc, command in curl_commands():
        if ":8080/api/jobs" not in command or not re.search(r"-X ?POST", command):
            continue
        words = shlex.split(command.split(" #", 1)[0])
        body = words[words.index("-d") + 1]
        body = re.sub(r"\$\(cat ([^)]+)\)", lambda match: (REPO / match[1]).read_text(), body)
        jobs.append((doc, json.loads(body)))
    return jobs


def test_the_route_tables_are_read():
    assert ("GET", "/health") in HEALTH and ("POST", "/api/jobs") in QUEUE and ("GET", "/metrics") in SCALER


def test_every_curl_example_calls_a_route_the_server_on_that_port_has():
    calls = curl_calls()
    assert {port for _, port, _, _ in calls} >= {"8000", "8080"}
    wrong = [f"{doc}: curl :{port} {method} {path}" for doc, port, method, path in calls
             if (method, path) not in SERVERS.get(port, set())]
    assert wrong == []


def test_every_curl_example_against_the_queue_s_api_sends_the_token():
    """With QUEUE_MANAGER_TOKEN set (queue-manager.md's first step), an example without the header answered 401;
    without a token the header is ignored, so every example carries it."""
    calls = [(doc, command) for doc, command in curl_commands() if ":8080/api/" in command]
    assert len(calls) >= 4
    assert [call for call in calls if "Authorization: Bearer $QUEUE_MANAGER_TOKEN" not in call[1]
            and '"$AUTH"' not in call[1]] == []


async def test_every_job_a_doc_submits_is_accepted_by_the_queue_and_runs_on_comfyui(tmp_path):
    """A documented submission must be one a worker completes: queue-manager.md's example (an EmptyImage without
    inputs) was accepted by the queue, then failed on ComfyUI with "Prompt has no outputs"."""
    jobs = submitted_jobs()
    assert {doc for doc, _ in jobs} >= {"queue-manager.md", "container.md"}
    async with (
        QueueManagerServer(tmp_path / "queue.db", token="t0k") as qm,
        ComfyUISimulator(tmp_path / "output") as comfy,
        aiohttp.ClientSession() as http,
    ):
        for doc, body in jobs:
            async with http.post(f"{qm.url}/api/jobs", json=body, headers={"Authorization": "Bearer t0k"}) as answer:
                assert answer.status == 201, (doc, await answer.text())
            async with http.post(f"{comfy.url}/prompt", json={"prompt": body["workflow"]}) as answer:
                assert answer.status == 200, (doc, await answer.text())


def test_the_health_doc_names_each_health_route_and_no_other():
    text = (DOCS / "health-and-metrics.md").read_text()
    headed = {("GET", path) for path in re.findall(r"^## `GET (/\w+)`", text, flags=re.MULTILINE)}
    assert headed == HEALTH


def test_the_queue_manager_docs_name_each_route_and_the_contract_table_no_other():
    """The contract table of queue-manager.md, with the extensions of queue-manager-api.md (heartbeat, release)."""
    text = (DOCS / "queue-manager.md").read_text()
    table = text.split("## Contract summary", 1)[1].split("\n## ", 1)[0]
    in_table = {(method, re.sub(r"\{[a-z_]+\}", "{id}", path))
                for method, path in re.findall(r"^\| `(GET|POST|DELETE) (/[^`?\s]*)", table, flags=re.MULTILINE)}
    assert in_table <= QUEUE, f"the contract table names routes the queue manager lacks: {in_table - QUEUE}"
    named = in_table | documented_calls(DOCS / "queue-manager-api.md")
    assert QUEUE - named == set(), "routes no doc describes"


def test_the_status_example_has_exactly_the_fields_of_the_status_document():
    text = (DOCS / "health-and-metrics.md").read_text()
    example = json.loads(re.search(r"## `GET /status`.*?```json\n(.*?)```", text, flags=re.DOTALL)[1].replace("…", ""))
    state = WorkerState(worker_id="w", provider="local", version="0", max_idle_polls=3, serverless=True)
    real = status_document(state, heartbeat_timeout_s=60)
    assert set(example) == set(real)
    assert {key: set(value) for key, value in example.items() if isinstance(value, dict)} == {
        key: set(value) for key, value in real.items() if isinstance(value, dict)
    }
    states = re.search(r"`state` is `([^`]+)`", text.replace("\n", " "))[1]
    assert [s.strip() for s in states.split("|")] == [phase.value for phase in Phase]


def test_the_phases_the_health_table_shows_are_the_worker_phases():
    text = (DOCS / "health-and-metrics.md").read_text()
    shown = set(re.findall(r'"phase": "(\w+)"', text))
    assert shown and shown <= {phase.value for phase in Phase}


def test_the_readme_links_every_doc_and_places_every_top_level_folder():
    readme = (REPO / "README.md").read_text()
    unlinked = [doc.name for doc in sorted(DOCS.glob("*.md")) if f"(docs/{doc.name})" not in readme]
    assert unlinked == [], "docs the README's Docs list does not link"
    tracked = subprocess.run(
        ["git", "ls-files", "--cached"], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
    ).stdout.splitlines()
    folders = sorted({path.split("/")[0] for path in tracked if "/" in path and not path.startswith(".")})
    assert "worker" in folders, "git ls-files listed nothing: is this a checkout?"
    table = readme.split("## What is where", 1)[1].split("\n## ", 1)[0]
    unplaced = [name for name in folders if f"`{name}/" not in table]
    assert unplaced == [], "top-level folders the README's 'What is where' does not place"


VERDA_CLIENT = REPO / "scaler" / "providers" / "verda" / "client.py"
HTTP_METHODS = ("GET", "POST", "PATCH", "DELETE", "PUT")


def _path_of(node: ast.expr, names: dict[str, ast.expr]) -> str | None:
    """The path an argument spells, each value an f-string puts in a {} (f"{DEPLOYMENTS}/{_path(name)}" ->
    /container-deployments/{}); None for a path passed in as a parameter."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return _path_of(names[node.id], names)
    if isinstance(node, ast.JoinedStr):
        parts = [_path_of(part.value, names) if isinstance(part, ast.FormattedValue) else part.value
                 for part in node.values]
        return "".join(part if part is not None else "{}" for part in parts)
    return None


def verda_client_calls() -> set[tuple[str, str]]:
    """(METHOD, path) of each request scaler/providers/verda/client.py writes out: self._json("GET", "/volumes"), a
    path assigned in the method first, and self._create(path, …), which POSTs."""
    tree = ast.parse(VERDA_CLIENT.read_text())
    module_names = {node.targets[0].id: node.value for node in tree.body
                    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    calls = set()
    for function in ast.walk(tree):
        if not isinstance(function, ast.AsyncFunctionDef | ast.FunctionDef):
            continue
        names = {**module_names, **{node.targets[0].id: node.value for node in ast.walk(function)
                                    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}}
        for call in ast.walk(function):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.args):
                continue
            first = call.args[0]
            if isinstance(first, ast.Constant) and first.value in HTTP_METHODS and len(call.args) > 1:
                method, path = first.value, _path_of(call.args[1], names)
            elif call.func.attr == "_create":
                method, path = "POST", _path_of(first, names)
            else:
                continue
            if path is not None:
                calls.add((method, path))
    return calls


def verda_documented_calls() -> set[tuple[str, str]]:
    """`GET/PATCH /container-deployments/{name}/scaling`, and `POST /…/{name}/pause`, `/resume`: each method of
    each path, its parameters written {}."""
    found = set()
    spans = re.findall(r"`((?:GET|POST|PATCH|DELETE|PUT)(?:/(?:GET|POST|PATCH|DELETE|PUT))*) (/[^`?\s]*)[^`]*`"
                       r"((?:, `/[^`/]+`)*)", (DOCS / "verda-api.md").read_text())
    for methods, path, siblings in spans:
        paths = [path] + [path.rsplit("/", 1)[0] + sibling for sibling in re.findall(r"`(/[^`]+)`", siblings)]
        found |= {(method, re.sub(r"\{[a-z_]+\}", "{}", one)) for method in methods.split("/") for one in paths}
    return found


def test_every_call_of_the_verda_client_is_in_verda_api_md():
    """The deploy's GET /volumes and GET /container-registry-credentials (a 403 there is a warning operators look
    up) were in no table of the doc that lists the calls the code relies on."""
    calls = verda_client_calls()
    assert {("GET", "/container-deployments/{}/replicas"), ("POST", "/container-deployments"),
            ("POST", "/oauth2/token")} <= calls, "the client's calls were not read: did it change shape?"
    assert sorted(calls - verda_documented_calls()) == []
