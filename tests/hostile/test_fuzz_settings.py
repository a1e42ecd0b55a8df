"""Fuzzed configuration: every variable each process reads, given each of a battery of hostile values (and then
generated text), is taken as meant or refused by a ConfigError naming it, in lines short enough to read (a value
quoted whole buries the reason); never another exception, never a hang.
A number taken is finite and the one written (never read from other digits than ASCII's), within the range its
field declares (which the docs' tables give). Every duration declares a ceiling, and a floor above 0 where it has one:
1e23 and 1e-320 are refused, not taken at their word.

tests/hostile/test_configuration.py keeps the hand-picked cases and why each mattered; the variables here come
from the settings classes themselves, so a setting added later is fuzzed without a line here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from common.settings import ConfigError, allowed_range, setting_names, settings_from_env
from queue_manager.__main__ import QueueManagerEnv
from scaler.config import ScalerSettings
from scaler.config import load_settings as load_scaler_settings
from supervisor.config import SupervisorSettings, load_supervisor_settings
from worker.config import WorkerSettings
from worker.config import load_settings as load_worker_settings

from ..conftest import NoNetwork
from .test_configuration import SCALER_BASE, WORKER_BASE

HOSTILE = [
    "", " ", "\t", "nan", "NaN", "inf", "-inf", "-1", "0", "-0", "1e309", "1e-320", "99999999999999999999999",
    "1e23", "0x10", "1_000", "true", "[]", "{}", "null", "\x00", "a\nb", "é", "x" * 100_000, "/dev/null",
    "../../etc/passwd",
    "\U0001d7d9",  # a mathematical digit one, which int() reads as 1
    "\u0661\u0662",  # Arabic-Indic digits, which int() reads as 12
    "\udcff",  # a byte the environment could not decode as UTF-8 (Python keeps it as a lone surrogate)
]


def _load_queue_manager_env() -> QueueManagerEnv:
    return settings_from_env(QueueManagerEnv, "queue manager")


LOADERS: dict[str, tuple[type[BaseSettings], Callable[[], BaseSettings], dict[str, str]]] = {
    "worker": (WorkerSettings, load_worker_settings, WORKER_BASE),
    "supervisor": (SupervisorSettings, load_supervisor_settings, {}),
    "scaler": (ScalerSettings, load_scaler_settings, SCALER_BASE),
    "queue-manager": (QueueManagerEnv, _load_queue_manager_env, {}),
}
EVERY_SETTING = set().union(*(setting_names(cls) for cls, _, _ in LOADERS.values()), {"SSL_CERT_FILE", "SSL_CERT_DIR"})
CASES = [(process, variable) for process, (cls, _, _) in LOADERS.items() for variable in sorted(setting_names(cls))]
# Resolved when loaded, by design: the suite's network guard refuses the name, as a name that does not resolve is.
RESOLVED_AT_LOAD = {"HEALTH_HOST", "SCALER_METRICS_HOST"}
MAX_LINE = 1000  # characters in a line of a refusal: a value quoted whole buries the reason


def _field_of(settings_cls: type[BaseSettings], variable: str) -> str:
    for name, field in settings_cls.model_fields.items():
        alias = field.validation_alias
        if variable in (alias.choices if isinstance(alias, AliasChoices) else [alias or name.upper()]):
            return name
    raise LookupError(variable)


class Fuzz:
    """Loads one process's settings with one variable set, in a folder of its own, and says what is wrong."""

    def __init__(self, process: str, variable: str, folder: Path, network: NoNetwork) -> None:
        self.settings_cls, self.load, self.base = LOADERS[process]
        self.variable, self.folder, self.network = variable, folder, network
        self.field = _field_of(self.settings_cls, variable)
        self.unset = self._outcome(None)

    def _outcome(self, value: str | None) -> BaseSettings | ConfigError:
        """The settings, or the refusal; any other exception propagates (the caller reports it)."""
        env_file = self.folder / ".env"
        env_file.unlink(missing_ok=True)
        with pytest.MonkeyPatch.context() as patch:
            for name in EVERY_SETTING:
                patch.delenv(name, raising=False)
            for name, base_value in self.base.items():
                if name != self.variable:
                    patch.setenv(name, base_value)
            patch.chdir(self.folder)
            if value is not None and "\x00" in value:  # no environment can hold it; a .env file can
                env_file.write_text(f"{self.variable}={value}\n", encoding="utf-8")
            elif value is not None:
                patch.setenv(self.variable, value)
            try:
                return self.load()
            except ConfigError as refused:
                return refused
            finally:
                if self.variable in RESOLVED_AT_LOAD:
                    self.network.attempts.clear()

    def problem(self, value: str) -> str | None:
        """What is wrong with how ``value`` was taken, or None."""
        if "\x00" in value and not self.settings_cls.model_config.get("env_file"):
            return None  # it reads no .env file, and no environment can hold a NUL: no one can give it this value
        try:
            outcome = self._outcome(value)
        except Exception as exc:  # the point: no other exception may leave a loader
            return f"{type(exc).__name__}: {exc}"
        if isinstance(outcome, ConfigError):
            if len(longest := max(str(outcome).splitlines(), key=len)) > MAX_LINE:
                return f"refused in a line of {len(longest)} characters, the reason lost at its end: {longest[:200]}"
            named = re.search(rf"\b{self.variable}\b", str(outcome)) is not None
            # Not named: only a value taken as unset (blank, in the scaler), refused as an unset one is.
            same_as_unset = isinstance(self.unset, ConfigError) and str(outcome) == str(self.unset)
            return None if named or same_as_unset else f"refused without naming it: {outcome}"
        infinite = [name for name in type(outcome).model_fields
                    if isinstance(getattr(outcome, name), float) and not math.isfinite(getattr(outcome, name))]
        if infinite:
            return f"taken, with {infinite} not finite"
        taken = getattr(outcome, self.field)
        if isinstance(taken, int | float) and not isinstance(taken, bool):
            return self._number_problem(value, taken)
        return None

    def _number_problem(self, value: str, taken: float) -> str | None:
        if not value.strip():
            default = getattr(self.unset, self.field, None)
            return None if taken == default else f"blank taken as {taken!r}, not as unset ({default!r})"
        if not value.isascii():
            return f"taken as {taken!r}: not ASCII digits, which no operator types for a number"
        try:
            written = int(value) if isinstance(taken, int) else float(value)
        except ValueError:
            return f"taken as {taken!r}, which Python does not read as a number"
        if taken != written:
            return f"taken as {taken!r}, not {written!r}"
        low, high = allowed_range(self.settings_cls, self.field)
        if (low is not None and taken < low) or (high is not None and taken > high):
            return f"taken as {taken!r}, outside the range its field declares ({low}, {high})"
        return None


@pytest.fixture
def fuzz(tmp_path: Path, no_network: NoNetwork) -> Callable[[str, str], Fuzz]:
    return lambda process, variable: Fuzz(process, variable, tmp_path, no_network)


@pytest.mark.timeout(30)  # a hang fails the variable's test: the battery takes well under a second
@pytest.mark.parametrize(("process", "variable"), CASES, ids=[f"{p}-{v}" for p, v in CASES])
def test_each_hostile_value_is_taken_as_meant_or_refused_naming_the_variable(
    fuzz: Callable[[str, str], Fuzz], process: str, variable: str
) -> None:
    one = fuzz(process, variable)
    problems = {value[:30]: problem for value in HOSTILE if (problem := one.problem(value))}
    assert problems == {}


def _is_duration(settings_cls: type[BaseSettings], variable: str) -> bool:
    field = settings_cls.model_fields[_field_of(settings_cls, variable)]
    return _field_of(settings_cls, variable).endswith("_s") and float in (field.annotation, *get_args(field.annotation))


DURATIONS = [(process, variable) for process, variable in CASES if _is_duration(LOADERS[process][0], variable)]


@pytest.mark.parametrize(("process", "variable"), DURATIONS, ids=[f"{p}-{v}" for p, v in DURATIONS])
def test_each_duration_has_a_ceiling_and_absurd_magnitudes_are_refused(
    fuzz: Callable[[str, str], Fuzz], process: str, variable: str
) -> None:
    """Unbounded, 1e23 was taken (a back-off past the year 9999: a health record no reader takes); above 0 alone,
    1e-320 (an idle worker polling nonstop, a lease no heartbeat could renew)."""
    one = fuzz(process, variable)
    low, high = allowed_range(one.settings_cls, variable)
    assert high is not None, f"{variable} declares no ceiling"
    absurd = ["1e23", *(["1e-320"] if low else [])]
    taken = [value for value in absurd if not isinstance(one._outcome(value), ConfigError)]
    assert taken == []


# Any text, with a byte the environment could not decode among the characters; no NUL (no environment holds one).
undecodable = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF, categories=["Cs"])
texts = st.text(st.one_of(st.characters(codec="utf-8", exclude_characters="\x00"), undecodable), max_size=40)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("process", LOADERS)
def test_generated_values_are_taken_as_meant_or_refused_naming_the_variable(
    fuzz: Callable[[str, str], Fuzz], process: str
) -> None:
    ones = {variable: fuzz(process, variable) for variable in sorted(setting_names(LOADERS[process][0]))}

    @settings(max_examples=150, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(variable=st.sampled_from(sorted(ones)), value=texts)
    def check(variable: str, value: str) -> None:
        assert ones[variable].problem(value) is None, (variable, value)

    check()
