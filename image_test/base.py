"""The base image to build on: the Dockerfile's official default when it can be pulled, else a minimal Debian
bookworm made with debootstrap from this machine's apt mirror. Either way the host's CA certificates go in, so pip
inside the build trusts a TLS-intercepting proxy the host trusts."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from image_test.docker import Docker, DockerError

DEBIAN_ROOT = "local/debian-bookworm:minbase"
TEST_BASE = "local/comfyui-test-base:latest"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_EXTRA_CERTS = Path("/usr/local/share/ca-certificates")
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")

CERTS_DOCKERFILE = """\
ARG ROOT
FROM ${ROOT}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY extra/ /usr/local/share/ca-certificates/
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
"""


def official_base(dockerfile: Path) -> str:
    match = re.search(r"^ARG BASE_IMAGE=(\S+)", dockerfile.read_text(), re.MULTILINE)
    if match is None:
        raise DockerError(f"{dockerfile} has no 'ARG BASE_IMAGE=<default>' line")
    return match.group(1)


def prepare_base(docker: Docker, dockerfile: Path, workdir: Path) -> tuple[str, str]:
    """(image to pass as BASE_IMAGE, where its root came from)."""
    official = official_base(dockerfile)
    if docker.run("pull", official, timeout_s=1200, check=False).returncode == 0:
        root, origin = official, f"{official} (pulled)"
    else:
        print(f"{official} cannot be pulled here: using a debootstrap Debian bookworm base", flush=True)
        if not docker.has_image(DEBIAN_ROOT):
            _import_debian_root(docker, workdir)
        root, origin = DEBIAN_ROOT, f"Debian bookworm minbase from {apt_mirror()} (debootstrap)"
    _add_host_certificates(docker, root, workdir)
    return TEST_BASE, origin


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses."""
    candidates = [APT_SOURCES, Path("/etc/apt/sources.list")]
    for path in candidates:
        if not path.exists():
            continue
        match = re.search(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+/debian)\s", path.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return DEFAULT_MIRROR


def _remove_rootfs(rootfs: Path) -> None:
    """debootstrap mounts /proc (and may mount /sys) inside the tree while it works: unmount before deleting."""
    mounted = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount_point in sorted((m for m in mounted if m.startswith(f"{rootfs}/")), reverse=True):
        subprocess.run(["umount", "--lazy", mount_point], check=False)
    shutil.rmtree(rootfs, ignore_errors=True)


def _import_debian_root(docker: Docker, workdir: Path) -> None:
    rootfs = workdir / "rootfs"
    _remove_rootfs(rootfs)
    try:
        debootstrap = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), apt_mirror()],
            check=False, capture_output=True, timeout=900,
        )
        if debootstrap.returncode != 0:
            raise DockerError(f"debootstrap failed: {debootstrap.stderr.decode(errors='replace')[-2000:]}")
        if APT_SOURCES.exists():  # the mirror plus bookworm-updates and -security, as on the host
            shutil.copy(APT_SOURCES, rootfs / "etc/apt/sources.list.d/debian.sources")
            (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            subprocess.run(
                [docker.cli, "import", "--change",
                 "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "-", DEBIAN_ROOT],
                stdin=tar.stdout, env=docker.env, check=True, capture_output=True, timeout=600,
            )
        finally:
            tar.wait()
    finally:
        _remove_rootfs(rootfs)


def _add_host_certificates(docker: Docker, root: str, workdir: Path) -> None:
    with tempfile.TemporaryDirectory(dir=workdir) as name:
        context = Path(name)
        (context / "Dockerfile").write_text(CERTS_DOCKERFILE)
        shutil.copy(HOST_BUNDLE, context / "ca-certificates.crt")
        extra = context / "extra"
        extra.mkdir()
        for cert in HOST_EXTRA_CERTS.glob("*.crt"):
            shutil.copy(cert, extra / cert.name)
        docker.run("build", "--network", "host", "--build-arg", f"ROOT={root}", "-t", TEST_BASE, str(context),
                   timeout_s=600)
