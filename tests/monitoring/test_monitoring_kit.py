"""The operator's kit in deploy/monitoring: the rules and the dashboard use only metrics the code exports, and
promtool accepts and unit-tests the rules (skipped without promtool, unless REQUIRE_PROMTOOL=1 as in .ci/run)."""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from health.live_metrics import scrape_registry
from scaler.metrics import ScalerMetrics
from worker.metrics import WorkerMetrics
from worker.state import WorkerState

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Everything an operator reads or loads that names a metric.
DOCS_NAMING_METRICS = [path for path in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
                       if re.search(r"`comfy_[a-z0-9_]+", path.read_text())]
USERS_OF_METRICS = [MONITORING / "alerts.yml", MONITORING / "alerts.test.yml", DASHBOARD, *DOCS_NAMING_METRICS]
FIRST_PARTY = ["common", "worker", "health", "supervisor", "scaler", "queue_manager", "standins", "demo"]
METRIC_NAME = re.compile(r"\bcomfy_[a-z0-9_]+")
# The names a sample of each kind of metric is exposed under, for a metric declared as `name`.
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}
CONSTRUCTORS = {
    "Counter": "counter",
    "CounterMetricFamily": "counter",
    "Gauge": "gauge",
    "GaugeMetricFamily": "gauge",
    "Histogram": "histogram",
    "HistogramMetricFamily": "histogram",
    "Summary": "summary",
    "SummaryMetricFamily": "summary",
    "Info": "info",
    "InfoMetricFamily": "info",
    "Enum": "enum",
    "StateSetMetricFamily": "stateset",
}


def sample_names(kind: str, name: str) -> set[str]:
    base = name.removesuffix("_total") if kind == "counter" else name
    return {base + suffix for suffix in SAMPLE_SUFFIXES[kind]}


@functools.cache
def names_in_registries() -> set[str]:
    """What the registries the worker, its health server and the scaler build really expose."""
    state = WorkerState(worker_id="w", provider="local", version="0", max_idle_polls=3, serverless=True)
    registries = [WorkerMetrics().registry, scrape_registry(state, heartbeat_timeout_s=60), ScalerMetrics().registry]
    return {
        name
        for registry in registries
        for family in registry.collect()
        for name in sample_names(family.type, family.name)
    }


@functools.cache
def names_declared_in_code() -> set[str]:
    """Metrics declared anywhere in the packages with a literal name, e.g. a collector only some set-ups build."""
    return {name for declared, (kind, _) in declarations_in_code().items() for name in sample_names(kind, declared)}


@functools.cache
def declarations_in_code() -> dict[str, tuple[str, frozenset[str]]]:
    """Metric name as declared -> (kind, label names), for every metric the packages declare with a literal name."""
    found = {}
    for package in FIRST_PARTY:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.Call) and node.args):
                    continue
                called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                first = node.args[0]
                if called not in CONSTRUCTORS or not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    continue
                labels = node.args[2] if len(node.args) > 2 else next(
                    (kw.value for kw in node.keywords if kw.arg in ("labelnames", "labels")), None
                )
                names = [e.value for e in labels.elts] if isinstance(labels, (ast.List, ast.Tuple)) else []
                found[first.value] = (CONSTRUCTORS[called], frozenset(names))
    return found


def documented_metrics(path: Path) -> list[tuple[str, str | None, frozenset[str]]]:
    """(name, kind or None, label names) for each `name{labels}` in the text, and each row of a metrics table
    (| `name` | kind | `label` = values |, or | `name{labels}` | kind | meaning |)."""
    text = path.read_text()
    found = []
    for name, labels in re.findall(r"`(comfy_[a-z0-9_]+)\{([^}`]*)\}", text):
        found.append((name, None, frozenset(part.split("=")[0].strip() for part in labels.split(","))))
    for name, braces, kind, third in re.findall(
        r"^\| `(comfy_[a-z0-9_]+)(\{[^}`]*\})?` \| ([a-z ()]+) \|(?: ([^|]*) \|)?", text, flags=re.MULTILINE
    ):
        labels = re.findall(r"`([a-z_]+)` =", third or "")
        found.append((name, kind.split()[0], frozenset(labels) if not braces else None))
    return found


def test_the_docs_give_each_metric_its_real_type_and_labels():
    declared = declarations_in_code()
    documented = [(path, *metric) for path in DOCS_NAMING_METRICS for metric in documented_metrics(path)]
    seen = {(path.name, name) for path, name, _, _ in documented}
    assert {("health-and-metrics.md", "comfy_worker_state"), ("scaler.md", "comfy_scaler_budget"),
            ("providers.md", "comfy_scaler_provider_spend")} <= seen, "the patterns no longer find the tables"
    wrong = []
    for path, name, kind, labels in documented:
        base = name if name in declared else name.removesuffix("_total")  # a counter is declared without it
        if base not in declared:
            assert name in names_in_registries(), f"{path.name}: {name} is exported by nothing"
            continue  # a collector computed at scrape time (health.live_metrics): unlabelled gauges
        declared_kind, declared_labels = declared[base]
        if kind is not None and kind != declared_kind:
            wrong.append(f"{path.name}: {name} documented {kind}, declared {declared_kind}")
        if labels is not None and labels != declared_labels:
            wrong.append(f"{path.name}: {name} labels documented {sorted(labels)}, declared {sorted(declared_labels)}")
    assert wrong == []


def test_the_two_sources_of_exported_names_see_the_known_metrics():
    registries, code = names_in_registries(), names_declared_in_code()
    assert {"comfy_worker_jobs_total", "comfy_worker_healthy", "comfy_scaler_budget"} <= registries
    assert {"comfy_worker_jobs_total", "comfy_worker_job_phase_seconds_bucket", "comfy_scaler_max_replicas"} <= code


@pytest.mark.parametrize("path", USERS_OF_METRICS, ids=lambda path: path.name)
def test_every_metric_named_is_one_the_code_exports(path: Path):
    exported = names_in_registries() | names_declared_in_code()
    if path.suffix == ".md":  # prose may name a histogram by its family name, as /metrics' # TYPE line does
        exported |= {name for name, (kind, _) in declarations_in_code().items() if kind == "histogram"}
    named = set(METRIC_NAME.findall(path.read_text()))
    assert named, f"{path.name} names no metric: is the pattern still right?"
    unknown = sorted(named - exported)
    assert not unknown, f"{path.name} uses metrics no code exports: {unknown}"


def test_the_dashboard_has_a_query_in_every_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["targets"] and all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# --- promtool --------------------------------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is required here (REQUIRE_PROMTOOL=1): apt-get install prometheus")
        pytest.skip("promtool not installed (apt-get install prometheus); CI installs it")
    return found


def run_promtool(*args: str, cwd: Path = MONITORING) -> str:
    result = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_accepts_the_rules_and_the_prometheus_config():
    assert "SUCCESS" in run_promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in run_promtool("check", "config", "prometheus.yml")


def test_the_alert_unit_tests_pass():
    assert "SUCCESS" in run_promtool("test", "rules", "alerts.test.yml")


def test_the_alert_unit_tests_can_fail(tmp_path: Path):
    """Break one rule's threshold: its unit test must notice."""
    shutil.copy(MONITORING / "alerts.test.yml", tmp_path)
    rules = (MONITORING / "alerts.yml").read_text()
    assert "comfy_scaler_consecutive_failures >= 3" in rules
    (tmp_path / "alerts.yml").write_text(
        rules.replace("comfy_scaler_consecutive_failures >= 3", "comfy_scaler_consecutive_failures >= 30")
    )

    result = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )

    assert result.returncode != 0
    assert "ComfyScalerHoldingOnErrors" in result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path):
    """promtool parses each query as a recording rule, with Grafana's interval variable filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for number, query in enumerate(queries):
        lines += [
            f"      - record: dashboard:query_{number}",
            f"        expr: {json.dumps(query.replace('$__rate_interval', '5m'))}",
        ]
    (tmp_path / "dashboard-queries.yml").write_text("\n".join(lines) + "\n")

    assert f"SUCCESS: {len(queries)} rules found" in run_promtool(
        "check", "rules", "dashboard-queries.yml", cwd=tmp_path
    )


def test_the_idle_poll_limit_line_is_drawn_only_for_a_limit(tmp_path: Path):
    """SERVERLESS_MAX_IDLE_POLLS=0 means "never exit idle". Before: the panel drew it as a limit of 0, under every
    count of idle polls, as if each worker were past it. Now: no limit line for it; a limit of 10 is drawn."""
    dashboard = json.loads(DASHBOARD.read_text())
    [panel] = [panel for panel in dashboard["panels"] if panel["title"] == "Idle polls before exit"]
    [limit] = [target["expr"] for target in panel["targets"] if target["legendFormat"] == "limit"]
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f'comfy_worker_max_idle_polls{{instance="{instance}"}}', "values": values}
                for instance, values in (("never", "0x5"), ("ten", "_x2 10x3"))
            ],
            "promql_expr_test": [
                {"expr": limit, "eval_time": "1m", "exp_samples": []},
                {"expr": limit, "eval_time": "4m", "exp_samples": [{"labels": "{}", "value": 10}]},
            ],
        }],
    }
    (tmp_path / "limit.test.yml").write_text(json.dumps(tests))

    assert "SUCCESS" in run_promtool("test", "rules", "limit.test.yml", cwd=tmp_path)


def test_every_alert_has_its_runbook_section():
    rules = (MONITORING / "alerts.yml").read_text()
    alerts = re.findall(r"- alert: (\w+)", rules)
    runbooks = re.findall(r"runbook: docs/monitoring.md#(\w+)", rules)
    sections = re.findall(r"^### (\w+)$", (ROOT / "docs/monitoring.md").read_text(), flags=re.MULTILINE)
    assert runbooks == [alert.lower() for alert in alerts]
    assert sorted(sections) == sorted(alerts)


def alert_rules() -> dict[str, tuple[str | None, str]]:
    """Alert -> (its `for` as written, e.g. "5m", or None; its severity), read from alerts.yml."""
    rules = {}
    for block in (MONITORING / "alerts.yml").read_text().split("- alert: ")[1:]:
        name = block.split()[0]
        duration = re.search(r"^\s+for: (\w+)$", block, flags=re.MULTILINE)
        severity = re.search(r"^\s+severity: (\w+)$", block, flags=re.MULTILINE)
        assert severity, f"{name} has no severity"
        rules[name] = (duration[1] if duration else None, severity[1])
    return rules


def test_each_runbook_gives_its_alert_s_severity_and_duration_as_in_the_rules():
    """docs/monitoring.md: "`expr` for 2 minutes (page)" must stay what alerts.yml says."""
    text = (ROOT / "docs/monitoring.md").read_text()
    rules = alert_rules()
    assert len(rules) >= 10
    wrong = []
    for name, (duration, severity) in rules.items():
        section = text.split(f"### {name}\n", 1)[1].split("What to do", 1)[0]
        if not re.search(rf"\({severity}[),]", section):  # "(page)", "(page, at once)"
            wrong.append(f"{name}: severity {severity}")
        minutes = re.findall(r"for (\d+) minutes", section)
        expected = [str(int(duration.removesuffix("m")))] if duration else []
        if duration and not duration.endswith("m"):
            wrong.append(f"{name}: `for: {duration}` is not in minutes; say it in the runbook")
        elif minutes[-1:] != expected:
            wrong.append(f"{name}: for {duration}, runbook says {minutes}")
    assert wrong == []


def test_each_worker_s_first_failed_job_counts_toward_comfyjobsfailing(tmp_path: Path):
    """Serverless workers live a job or two: a series born at 1 at its first job showed Prometheus no increase,
    and four workers whose one job each failed never paged. Scraped from the real registries each minute."""
    states = [
        WorkerState(worker_id=f"w{n}", provider="local", version="0", max_idle_polls=3, serverless=True)
        for n in range(4)
    ]
    series: dict[str, list[str]] = {}
    minutes = 15
    for minute in range(minutes):
        if minute == 2:
            for state in states:
                state.job_started("job")
                state.job_finished("failed")  # not the workflow's fault
        for n, state in enumerate(states):
            exposition = generate_latest(scrape_registry(state, heartbeat_timeout_s=60)).decode()
            for family in text_string_to_metric_families(exposition):
                for sample in family.samples:
                    labels = {"job": "comfy-worker", "instance": f"w{n}", **sample.labels}
                    selector = ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
                    series.setdefault(f"{sample.name}{{{selector}}}", ["_"] * minutes)[minute] = repr(sample.value)
    tests = {
        "rule_files": [str(MONITORING / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": name, "values": " ".join(values)} for name, values in series.items()],
            "alert_rule_test": [{"eval_time": "10m", "alertname": "ComfyJobsFailing", "exp_alerts": [{
                "exp_labels": {"severity": "page"},
                "exp_annotations": {
                    "summary": "100% of jobs failed over the last 15 minutes, not by their workflow",
                    "runbook": "docs/monitoring.md#comfyjobsfailing",
                },
            }]}],
        }],
    }
    (tmp_path / "first-job.test.yml").write_text(json.dumps(tests))

    assert "SUCCESS" in run_promtool("test", "rules", "first-job.test.yml", cwd=tmp_path)
