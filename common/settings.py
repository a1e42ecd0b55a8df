"""Settings from the environment, and their errors as one line per bad variable."""

from __future__ import annotations

import contextlib
import os
import re
import reprlib
import socket
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import annotated_types
import structlog
from dotenv import dotenv_values
from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict
from rapidfuzz.distance import OSA

from common.limits import QUEUE_HEADS
from common.logs import MIN_SECRET_CHARS

AnySettings = TypeVar("AnySettings", bound=BaseSettings)
log = structlog.get_logger()

# The scaler's own credentials: its cloud accounts and its alert webhook. No worker, and no ComfyUI, has use for
# them: the local backend's workers and the supervisor's ComfyUI are started without them.
SCALER_CREDENTIALS = frozenset({"VERDA_CLIENT_ID", "VERDA_CLIENT_SECRET", "RUNPOD_API_KEY", "SCALER_ALERT_WEBHOOK_URL"})
# The variables of the queue manager's two tokens: the one every client sends (a worker included), and the one the
# queue manager alone reads, to tell its workers' token from the participants'.
QUEUE_TOKEN_ENV = "QUEUE_MANAGER_TOKEN"  # noqa: S105 - a variable's name, not a secret
QUEUE_WORKER_TOKEN_ENV = "QUEUE_MANAGER_WORKER_TOKEN"  # noqa: S105 - a variable's name, not a secret


# The queue token travels as "Authorization: Bearer <token>", a header's value, which the queue manager reads up to
# QUEUE_HEADS.max_field_bytes: a longer token had every request answered 400.
MAX_QUEUE_TOKEN_CHARS = QUEUE_HEADS.max_field_bytes - len("Bearer ")


_QUOTE = reprlib.Repr()
_QUOTE.maxstring = 80


def quoted(value: str) -> str:
    """``value`` as an error message may quote it: cut in the middle past 80 characters, and each byte the environment
    could not decode escaped (a lone surrogate, which pydantic cannot carry in an error: UnicodeEncodeError)."""
    return _QUOTE.repr(value)


def secret_length_problem(secret: str) -> str | None:
    """Why ``secret`` is too short to be a credential, or None: the log scrubber masks no value shorter than
    MIN_SECRET_CHARS (masking "e" garbled every line), and such a credential would be printed in clear."""
    if len(secret) < MIN_SECRET_CHARS:
        return (f"is {len(secret)} characters; a credential needs at least {MIN_SECRET_CHARS} (shorter, the logs "
                "could not mask it without garbling every line): set the real one")
    return None


def sendable_problem(value: str) -> str | None:
    """Why ``value``, a credential, cannot be sent as is, or None: not ASCII, an HTTP client cannot send it (bytes
    the environment could not decode too); with a space or a pasted newline at either end, the peer never matches it."""
    if not value.isascii() or not value.isprintable() or value != value.strip():
        return "must be printable ASCII with no space at either end"
    return None


def queue_token_problem(token: str) -> str | None:
    """Why ``token`` cannot work as the queue manager's bearer token, or None. Not ASCII, an HTTP client cannot
    send it (every request failed); with a space at either end the queue manager, which strips what it is sent,
    never matched it (every request 401); too long, the queue manager refuses the header (every request 400); too
    short, the logs cannot mask it (secret_length_problem)."""
    if problem := sendable_problem(token):
        return f"{problem}: it travels in an HTTP header"
    if token and (problem := secret_length_problem(token)):  # "" is no token: unset
        return problem
    if len(token) > MAX_QUEUE_TOKEN_CHARS:
        return (f"is {len(token)} characters; at most {MAX_QUEUE_TOKEN_CHARS} fit the Authorization header the "
                f"queue manager reads ({QUEUE_HEADS.max_field_bytes} bytes)")
    return None


def _usable_queue_token(value: SecretStr) -> SecretStr:
    problem = queue_token_problem(value.get_secret_value())
    if problem:
        raise ValueError(problem)
    return value


QueueToken = Annotated[SecretStr, AfterValidator(_usable_queue_token)]


def _blank_is_unset(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


def _blank_is_refused(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise ValueError("is empty: name a folder, or leave the variable unset for the default")
    return value


def _no_space_at_either_end(consequence: str) -> BeforeValidator:
    """A value with a space or a line break at either end (a blank one is left to the validator run before)."""

    def check(value: object) -> object:
        if isinstance(value, str) and value != value.strip():
            raise ValueError(f"has a space or a line break at either end: {consequence}; remove it")
        return value

    return BeforeValidator(check)


_ANOTHER_FOLDER = _no_space_at_either_end("it would name another folder or file than the one meant (made beside it, "
                                          "empty)")


# Path("") is the working directory, which a blank variable never means: files would be written, or emptied at
# every start, wherever the process happens to run. A blank optional path is unset; a blank required one, refused.
# "/outputs " or "/outputs\r" (an env file saved on Windows) is another folder: the results went to the container's
# own disk, not the volume at /outputs.
OptionalPath = Annotated[Path | None, _ANOTHER_FOLDER, BeforeValidator(_blank_is_unset)]
RequiredPath = Annotated[Path, _ANOTHER_FOLDER, BeforeValidator(_blank_is_refused)]


def _bindable(host: str) -> str:
    """A name or address a server can listen on, looked up as the bind will; one that cannot be was found only when
    the server started (the worker's health server, the scaler's /metrics: a run that exited 1). ASCII only: the
    lookup reads other scripts' digits as ASCII ones (full-width 127.0.0.1 listened on loopback, a double-struck 1
    on 0.0.0.1)."""
    if not host.isascii():
        raise ValueError(f"cannot listen on {quoted(host)}: not an ASCII name or address")
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"cannot listen on {quoted(host)}: {exc}") from None
    return host


BindHost = Annotated[str, AfterValidator(_bindable)]
# A secret set blank is unset, as a shell's `VAR=` or compose's `${VAR:-}` leaves it.
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_blank_is_unset)]
# ... a text too (a name, an id): one with a space or a line break at either end never matches its account's (a
# VERDA_CLIENT_ID pasted with its newline: every login 401), refused.
OptionalText = Annotated[
    str | None, _no_space_at_either_end("the peer would match another id"), BeforeValidator(_blank_is_unset)
]


def _usable_credential(value: SecretStr | None) -> SecretStr | None:
    secret = value.get_secret_value() if value is not None else ""
    if value is not None and (problem := sendable_problem(secret) or secret_length_problem(secret)):
        raise ValueError(problem)
    return value


# A credential the logs mask (a cloud account's secret, an API key): blank is unset; too short, or one no request can
# carry as is (a pasted newline: every RunPod request failed "Illegal header value", every Verda login 401), refused.
Credential = Annotated[SecretStr | None, BeforeValidator(_blank_is_unset), AfterValidator(_usable_credential)]


class LogSettings(BaseSettings):
    """LOG_FORMAT and LOG_LEVEL, read the same by every process (common.logs.configure_logging takes them)."""

    model_config = SettingsConfigDict(extra="ignore")

    log_format: str = Field(default="auto", pattern="^(auto|json|console)$", validation_alias="LOG_FORMAT")
    log_level: str = Field(default="info", pattern="(?i)^(debug|info|warning|error)$", validation_alias="LOG_LEVEL")


class ConfigError(Exception):
    """Every bad variable, one line each, ready to print."""


def env_name(settings_cls: type[BaseSettings], field_name: str) -> str:
    """The environment variable a settings field is read from (the first one, when there are several)."""
    field = settings_cls.model_fields.get(field_name)
    alias = field.validation_alias if field else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return alias if isinstance(alias, str) else field_name.upper()


def setting_names_of(settings_cls: type[BaseSettings], field_name: str) -> set[str]:
    """The environment variables one settings field is read from."""
    alias = settings_cls.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        return {str(choice) for choice in alias.choices}
    return {env_name(settings_cls, field_name)}


def setting_names(settings_cls: type[BaseSettings]) -> set[str]:
    """Every environment variable the settings read, each alias included."""
    return set().union(*(setting_names_of(settings_cls, name) for name in settings_cls.model_fields))


def misspelling_of(variable: str, settings: set[str]) -> str | None:
    """The setting `variable` is one typo away from (two in a name of 10 or more letters), unless it is one."""
    name = variable.upper()
    if name in settings:
        return None
    near = [setting for setting in sorted(settings) if abs(len(setting) - len(name)) <= 2
            and OSA.distance(name, setting) <= (2 if len(setting) >= 10 else 1)]
    return near[0] if near else None


def misspelt_variables(*settings_classes: type[BaseSettings]) -> list[tuple[str, str]]:
    """(variable, the setting it is a typo of) for each variable of the environment, or of the .env file the
    settings read, that none of ``settings_classes`` reads but one typo away from one of their settings (a
    process reading several classes, as the container's supervisor does, passes them all). Such a variable is
    ignored: SCALER_MAX_REPLICA=3 left the scaler at 5, SERVERLESS_MOD=true never exited."""
    present = set(os.environ)
    for env_file in {settings_cls.model_config.get("env_file") for settings_cls in settings_classes}:
        if isinstance(env_file, str) and Path(env_file).is_file():
            with contextlib.suppress(OSError, UnicodeDecodeError):  # settings_from_env says what is wrong with it
                present |= set(dotenv_values(env_file, encoding="utf-8"))
    return misspelt_names(present, *settings_classes)


def misspelt_names(variables: Iterable[str], *settings_classes: type[BaseSettings]) -> list[tuple[str, str]]:
    """(variable, the setting it is a typo of) for each of ``variables`` that none of ``settings_classes`` reads
    but one typo away from one of their settings, in name order. The deploy checks a container's environment
    with it; misspelt_variables, this process's."""
    settings = set().union(*(setting_names(settings_cls) for settings_cls in settings_classes))
    found = [(variable, misspelling_of(variable, settings)) for variable in sorted(set(variables))]
    return [(variable, setting) for variable, setting in found if setting is not None]


def warn_misspelt_variables(*settings_classes: type[BaseSettings]) -> None:
    """One warning per variable misspelt_variables finds, once logging is set up."""
    for variable, setting in misspelt_variables(*settings_classes):
        log.warning("Variable ignored: no setting has its name", variable=variable, did_you_mean=setting)


def settings_from_env(
    settings_cls: type[AnySettings], title: str, *, trust_store: bool = False, **overrides: object
) -> AnySettings:
    """Build settings from the environment; raise ConfigError naming every bad variable and why, and every
    variable that looks like a misspelt setting (the usual cause of a required one missing). With
    ``trust_store`` (a process that makes TLS connections), SSL_CERT_FILE and SSL_CERT_DIR too."""
    problems = trust_store_problems(os.environ) if trust_store else []
    try:
        settings = settings_cls(**overrides)
    except ValidationError as exc:
        problems = _problem_lines(settings_cls, exc) + problems
        problems += [f"{variable}: no setting has this name (ignored): did you mean {setting}?"
                     for variable, setting in misspelt_variables(settings_cls)]
    except UnicodeDecodeError as exc:  # python-dotenv reading the .env file, saved as UTF-16 say
        raise ConfigError(
            f"Invalid {title} configuration:\n"
            f"  .env: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:  # the .env file unreadable (another user's, mode 0600): a traceback before
        raise ConfigError(
            f"Invalid {title} configuration:\n  {exc.filename or '.env'}: cannot be read ({exc.strerror or exc})"
        ) from None
    if problems:
        raise ConfigError(f"Invalid {title} configuration:\n" + "\n".join(f"  {problem}" for problem in problems))
    return settings


def trust_store_problems(environ: Mapping[str, str]) -> list[str]:
    """What is wrong with the CA certificates httpx trusts in place of its own bundle: SSL_CERT_FILE, else
    SSL_CERT_DIR. A file it cannot load ended the process at its first client in a traceback; a folder that does
    not exist, or holds no certificate OpenSSL can find, failed every TLS connection ("certificate verify failed"),
    for as long as the process ran."""
    cafile, capath = environ.get("SSL_CERT_FILE"), environ.get("SSL_CERT_DIR")
    fix = "point it at CA certificates in PEM, or unset it to trust the usual ones"
    if cafile:
        try:
            ssl.create_default_context(cafile=cafile)
        except ssl.SSLError as exc:
            return [f"SSL_CERT_FILE: {cafile} holds no CA certificate ({exc.reason}): {fix}"]
        except OSError as exc:
            return [f"SSL_CERT_FILE: {cafile} cannot be read ({exc.strerror or exc}): {fix}"]
    elif capath and not any(map(_holds_hashed_certificates, capath.split(os.pathsep))):
        return [f"SSL_CERT_DIR: {capath} is no folder of certificates named by their hash (<hash>.0, as `openssl "
                f"rehash` names them): every TLS connection would fail; {fix}"]
    return []


# OpenSSL finds a certificate of SSL_CERT_DIR (a folder, or several separated by ":") only by the name `openssl rehash`
# gives it, its subject's hash: a folder of my-ca.pem failed every TLS connection ("certificate verify failed").
_HASHED_CERTIFICATE = re.compile(r"[0-9a-f]{8}\.[0-9]+")


def _holds_hashed_certificates(folder: str) -> bool:
    try:
        return any(_HASHED_CERTIFICATE.fullmatch(name) for name in os.listdir(folder))
    except OSError:  # no such folder, not a folder, unreadable
        return False


def problems_in(settings_cls: type[BaseSettings], values: Mapping[str, str]) -> list[str]:
    """What ``settings_cls`` would refuse in ``values`` (variable -> text) alone, a line each: neither this
    process's environment nor a .env file is read. The deploy checks the container's environment with it."""

    class ValuesOnly(settings_cls):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any, **_: Any) -> tuple:
            return (init_settings,)

    try:
        ValuesOnly(**values)
    except ValidationError as exc:
        return _problem_lines(settings_cls, exc)
    return []


_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _field_read_as(settings_cls: type[BaseSettings], name: str) -> FieldInfo | None:
    """The field named ``name``, or read from the variable ``name``."""
    return settings_cls.model_fields.get(name) or next(
        (field for field_name, field in settings_cls.model_fields.items()
         if name in setting_names_of(settings_cls, field_name)), None)


def allowed_range(settings_cls: type[BaseSettings], name: str) -> tuple[float | None, float | None]:
    """(lowest, highest) a number setting takes, from its field's ge/gt and le/lt (None: no bound on that side).
    ``name``: the field's, or a variable it is read from."""
    field = _field_read_as(settings_cls, name)
    low = high = None
    for bound in field.metadata if field else ():
        if isinstance(bound, annotated_types.Ge | annotated_types.Gt):
            low = bound.ge if isinstance(bound, annotated_types.Ge) else bound.gt
        elif isinstance(bound, annotated_types.Le | annotated_types.Lt):
            high = bound.le if isinstance(bound, annotated_types.Le) else bound.lt
    return low, high


_SIDE_WORDS = {annotated_types.Ge: "from {:g}", annotated_types.Gt: "above {:g}", annotated_types.Le: "to {:g}",
               annotated_types.Lt: "below {:g}"}


def _range_words(settings_cls: type[BaseSettings], name: str) -> str:
    field = _field_read_as(settings_cls, name)
    extra = field.json_schema_extra if field else None
    if isinstance(extra, dict) and isinstance(allowed := extra.get("allowed"), str):  # not one range: said in words
        return f" (allowed: {allowed})"
    sides = [_SIDE_WORDS[type(bound)].format(getattr(bound, type(bound).__name__.lower()))
             for bound in (field.metadata if field else ()) if type(bound) in _SIDE_WORDS]
    return f" (allowed: {', '.join(sides)})" if len(sides) == 2 else ""


def _problem_lines(settings_cls: type[BaseSettings], error: ValidationError) -> list[str]:
    """A line per problem, named by its variable (a model-level check reports several problems at once); a number
    out of its bounds says the whole range, not the one side it crossed."""
    lines = []
    for problem in error.errors():
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["loc"]:
            field_name = str(problem["loc"][0])
            if problem["type"] in _BOUND_ERRORS:
                message += _range_words(settings_cls, field_name)
            lines.append(f"{env_name(settings_cls, field_name)}: {message}")
        else:
            lines += message.split("; ")
    return lines
