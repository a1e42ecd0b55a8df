"""Build Dockerfile.serverless the way a user would, with only the switches this machine's network needs."""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from image_test.docker import Docker, DockerError

IMAGE = "comfyui-serverless-worker:image-test"
TORCH_INDEX = "https://download.pytorch.org/whl/cu128/torch/"
PYPI_INDEX = "https://pypi.org/simple"
CONTEXT_TARBALL = Path("vendor/comfyui.tar.gz")
BUILD_TIMEOUT_S = 45 * 60
# The recipe docs/container.md gives for custom nodes, built on the image under test.
CUSTOM_NODES_CONTEXT = Path(__file__).resolve().parent / "custom_nodes"
CUSTOM_NODES_IMAGE = f"{IMAGE}-custom-nodes"


@dataclass(frozen=True)
class Layer:
    size_bytes: int
    created_by: str

    @property
    def step(self) -> str:
        """The Dockerfile step, without the build arguments BuildKit records before a RUN's command."""
        step = re.sub(r"^RUN \|\d+ (?:[A-Z_]+=\S* )*(?:/bin/bash -o pipefail -c )?", "RUN ", self.created_by)
        return re.sub(r"\s+", " ", step).strip()


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    seconds: float
    size_bytes: int
    layers: list[Layer]
    steps: int  # Dockerfile steps BuildKit ran or took from its cache
    cached_steps: int


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10):  # noqa: S310 (a fixed https URL)
            return True
    except (urllib.error.URLError, OSError):
        return False


def build_image(docker: Docker, repo: Path, base: str, comfyui_src: Path | None, log_path: Path) -> BuiltImage:
    args = ["--build-arg", f"BASE_IMAGE={base}"]
    if not reachable(TORCH_INDEX):
        print("download.pytorch.org is unreachable: torch comes from PyPI (the same cu128 builds)", flush=True)
        args += ["--build-arg", f"TORCH_INDEX_URL={PYPI_INDEX}"]
    if comfyui_src is not None:
        args += ["--build-arg", "COMFYUI_SOURCE=context"]
    with _comfyui_in_context(repo, comfyui_src):
        started = time.monotonic()
        with open(log_path, "w") as log:
            code = subprocess.run(
                [docker.cli, "build", "--network", "host", "--progress", "plain", "-f", "Dockerfile.serverless",
                 *args, "-t", IMAGE, str(repo)],
                env=docker.env, stdout=log, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S, check=False,
            ).returncode
        seconds = time.monotonic() - started
    if code != 0:
        tail = "\n  ".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise DockerError(f"docker build failed (full log: {log_path}):\n  {tail}")
    size = int(docker.run("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    history = docker.run("history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", IMAGE)
    layers = [Layer(int(size_text), created_by.strip())
              for size_text, _, created_by in (line.partition("\t") for line in history.stdout.splitlines())]
    steps, cached = _step_counts(log_path.read_text(errors="replace"))
    return BuiltImage(IMAGE, seconds, size, layers, steps, cached)


def build_custom_nodes_image(docker: Docker, base_ref: str, log_path: Path) -> str:
    """image_test/custom_nodes/Dockerfile on top of ``base_ref``, as an operator adds custom nodes."""
    result = docker.run("build", "--network", "host", "--progress", "plain", "--build-arg", f"BASE_IMAGE={base_ref}",
                        "-t", CUSTOM_NODES_IMAGE, str(CUSTOM_NODES_CONTEXT), timeout_s=BUILD_TIMEOUT_S, check=False)
    log_path.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n  ".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise DockerError(f"docker build of {CUSTOM_NODES_CONTEXT}/Dockerfile failed (full log: {log_path}):\n  {tail}")
    return CUSTOM_NODES_IMAGE


def _step_counts(build_log: str) -> tuple[int, int]:
    """BuildKit's plain progress names each step "#N [stage i/n] ..." and prints "#N CACHED" for a cache hit."""
    steps = set(re.findall(r"^#(\d+) \[[^\]]+ \d+/\d+\]", build_log, re.MULTILINE))
    cached = set(re.findall(r"^#(\d+) CACHED$", build_log, re.MULTILINE))
    return len(steps), len(cached & steps)


class _comfyui_in_context:
    """Put the ComfyUI tarball where the Dockerfile's "context" source expects it, and take it away after,
    unless an identical one was already there."""

    def __init__(self, repo: Path, source: Path | None) -> None:
        self.target = repo / CONTEXT_TARBALL
        self.source = source
        self.placed = False

    def __enter__(self) -> None:
        if self.source is None:
            return
        if not self.source.is_file():
            raise DockerError(f"COMFYUI_SRC={self.source} is not a file (a ComfyUI release tarball is expected)")
        if self.target.exists():
            if filecmp.cmp(self.source, self.target, shallow=False):
                return
            raise DockerError(f"{self.target} exists and differs from COMFYUI_SRC={self.source}: remove one")
        self.target.parent.mkdir(exist_ok=True)
        shutil.copyfile(self.source, self.target)
        self.placed = True

    def __exit__(self, *exc_info: object) -> None:
        if self.placed:
            self.target.unlink(missing_ok=True)
            if self.target.parent.exists() and not any(self.target.parent.iterdir()):
                self.target.parent.rmdir()
