"""./dev image-test: build Dockerfile.serverless, run the image as Verda would, check it, clean up.

Settings (environment):
  COMFYUI_SRC           the ComfyUI release tarball to build from (default: the one committed in
                        image_test/comfyui/), or "github" to download the release as the Dockerfile does
  IMAGE_TEST_DATA_ROOT  the Docker data root when the test starts its own dockerd (default
                        /var/lib/comfyui-image-test/docker; ~20 GB free needed; kept for warm rebuilds)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from image_test.base import prepare_base
from image_test.benchmarks import write_benchmarks
from image_test.build import BuiltImage, build_image
from image_test.checks import run_checks
from image_test.docker import Docker, DockerError
from image_test.engine import docker_engine, one_run_at_a_time

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = Path("/var/lib/comfyui-image-test/docker")
BUILD_CACHE_KEEP = "12GB"
# The ComfyUI the image is tested with, committed so the test needs no GitHub (image_test/comfyui/README.md).
PINNED_COMFYUI = REPO / "image_test" / "comfyui" / "comfyui-0.8.0.tar.gz"


def _comfyui_source(setting: str) -> Path | None:
    """COMFYUI_SRC: a tarball's path, "github" (None: the Dockerfile downloads it), or unset: the pinned one."""
    if setting == "github":
        return None
    return Path(setting) if setting else PINNED_COMFYUI


def parse_args(argv: list[str]) -> argparse.Namespace:
    """No options: --help prints what the test does and exits 0, anything else exits 2, before any of it starts
    (it needs root, may start a dockerd and changes the host's network rules while it runs)."""
    parser = argparse.ArgumentParser(
        prog="./dev image-test", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parse_args(sys.argv[1:] if argv is None else argv)
    # A SIGTERM (CI's time limit, a Ctrl-C's big brother) unwinds like an exception, so dockerd is still stopped
    # and the host network restored on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    data_root = Path(os.environ.get("IMAGE_TEST_DATA_ROOT") or DEFAULT_DATA_ROOT)
    comfyui_src = _comfyui_source(os.environ.get("COMFYUI_SRC", ""))
    started = time.monotonic()
    workdir = data_root.parent / "last-run"  # build and container logs stay here until the next run
    try:
        with one_run_at_a_time(), docker_engine(data_root) as docker:
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            base, origin = prepare_base(docker, REPO / "Dockerfile.serverless", workdir)
            print(f"base image: {origin}", flush=True)
            print(f"ComfyUI source: {comfyui_src or 'GitHub release tarball'}", flush=True)
            image = build_image(docker, REPO, base, comfyui_src, workdir / "build.log")
            _print_image(image)
            report = run_checks(docker, image.ref, workdir)
            _tidy(docker)
    except DockerError as exc:
        print(f"image-test FAILED: {exc}", file=sys.stderr, flush=True)
        if comfyui_src is None and "github.com" in str(exc):
            print("GitHub unreachable? Leave COMFYUI_SRC unset to build from the committed tarball.", file=sys.stderr)
        return 1
    ready_s = report.figures.get("run_to_ready_s")
    print(f"build {image.seconds:.0f} s ({image.cached_steps} of {image.steps} steps cached), "
          f"image {image.size_bytes / 1e9:.2f} GB, docker run -> /ready "
          f"{f'{ready_s:.1f} s' if ready_s else 'never'}, whole test {time.monotonic() - started:.0f} s", flush=True)
    if not report.failed:
        write_benchmarks(REPO / "docs" / "benchmarks.md", image, origin, report)
    passed = len(report.results) - report.failed
    print(f"{passed} passed, {report.failed} failed", flush=True)
    return 0 if report.failed == 0 else 1


def _print_image(image: BuiltImage) -> None:
    print(f"built {image.ref} in {image.seconds:.0f} s: {image.size_bytes / 1e9:.2f} GB", flush=True)
    for layer in image.layers:
        if layer.size_bytes:
            print(f"  {layer.size_bytes / 1e6:10.1f} MB  {layer.step[:100]}", flush=True)


def _tidy(docker: Docker) -> None:
    """Keep the data root bounded across runs: the current image and build cache stay for a warm rebuild.
    Housekeeping only: a slow prune is reported, never a failure of the test."""
    try:
        docker.run("image", "prune", "--force", check=False, timeout_s=600)
        docker.run("builder", "prune", "--force", "--keep-storage", BUILD_CACHE_KEEP, check=False, timeout_s=600)
    except DockerError as exc:
        print(f"note: pruning the Docker data root: {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
