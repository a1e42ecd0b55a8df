"""One name per setting across the scaler and the deploy, and the docs name exactly what the code reads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import AliasChoices

from common.settings import env_name
from scaler.config import ScalerSettings
from scaler.deploy.spec import DEFAULT_SPEC_PATH, ENV_OVERRIDES, SHARED_VOLUME_ENVS
from scaler.deploy.verda import CLIENT_ENV
from supervisor.config import SupervisorSettings
from worker.config import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
DOCS = {"scaler": REPO / "docs" / "scaler.md", "deploy": REPO / "docs" / "deploy-verda.md"}
PROVIDERS_DOC = REPO / "docs" / "providers.md"  # the fleet's settings (SCALER_PROVIDERS and the rest)
# `NAME` or `NAME=value` in backquotes, or NAME= at the start of an env-file line
VARIABLE = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)[`=]|^([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)=", re.MULTILINE)


def settings_names(settings_cls) -> set[str]:
    return {env_name(settings_cls, name) for name in settings_cls.model_fields}


def spec_container_names() -> set[str]:
    """Variables the spec sets in the container or copies into it from the deploy-time environment."""
    spec = tomllib.loads(DEFAULT_SPEC_PATH.read_text())
    return set(spec["env"]) | set(spec["env_from_environment"]["names"]) | set(spec["secrets"])


SCALER = settings_names(ScalerSettings)
DEPLOY = set(CLIENT_ENV) | set(ENV_OVERRIDES) | set(SHARED_VOLUME_ENVS.values()) | spec_container_names()
# The docs also name the worker's and the supervisor's variables when they explain the container's env.
CONTAINER = settings_names(WorkerSettings) | settings_names(SupervisorSettings)


def documented(doc: Path) -> set[str]:
    return {a or b for a, b in VARIABLE.findall(doc.read_text())}


def test_each_scaler_setting_has_exactly_one_name():
    doubled = {
        name: field.validation_alias.choices
        for name, field in ScalerSettings.model_fields.items()
        if isinstance(field.validation_alias, AliasChoices)
    }
    assert doubled == {}


def test_scaler_and_deploy_read_the_same_names_for_the_same_things():
    assert {"VERDA_API_URL", "VERDA_DEPLOYMENT_NAME", "VERDA_CLIENT_ID", "VERDA_CLIENT_SECRET"} <= SCALER & DEPLOY
    assert ENV_OVERRIDES["VERDA_DEPLOYMENT_NAME"] == ("deployment", "name")


def test_every_documented_variable_is_one_the_code_reads():
    for doc in DOCS.values():
        unknown = documented(doc) - SCALER - DEPLOY - CONTAINER
        assert unknown == set(), f"{doc.name} documents variables nothing reads: {sorted(unknown)}"


def test_every_variable_the_code_reads_is_documented():
    assert SCALER - documented(DOCS["scaler"]) - documented(PROVIDERS_DOC) == set()
    assert DEPLOY - documented(DOCS["deploy"]) == set()
