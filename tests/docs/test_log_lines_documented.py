"""The log lines the docs tell the operator to look for are the ones the code writes, with the fields shown.

Read from the code without running it: every string literal (an f-string's values become placeholders) and, for
each call whose first argument is a literal (log.info("event", key=...), report("event", ...)), its keyword
names. The five lines an operator greps for are also checked running, in tests/worker/test_jobs.py."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

from scaler.policy import Reason

REPO = Path(__file__).resolve().parents[2]
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
SOURCE_DIRS = ("common", "worker", "health", "supervisor", "queue_manager", "scaler", "demo", "standins")
HOLE = "\x00"  # where an f-string puts a value
# The lines the operator relies on, exactly as written (the developers' guide).
REQUIRED = ["Worker started", "Processing job X", "Job X completed", "Serverless idle timeout reached",
            "Worker shutdown complete"]
# Tables whose first column lists log lines: worker.md "event", providers.md "log line" and "event".
EVENT_TABLE_HEADERS = ("| event |", "| log line |")
# Placeholders in a documented line: X (a job id), N, M, …, ..., <ip>; a number may be a value the code fills in.
PLACEHOLDER = re.compile(r"…|\.\.\.|<[^>]+>|\b[XNM]\b")
# What the code may fill in where the doc shows a value: a number (3.75), a variable's name (COMFYUI_TEMP_DIR).
FILLED_IN = re.compile(r"\d+(?:\\\.\d+)?|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")
# Text in a documented line that a third party writes, not our code.
NOT_OURS = {"Error handling request from": "aiohttp's own message, after our prefix (common/logs.py)"}


def _literal(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else HOLE for part in node.values)
    return None


def _choices(node: ast.expr) -> list[str]:
    """The strings an expression can be when it is a literal or `"a" if ... else "b"`."""
    if isinstance(node, ast.IfExp):
        return _choices(node.body) + _choices(node.orelse)
    return [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []


def _spelled_out(function: ast.AST) -> list[str]:
    """The f-strings of a function with each `{name}` replaced by every literal the function assigns to name
    (why = "the shutdown deadline" if ... else "the retry budget"; f"... within {why}; ...")."""
    assigned: dict[str, list[str]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assigned.setdefault(node.targets[0].id, []).extend(_choices(node.value))
    variants = []
    for node in ast.walk(function):
        if not isinstance(node, ast.JoinedStr):
            continue
        texts = [""]
        for part in node.values:
            if isinstance(part, ast.Constant):
                options = [part.value]
            elif isinstance(part.value, ast.Name) and assigned.get(part.value.id):
                options = assigned[part.value.id]
            else:
                options = [HOLE]
            texts = [text + option for text in texts for option in options]
        variants += texts if len(texts) > 1 else []
    return variants


def _held_back_logger(node: ast.AST) -> tuple[str, str, set[str]] | None:
    """(level, event, keyword names) of a `held_back_logger(log, "level", "event", **fields)` call: a log line
    written later, by the throttle, with `more_since_last` and the fields."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "held_back_logger"
            and len(node.args) == 3):
        return None
    level, event = _literal(node.args[1]), _literal(node.args[2])
    if level is None or event is None:
        return None
    return level, event, {"more_since_last"} | {keyword.arg or "**" for keyword in node.keywords}


@functools.cache
def code_strings() -> tuple[list[str], dict[str, set[str]]]:
    """Every string literal of the code, and event -> keyword names of the calls that take it first."""
    literals: list[str] = []
    calls: dict[str, set[str]] = {}
    for folder in SOURCE_DIRS:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                text = _literal(node) if isinstance(node, (ast.Constant, ast.JoinedStr)) else None
                if text is not None:
                    literals.append(text)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    literals += _spelled_out(node)
                if isinstance(node, ast.Call) and node.args and (event := _literal(node.args[0])) is not None:
                    if not re.search("[A-Za-z]", event):
                        continue  # `text.startswith("#")`: no event is only punctuation
                    names = calls.setdefault(event, set())
                    names.update(keyword.arg or "**" for keyword in node.keywords)
                if (held_back := _held_back_logger(node)) is not None:
                    calls.setdefault(held_back[1], set()).update(held_back[2])
    return literals, calls


def written_by_the_code(line: str) -> bool:
    """True when some literal holds the line: its placeholders and numbers may be anything the code fills in."""
    for text in NOT_OURS:
        line = line.replace(text, "…")
    fragments = [fragment.strip() for fragment in PLACEHOLDER.split(line)]
    pattern = ".*?".join(FILLED_IN.sub(lambda value: f"(?:{value[0]}|{HOLE})", re.escape(fragment))
                         for fragment in fragments if fragment)
    literals, _ = code_strings()
    return any(re.search(pattern, literal, flags=re.DOTALL) for literal in literals)


def event_table_lines(doc: Path) -> list[str]:
    """The documented lines of the doc's event tables: each backquoted text of the first column, split at " / "."""
    lines, in_table = [], False
    for row in doc.read_text().splitlines():
        if row.startswith(EVENT_TABLE_HEADERS):
            in_table = True
        elif not row.startswith("|"):
            in_table = False
        elif in_table and not row.startswith("|---"):
            first_cell = row.split("|")[1]
            for text in re.findall(r"`([^`]+)`", first_cell):
                if re.fullmatch(r"[a-z_]+", text) and text not in code_strings()[1]:
                    continue  # a field named beside the line (`not_removed`), checked with the fields below
                # `Provider move provider=runpod reason=fallback`: the line, then its fields
                lines += [re.split(r" (?=[a-z_]+=)", alt)[0].strip() for alt in text.split(" / ")]
    return lines


EVENT_DOCS = [doc for doc in DOCS if event_table_lines(doc)]


def test_the_event_tables_are_found():
    assert {doc.name for doc in EVENT_DOCS} >= {"worker.md", "providers.md"}


@pytest.mark.parametrize("doc", EVENT_DOCS, ids=lambda doc: doc.name)
def test_every_line_of_an_event_table_is_written_by_the_code(doc):
    missing = [line for line in event_table_lines(doc) if not written_by_the_code(line)]
    assert missing == [], f"{doc.name} tells the operator to look for lines nothing writes"


def test_the_required_operator_lines_are_in_the_worker_event_table_and_the_code_exactly():
    table = event_table_lines(REPO / "docs" / "worker.md")
    _, calls = code_strings()
    logged = {event.replace(HOLE, "X") for event in calls}
    for line in REQUIRED:
        assert line in table, f"docs/worker.md's event table lost {line!r}"
        assert line in logged, f"no log call writes {line!r} exactly"


def documented_fields() -> list[tuple[str, str, str, list[str]]]:
    """(doc, text, event, field names) for each backquoted `event key=value ...` whose event the code logs."""
    _, calls = code_strings()
    found = []
    for doc in DOCS:
        for text in re.findall(r"`([^`\n]+)`", doc.read_text()):
            event = re.split(r" (?=[a-z_]+=)| …| \.\.\.", text)[0].strip()
            fields = re.findall(r"(?:^| )([a-z_]+)=", text)
            if fields and event in calls:
                found.append((doc.name, text, event, fields))
    return found


def test_the_fields_shown_with_a_log_line_are_the_ones_it_carries():
    _, calls = code_strings()
    shown = documented_fields()
    assert {event for *_, event, _ in shown} >= {"Provider move", "supervisor.scratch_emptied"}
    wrong = [
        f"{doc}: `{text}`: {sorted(set(fields) - calls[event])} not among {sorted(calls[event])}"
        for doc, text, event, fields in shown
        if "**" not in calls[event] and not set(fields) <= calls[event]
    ]
    assert wrong == []


def test_the_decision_reasons_the_docs_name_are_the_policys():
    """`reason=hold_paused` on a "Scaling decision" line: a reason the docs explain must be one the policy gives."""
    named = {
        word
        for doc in DOCS
        for word in re.findall(r"`(?:reason=)?((?:hold|wake|scale_up|scale_down|scale_to|prewarm_for|clamp_to)"
                               r"[a-z_]*|steady)`", doc.read_text())
        if not word.endswith(("_s", "_seconds"))  # settings such as scale_down_lead_s
    }
    assert {"hold_paused", "scale_up_capped_by_daily_budget"} <= named
    assert named - {reason.value for reason in Reason} == set()


# Where the warnings and errors an operator must be able to look up are written.
WARNING_DIRS = ("common", "worker", "health", "supervisor", "queue_manager", "scaler")
LEVELS = {"warning", "error", "exception", "critical"}


def warnings_and_errors() -> list[tuple[str, str]]:
    """(file:line, event) of each log call at warning level or above whose event is a literal."""
    found = []
    for folder in WARNING_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS
                        and node.args and (event := _literal(node.args[0])) is not None):
                    found.append((f"{path.relative_to(REPO)}:{node.lineno}", event))
                elif (held_back := _held_back_logger(node)) is not None and held_back[0] in LEVELS:
                    found.append((f"{path.relative_to(REPO)}:{node.lineno}", held_back[1]))
    return found


def test_every_warning_and_error_the_code_logs_is_explained_in_a_doc():
    """A warning or an error no doc names leaves the operator at 2 a.m. with nothing to read. An event is named
    when the start of one of its literal parts (between the values the code fills in) is in some doc, or, for a
    short one (`queue_full`, `Job X failed`), the whole of it."""
    docs = " ".join(" ".join(doc.read_text().split()) for doc in DOCS)

    def named(event: str) -> bool:
        parts = [part.strip() for part in event.split(HOLE) if len(part.strip()) >= 12]
        if parts:
            return any(part[:30] in docs for part in parts)
        return event.replace(HOLE, "X") in docs

    events = warnings_and_errors()
    assert len(events) > 50
    assert [f"{where}: {event!r}" for where, event in events if not named(event)] == []
