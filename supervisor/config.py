"""Supervisor configuration: how to start ComfyUI beside the worker. Flat, from the environment, no I/O."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from pydantic import AnyHttpUrl, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.settings import (
    QUEUE_TOKEN_ENV,
    QUEUE_WORKER_TOKEN_ENV,
    SCALER_CREDENTIALS,
    OptionalPath,
    RequiredPath,
    quoted,
    settings_from_env,
)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# ComfyUI's options COMFYUI_EXTRA_ARGS may not override, each with what to set instead. Appended last, they would
# win: ComfyUI's unauthenticated API on the network, a port the worker never looks at, or folders it never reads.
_LISTEN = ("the supervisor sets --listen (loopback only) and --port (COMFYUI_URL's port): drop it; to move ComfyUI's "
           "port, change COMFYUI_URL")
_SUPERVISOR_OPTIONS = {
    "--listen": _LISTEN,
    "--port": _LISTEN,
    "--output-directory": "the supervisor sets it, and the worker copies outputs from there: set COMFYUI_OUTPUT_DIR",
    "--input-directory": "the supervisor sets it, and the worker uploads job images there: set COMFYUI_INPUT_DIR",
    "--temp-directory": "the supervisor sets it under SCRATCH_DIR: set SCRATCH_DIR",
    "--user-directory": "the supervisor sets it under SCRATCH_DIR: set SCRATCH_DIR",
    "--base-directory": "it would move the image's custom nodes and models: set SCRATCH_DIR (ComfyUI's writable "
                        "folders), COMFYUI_OUTPUT_DIR, COMFYUI_INPUT_DIR or MODELS_DIR",
}
COMFYUI_HOST = "127.0.0.1"  # ComfyUI's --listen: loopback only
# Credentials ComfyUI and its custom nodes have no use for: the queue's (in the tokens, and maybe in the URL)
# and the scaler's (a RunPod pod carries an API key). Anything else (HF_TOKEN for a model downloader, say) is
# passed through.
QUEUE_CREDENTIALS = frozenset({QUEUE_TOKEN_ENV, QUEUE_WORKER_TOKEN_ENV, "QUEUE_MANAGER_URL"})
WITHHELD_FROM_COMFYUI = QUEUE_CREDENTIALS | SCALER_CREDENTIALS


def _serves_tls(extra_args: str) -> bool:
    """Whether COMFYUI_EXTRA_ARGS gives ComfyUI both a key and a certificate: then it serves HTTPS."""
    names = [arg.partition("=")[0] for arg in shlex.split(extra_args)]
    return all(any(len(name) > len("--tls-") and option.startswith(name) for name in names)
               for option in ("--tls-keyfile", "--tls-certfile"))


def comfyui_environment(environ: Mapping[str, str]) -> dict[str, str]:
    # In any case: the settings read queue_manager_token as QUEUE_MANAGER_TOKEN.
    return {name: value for name, value in environ.items() if name.upper() not in WITHHELD_FROM_COMFYUI}


class SupervisorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True, allow_inf_nan=False
    )

    comfyui_command: str = Field(default="python /opt/ComfyUI/main.py", validation_alias="COMFYUI_COMMAND")
    comfyui_extra_args: str = Field(default="", validation_alias="COMFYUI_EXTRA_ARGS")
    # The worker reads the same variable: ComfyUI listens where the worker looks for it.
    comfyui_url: AnyHttpUrl = Field(default="http://127.0.0.1:8188", validation_alias="COMFYUI_URL")
    comfyui_output_dir: OptionalPath = Field(default=None, validation_alias="COMFYUI_OUTPUT_DIR")
    # The files workflows load by name (LoadImage's image), e.g. a shared volume the participants' uploads land on.
    comfyui_input_dir: OptionalPath = Field(default=None, validation_alias="COMFYUI_INPUT_DIR")
    scratch_dir: RequiredPath = Field(default=Path("/data"), validation_alias="SCRATCH_DIR")
    models_dir: RequiredPath = Field(default=Path("/models"), validation_alias="MODELS_DIR")
    comfyui_stop_timeout_s: float = Field(default=3.0, ge=0, le=3600, validation_alias="COMFYUI_STOP_TIMEOUT_S")
    # Whether COMFYUI_COMMAND's program is looked up on PATH: not by the deploy, which judges a container's
    # settings on the operator's machine, where the image's programs are not installed.
    look_up_programs: ClassVar[bool] = True

    @field_validator("comfyui_command")
    @classmethod
    def _runnable_command(cls, value: str) -> str:
        argv = shlex.split(value)
        if not argv:
            raise ValueError("must name the program that starts ComfyUI")
        if cls.look_up_programs and shutil.which(argv[0]) is None:
            raise ValueError(f"program not found: {quoted(argv[0])}")
        return value

    @field_validator("comfyui_extra_args")
    @classmethod
    def _parsable_args(cls, value: str) -> str:
        args = shlex.split(value)  # raises ValueError (e.g. "No closing quotation"), reported under the variable
        for arg in args:
            name = arg.partition("=")[0]
            # argparse takes any unambiguous abbreviation (--lis) too.
            for option, instead in _SUPERVISOR_OPTIONS.items():
                if len(name) > 3 and option.startswith(name):
                    raise ValueError(f"{quoted(arg)}: {instead}")
        return value

    @field_validator("comfyui_url")
    @classmethod
    def _loopback_url(cls, value: AnyHttpUrl, info: ValidationInfo) -> AnyHttpUrl:
        if value.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"the supervisor runs ComfyUI on this machine; use http://127.0.0.1:<port>, not {value.host}"
            )
        if value.port == 0:
            raise ValueError("needs the port ComfyUI is to listen on, not port 0: the worker could not find it there")
        # The ComfyUI started here serves plain HTTP at the root: the worker would wait out COMFYUI_STARTUP_TIMEOUT_S.
        serves_tls = _serves_tls(info.data.get("comfyui_extra_args", ""))
        if value.scheme == "https" and not serves_tls:
            raise ValueError("the supervisor starts ComfyUI serving plain HTTP (HTTPS only with --tls-keyfile and "
                             "--tls-certfile in COMFYUI_EXTRA_ARGS): use http://, not https://")
        if value.scheme == "http" and serves_tls:
            raise ValueError("COMFYUI_EXTRA_ARGS gives ComfyUI --tls-keyfile and --tls-certfile, so it serves HTTPS: "
                             "use https://, not http://")
        if (value.path or "/") != "/":
            raise ValueError(f"ComfyUI answers at the root, not at {value.path}: drop the path")
        if value.query is not None or value.fragment is not None:
            raise ValueError("ComfyUI answers at the root: drop the query or fragment (after ? or #)")
        return value

    @property
    def comfyui_port(self) -> int:
        assert self.comfyui_url.port is not None  # http URLs always carry one (80 when omitted)
        return self.comfyui_url.port

    @property
    def comfyui_dir(self) -> Path:
        """ComfyUI's writable directories (input unless set, temp, user) and the model paths file it reads."""
        return self.scratch_dir / "comfyui"

    @property
    def output_dir(self) -> Path:
        return self.comfyui_output_dir or self.comfyui_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.comfyui_input_dir or self.comfyui_dir / "input"

    @property
    def temp_dir(self) -> Path:
        """Where ComfyUI writes previews: it appends "temp" to --temp-directory."""
        return self.comfyui_dir / "temp"

    @property
    def model_paths_file(self) -> Path:
        return self.comfyui_dir / "extra_model_paths.yaml"

    def comfyui_argv(self) -> list[str]:
        return [
            *shlex.split(self.comfyui_command),
            "--listen", COMFYUI_HOST,
            "--port", str(self.comfyui_port),
            "--output-directory", str(self.output_dir),
            "--input-directory", str(self.input_dir),
            "--temp-directory", str(self.comfyui_dir),  # ComfyUI appends "temp" itself
            "--user-directory", str(self.comfyui_dir / "user"),
            # ComfyUI keeps its database in its install folder otherwise, read-only in the image.
            "--database-url", f"sqlite:///{self.comfyui_dir / 'user' / 'comfyui.db'}",
            "--extra-model-paths-config", str(self.model_paths_file),
            *shlex.split(self.comfyui_extra_args),
        ]


def load_supervisor_settings(**overrides: object) -> SupervisorSettings:
    return settings_from_env(SupervisorSettings, "supervisor", **overrides)
