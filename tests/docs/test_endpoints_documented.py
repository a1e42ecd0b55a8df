"""The HTTP endpoints the docs show are the ones the servers route, and the /status example is the real document.

Routes are read from the route tables (health/server.py, queue_manager/app.py, scaler/metrics.py); the servers
themselves are exercised by tests/health and tests/queue_manager."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from health.status import status_document
from worker.state import Phase, WorkerState

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
ROUTE = re.compile(r"router\.add_(get|post|delete|put|patch)\(\s*\"([^\"]+)\"")


def routes(module: str) -> set[tuple[str, str]]:
    """(METHOD, path) of a server's route table, path parameters written {id}."""
    text = (REPO / module).read_text()
    return {(method.upper(), re.sub(r"\{[a-z_]+\}", "{id}", path)) for method, path in ROUTE.findall(text)}


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
                method = "POST" if re.search(r"-X ?POST", line) else "GET"
                found.append((doc.name, port, method, path.split("?")[0]))
    return found


def test_the_route_tables_are_read():
    assert ("GET", "/health") in HEALTH and ("POST", "/api/jobs") in QUEUE and ("GET", "/metrics") in SCALER


def test_every_curl_example_calls_a_route_the_server_on_that_port_has():
    calls = curl_calls()
    assert {port for _, port, _, _ in calls} >= {"8000", "8080"}
    wrong = [f"{doc}: curl :{port} {method} {path}" for doc, port, method, path in calls
             if (method, path) not in SERVERS.get(port, set())]
    assert wrong == []


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
