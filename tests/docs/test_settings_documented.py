"""Every environment variable a process reads is documented, with its real default, in the operator's docs; every
variable the docs name is one something reads (or a build argument, or a constant named for reference).

One inventory of what the code reads (settings classes, the deploy's lists, the deploy spec, the image, the
compose file, direct os.environ reads) against one reading of docs/*.md and README.md."""

from __future__ import annotations

import enum
import json
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import AliasChoices
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from common.settings import env_name, misspelling_of
from common.timespans import DAY_S, WEEK_S
from queue_manager.__main__ import QueueManagerEnv
from scaler.config import ScalerSettings
from scaler.deploy import runpod as runpod_deploy
from scaler.deploy.command import DeployLogSettings
from scaler.deploy.spec import DEFAULT_SPEC_PATH, ENV_OVERRIDES, SHARED_VOLUME_ENVS
from scaler.deploy.verda import CLIENT_ENV
from supervisor.config import SupervisorSettings
from worker.config import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
ALL_DOCS = [*sorted(DOCS.glob("*.md")), REPO / "README.md"]
# `NAME` or `NAME=value` in backquotes, or NAME= at the start of an env-file line
VARIABLE = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)[`=]|^([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)=", re.MULTILINE)
# A table row whose first cell names variables: | `A` | default | ... or | `A` / `B` | a / b | ...
TABLE_ROW = re.compile(r"^\| (`[A-Z][A-Z0-9_]+`(?:\s*[/,]\s*`[A-Z][A-Z0-9_]+`)*) \| ([^|]*) \|", re.MULTILINE)
# os.environ.get("X"...), os.environ["X"], environ.get("X"...): a variable read without a settings class
DIRECT_READ = re.compile(r"environ(?:\.get\(|\[)\s*\"([A-Z][A-Z0-9_]+)\"")
SOURCE_DIRS = ("common", "worker", "health", "supervisor", "queue_manager", "scaler", "demo", "standins", "image_test")


def settings_names(settings_cls: type[BaseSettings]) -> set[str]:
    return {env_name(settings_cls, name) for name in settings_cls.model_fields}


def spec_container_names() -> set[str]:
    """Variables the spec sets in the container or copies into it from the deploy-time environment."""
    spec = tomllib.loads(DEFAULT_SPEC_PATH.read_text())
    return set(spec["env"]) | set(spec["env_from_environment"]["names"]) | set(spec["secrets"])


def dockerfile(keyword: str) -> dict[str, str]:
    """The image's ENV (or ARG) names and values, continuation lines included."""
    text = (REPO / "Dockerfile.serverless").read_text().replace("\\\n", "\n")
    found: dict[str, str] = {}
    for block in re.findall(rf"^{keyword} (.*?)(?=^\S|\Z)", text, flags=re.MULTILINE | re.DOTALL):
        for name, value in re.findall(r"([A-Z][A-Z0-9_]*)(?:=(\"[^\"]*\"|\S*))?", block):
            found.setdefault(name, value.strip('"'))
    return found


def compose_names() -> set[str]:
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (REPO / "docker-compose.serverless.yml").read_text()))


def direct_reads() -> set[str]:
    return {
        name
        for folder in SOURCE_DIRS
        for path in (REPO / folder).rglob("*.py")
        for name in DIRECT_READ.findall(path.read_text())
    }


def ci_exports() -> set[str]:
    """Variables .ci/run exports for the test run (REQUIRE_PROMTOOL)."""
    return set(re.findall(r"^export ([A-Z][A-Z0-9_]*)=", (REPO / ".ci" / "run").read_text(), flags=re.MULTILINE))


# Who reads what, and where the operator finds it documented (any of those docs).
READERS: dict[str, tuple[set[str], tuple[str, ...]]] = {
    "worker": (settings_names(WorkerSettings), ("worker.md",)),
    "supervisor": (settings_names(SupervisorSettings), ("container.md",)),
    "queue manager": (settings_names(QueueManagerEnv), ("queue-manager.md",)),
    "scaler": (settings_names(ScalerSettings), ("scaler.md", "providers.md")),
    "deploy": (
        set(CLIENT_ENV) | set(ENV_OVERRIDES) | set(SHARED_VOLUME_ENVS.values()) | settings_names(DeployLogSettings)
        | spec_container_names(),
        ("deploy-verda.md",),
    ),
    "deploy --provider runpod": (set(runpod_deploy.ENV_OVERRIDES) | set(runpod_deploy.CLIENT_ENV), ("providers.md",)),
    "the image (ENV)": (set(dockerfile("ENV")), ("container.md",)),
    "the image build (ARG)": (set(dockerfile("ARG")), ("container.md",)),
    "docker-compose.serverless.yml": (compose_names(), ("container.md",)),
    "direct os.environ reads": (direct_reads(), tuple(path.name for path in ALL_DOCS)),
    ".ci/run": (ci_exports(), ("monitoring.md",)),
}
READ = set().union(*(names for names, _ in READERS.values()))
# Names the docs give in backquotes that are no variable of ours, each for a reason the reader can check.
NOT_OURS = {
    "NUM_WORKERS": "comfy-multi's queue manager setting, in the comparison table of queue-manager.md",
    "DB_PASS": "deploy-verda.md: an example of a name the deploy takes for a secret's",
    "SSH_KEY": "deploy-verda.md: an example of a name the deploy takes for a secret's",
    "SESSION_ID": "deploy-verda.md: an example of a name the deploy takes for a secret's",
    "SECOND_PASS_STEPS": "deploy-verda.md: an example of a workflow setting the deploy does not take for a secret",
    "HF_TOKEN": "an example of a variable the supervisor passes through to ComfyUI untouched",
    "RUNPOD_WEBHOOK_GET_JOB": "RunPod's own worker SDK reads it (providers.md compares the platforms)",
    "RUNPOD_WEBHOOK_PING": "RunPod's own worker SDK reads it (providers.md compares the platforms)",
    "PORT_HEALTH": "RunPod's load-balancer endpoint setting (providers.md compares the platforms)",
    "HEALTH_CHECK_PATH": "RunPod's load-balancer endpoint setting (providers.md compares the platforms)",
    "PIP_CERT": "set by ./dev image-test in the base image it makes (pip reads it)",
    "DOCKER_BUILDKIT": "read by the docker CLI",
    "PR_SET_PDEATHSIG": "a Linux prctl option, not a variable",
    "SQLITE_FULL": "an SQLite result code, as the queue manager's storage_failed line gives it",
    "SQLITE_BUSY": "an SQLite result code, as the queue manager's storage_failed line gives it",
    "SQLITE_READONLY": "an SQLite result code, as the queue manager's storage_failed line gives it",
    **dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"),
                    "read by httpx; worker.md says a peer on this machine is reached without them"),
}


# Misspellings the docs show as examples of the warning (common.settings.misspelt_variables) or of the deploy's
# refusal (scaler.deploy.container_env): each must be one the code catches, as a typo of the setting named.
MISSPELT_EXAMPLES = {
    "SERVERLESS_MOD": "SERVERLESS_MODE",
    "SERVERLESS_MAX_IDLE_POLL": "SERVERLESS_MAX_IDLE_POLLS",
    "QUEUE_MANGER_URL": "QUEUE_MANAGER_URL",
    "SCALER_MAX_REPLICA": "SCALER_MAX_REPLICAS",
    "LEASE_TIMEOUT": "LEASE_TIMEOUT_S",
}


def test_the_misspellings_the_docs_show_are_caught_as_typos_of_the_setting_named():
    assert {name: misspelling_of(name, READ) for name in MISSPELT_EXAMPLES} == MISSPELT_EXAMPLES
    mentioned = set().union(*(documented(doc) for doc in ALL_DOCS))
    assert set(MISSPELT_EXAMPLES) <= mentioned


def code_constants() -> set[str]:
    """UPPER_CASE names assigned at module level in the code: docs may name a limit after its constant."""
    pattern = re.compile(r"^([A-Z][A-Z0-9_]+)(?::[^=]+)? = ", re.MULTILINE)
    return {name for folder in SOURCE_DIRS for path in (REPO / folder).rglob("*.py") for name in pattern.findall(
        path.read_text())}


def documented(doc: Path) -> set[str]:
    return {a or b for a, b in VARIABLE.findall(doc.read_text())}


def names_in(doc: Path, names: set[str]) -> set[str]:
    """Those of ``names`` the doc gives as `NAME`, `NAME=...` or NAME= at a line's start (VERSION has no "_")."""
    text = doc.read_text()
    return {name for name in names if re.search(rf"`{name}[`=]|^{name}=", text, flags=re.MULTILINE)}


def table_defaults(doc: Path) -> dict[str, str]:
    """Variable -> its default cell, from the tables whose first column names variables."""
    defaults = {}
    for names_cell, default_cell in TABLE_ROW.findall(doc.read_text()):
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", names_cell)
        cells = [cell.strip() for cell in default_cell.split(" / ")]
        for index, name in enumerate(names):
            defaults.setdefault(name, cells[index] if len(cells) == len(names) else default_cell.strip())
    return defaults


def table_rows(doc: Path) -> dict[str, str]:
    """Variable -> the whole table row that names it in its first column."""
    rows = {}
    for row in doc.read_text().splitlines():
        first = re.match(r"^\| ((?:`[A-Z][A-Z0-9_]+`[ ,/]*)+)\|", row)
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", first[1]) if first else []:
            rows.setdefault(name, row)
    return rows


def shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


@pytest.mark.parametrize("reader", list(READERS))
def test_every_variable_the_code_reads_is_documented(reader):
    names, docs = READERS[reader]
    written = set().union(*(names_in(DOCS / doc if doc != "README.md" else REPO / doc, names) for doc in docs))
    assert names, f"{reader}: the inventory found nothing; did the code move?"
    assert sorted(names - written) == [], f"{reader} reads variables {', '.join(docs)} does not document"


def test_every_documented_variable_is_one_something_reads():
    constants = code_constants()
    for doc in ALL_DOCS:
        unknown = documented(doc) - READ - set(NOT_OURS) - set(MISSPELT_EXAMPLES) - constants
        assert unknown == set(), f"{doc.name} documents variables nothing reads: {sorted(unknown)}"


def test_the_names_kept_apart_as_not_ours_are_still_in_the_docs_and_read_by_nothing():
    """An entry of NOT_OURS the docs dropped, or one the code started reading, must leave the list."""
    mentioned = set().union(*(documented(doc) for doc in ALL_DOCS))
    assert set(NOT_OURS) <= mentioned
    assert set(NOT_OURS) & READ == set()


SETTINGS_DOCS = [
    (WorkerSettings, "worker.md"),
    (SupervisorSettings, "container.md"),
    (QueueManagerEnv, "queue-manager.md"),
    (ScalerSettings, "scaler.md"),
    (ScalerSettings, "providers.md"),
]


@pytest.mark.parametrize(("settings_cls", "doc"), SETTINGS_DOCS, ids=[doc for _, doc in SETTINGS_DOCS])
def test_the_default_in_each_table_is_the_code_default(settings_cls, doc):
    """container.md gives the image's default: the Dockerfile's ENV where it sets one."""
    rows = table_defaults(DOCS / doc)
    image_env = dockerfile("ENV") if doc == "container.md" else {}
    checked, wrong = 0, []
    for field_name, field in settings_cls.model_fields.items():
        name = env_name(settings_cls, field_name)
        if name not in rows:
            continue
        if field.default is PydanticUndefined and field.default_factory is None:
            expected = "required"
        elif field.default is None or field.default is PydanticUndefined:
            continue  # unset, or computed (a generated id): the cell says how, in words
        else:
            expected = image_env.get(name, shown(field.default))
        checked += 1
        cell = rows[name].replace("`", "")
        if expected == "" and cell in ("", "empty", "none", "unset"):
            continue
        if not re.search(rf"(?<![\w.]){re.escape(expected)}(?![\w.])", cell):
            wrong.append(f"{name}: code {expected!r}, {doc} {rows[name]!r}")
    assert checked, f"no table row of {doc} names a setting with a default"
    assert wrong == []


def test_the_image_default_of_a_variable_the_image_sets_is_the_dockerfile_value():
    rows = table_defaults(DOCS / "container.md")
    image_env = dockerfile("ENV")
    assert {"LOG_FORMAT", "COMFYUI_COMMAND", "HEALTH_PORT"} <= set(rows)
    for name in set(rows) & set(image_env):
        assert rows[name].replace("`", "") == image_env[name], name


def test_each_scaler_setting_has_exactly_one_name():
    doubled = {
        name: field.validation_alias.choices
        for name, field in ScalerSettings.model_fields.items()
        if isinstance(field.validation_alias, AliasChoices)
    }
    assert doubled == {}


def test_scaler_and_deploy_read_the_same_names_for_the_same_things():
    scaler, deploy = READERS["scaler"][0], READERS["deploy"][0]
    assert {"VERDA_API_URL", "VERDA_DEPLOYMENT_NAME", "VERDA_CLIENT_ID", "VERDA_CLIENT_SECRET"} <= scaler & deploy
    assert ENV_OVERRIDES["VERDA_DEPLOYMENT_NAME"] == ("deployment", "name")


def bounds(field) -> list[float]:
    """The field's lower bounds above 0 and its upper bounds (ge=1, le=100 -> [1, 100])."""
    found = []
    for constraint in field.metadata:
        for kind in ("ge", "gt", "le", "lt"):
            value = getattr(constraint, kind, None)
            if value is not None and (kind in ("le", "lt") or value > 0):
                found.append(value)
    return found


# Bounds a doc states once for all its variables, not in each row.
STATED_FOR_ALL = {"worker.md": {DAY_S, WEEK_S}, "scaler.md": set(), "providers.md": set(), "container.md": set(),
                  "queue-manager.md": set()}
PORT_RANGE = 65535  # a port is a port


@pytest.mark.parametrize(("settings_cls", "doc"), SETTINGS_DOCS, ids=[doc for _, doc in SETTINGS_DOCS])
def test_each_table_row_states_the_bounds_the_code_enforces(settings_cls, doc):
    """`MAX_JOB_ATTEMPTS` refused above 100 at start: the row says 100 (or its section says it for all)."""
    rows = table_rows(DOCS / doc)
    checked, missing = 0, []
    for field_name, field in settings_cls.model_fields.items():
        name = env_name(settings_cls, field_name)
        if name not in rows:
            continue
        for bound in bounds(field):
            if bound in STATED_FOR_ALL[doc] or bound == PORT_RANGE:
                continue
            checked += 1
            numbers = {float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", rows[name])}
            if float(bound) not in numbers:
                missing.append(f"{name}: {bound:g}")
    assert missing == [], f"{doc} does not state these bounds"
    assert checked or doc == "container.md" or doc == "queue-manager.md"


def spec_shown(value: object) -> str:
    """As TOML writes it: false, "", ["QUEUE_MANAGER_URL"], 300."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list) or value == "":
        return json.dumps(value)
    return str(value)


def test_the_spec_table_of_deploy_verda_md_gives_the_spec_s_defaults():
    """| `scaling.min_replica_count` / `max_replica_count` | `0` / `5` |: the values verda/deployment.toml holds."""
    spec = tomllib.loads(DEFAULT_SPEC_PATH.read_text())
    text = (DOCS / "deploy-verda.md").read_text()
    checked, wrong = 0, []
    for keys_cell, default_cell in re.findall(r"^\| (`[a-z_]+\.[a-z_]+`[^|]*) \| ([^|]*) \|", text, flags=re.MULTILINE):
        keys = re.findall(r"`([a-z_.]+)`", keys_cell)
        section = keys[0].split(".")[0]
        values = [value.strip().strip("`") for value in re.split(r" / |, ", default_cell)]
        if len(values) != len(keys):
            continue
        for key, documented_value in zip(keys, values, strict=True):
            name = key.split(".")[-1]
            actual = spec.get(section, {}).get(name)
            if actual is None or "…" in documented_value:
                continue  # the image placeholder is shown shortened
            checked += 1
            if spec_shown(actual) != documented_value:
                wrong.append(f"{section}.{name}: spec {spec_shown(actual)!r}, doc {documented_value!r}")
    assert checked >= 12
    assert wrong == []
