"""Settings from the environment, and their errors as one line per bad variable."""

from __future__ import annotations

from typing import TypeVar

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

AnySettings = TypeVar("AnySettings", bound=BaseSettings)


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


def settings_from_env(settings_cls: type[AnySettings], title: str, **overrides: object) -> AnySettings:
    """Build settings from the environment; raise ConfigError naming every bad variable and why."""
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["loc"]:
                lines.append(f"  {env_name(settings_cls, str(error['loc'][0]))}: {message}")
            else:  # a model-level check reports several problems at once
                lines += [f"  {problem}" for problem in message.split("; ")]
        raise ConfigError(f"Invalid {title} configuration:\n" + "\n".join(lines)) from None
    except UnicodeDecodeError as exc:  # python-dotenv reading the .env file, saved as UTF-16 say
        raise ConfigError(
            f"Invalid {title} configuration:\n"
            f"  .env: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
