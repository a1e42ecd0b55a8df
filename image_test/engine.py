"""A Docker engine for the test: the one that answers, else a dockerd of our own, stopped by its PID at the end with
the host's network settings as they were before it started."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from image_test.docker import PREFERRED_CLI, Docker, DockerError, find_cli

PACKAGES = ("docker.io", "debootstrap", "iptables")
RUN_DIR = Path("/run/comfyui-image-test")
MIN_FREE_BYTES = 20 * 10**9
IPTABLES_TABLES = ("filter", "nat")
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def install_tools() -> None:
    """Debian's docker.io (dockerd, containerd, runc and the 20.10 CLI that builds with BuildKit), debootstrap and
    iptables, when missing. Needs root, as the engine itself does."""
    missing = not PREFERRED_CLI.exists() or shutil.which("dockerd") is None or shutil.which("debootstrap") is None
    if not missing:
        return
    if os.geteuid() != 0:
        raise DockerError(f"Docker is not installed and this is not root: apt-get install {' '.join(PACKAGES)}")
    print(f"installing {' '.join(PACKAGES)} from apt", flush=True)
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt_env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                   check=True, env=apt_env, timeout=900, stdout=subprocess.DEVNULL)


@dataclass(frozen=True)
class HostNetwork:
    """What dockerd changes on the host when allowed to: ip_forward, the FORWARD policy, docker0, its chains."""

    ip_forward: str
    forward_policy: str | None
    links: frozenset[str]
    rules: frozenset[tuple[str, str]]  # (table, "-N chain" or "-A chain ...")

    @classmethod
    def now(cls) -> HostNetwork:
        rules: set[tuple[str, str]] = set()
        policy = None
        for table in IPTABLES_TABLES if shutil.which("iptables") else ():
            listing = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False)
            for line in listing.stdout.splitlines():
                if line.startswith("-P FORWARD ") and table == "filter":
                    policy = line.split()[2]
                elif line.startswith(("-N ", "-A ")):
                    rules.add((table, line))
        return cls(
            ip_forward=Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
            forward_policy=policy,
            links=frozenset(os.listdir("/sys/class/net")),
            rules=frozenset(rules),
        )

    def restore(self) -> list[str]:
        """Undo what dockerd changed since this snapshot (only its own names: other work on the machine may add
        rules or links meanwhile); returns what was undone."""
        now = HostNetwork.now()
        undone = []
        added = sorted(rule for rule in now.rules - self.rules if "DOCKER" in rule[1] or "docker0" in rule[1])
        for table, rule in added:  # rules first: a chain can be deleted only once nothing jumps to it
            if rule.startswith("-A "):
                subprocess.run(["iptables", "-t", table, "-D", *rule.split()[1:]], check=False)
                undone.append(f"iptables -t {table} {rule}")
        for table, rule in added:
            if rule.startswith("-N "):
                subprocess.run(["iptables", "-t", table, "-F", rule.split()[1]], check=False)
                subprocess.run(["iptables", "-t", table, "-X", rule.split()[1]], check=False)
                undone.append(f"iptables -t {table} {rule}")
        if self.forward_policy and now.forward_policy != self.forward_policy:
            subprocess.run(["iptables", "-P", "FORWARD", self.forward_policy], check=False)
            undone.append(f"FORWARD policy {now.forward_policy} -> {self.forward_policy}")
        if "docker0" in now.links - self.links:
            subprocess.run(["ip", "link", "delete", "docker0"], check=False, capture_output=True)
            undone.append("link docker0")
        if now.ip_forward != self.ip_forward:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward)
            undone.append(f"net.ipv4.ip_forward {now.ip_forward} -> {self.ip_forward}")
        return undone


@contextlib.contextmanager
def one_run_at_a_time() -> Iterator[None]:
    """Two runs would share one data root, one private socket and their container names, and the first to finish
    would stop the engine under the other."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / "image-test.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DockerError(f"another ./dev image-test runs on this machine (lock: {lock.name})") from None
        yield


@contextlib.contextmanager
def docker_engine(data_root: Path) -> Iterator[Docker]:
    """The engine the CLI already reaches, or our own dockerd on a private socket for the duration."""
    install_tools()
    cli = find_cli()
    assert cli is not None
    existing = Docker(cli)
    if existing.answers():
        print("using the Docker engine that answers", flush=True)
        yield existing
        return
    with _own_dockerd(cli, data_root) as docker:
        yield docker


@contextlib.contextmanager
def _own_dockerd(cli: str, data_root: Path) -> Iterator[Docker]:
    data_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(data_root).free
    if free < MIN_FREE_BYTES // 2:
        raise DockerError(
            f"{data_root} has {free / 1e9:.1f} GB free; building the image needs ~20 GB "
            "(set IMAGE_TEST_DATA_ROOT to a folder on a bigger disk)"
        )
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    socket = RUN_DIR / "docker.sock"
    log_path = data_root.parent / "dockerd.log"
    before = HostNetwork.now()
    # No bridge, no iptables, no ip_forward: builds and containers use the host's network (--network host),
    # so the engine has nothing to change on the host. Whatever it changes anyway is undone on the way out.
    argv = [
        "dockerd", "--data-root", str(data_root), "--exec-root", str(RUN_DIR / "exec"),
        "--pidfile", str(RUN_DIR / "dockerd.pid"), "--host", f"unix://{socket}",
        "--storage-driver", "overlay2", "--bridge", "none", "--iptables=false", "--ip-forward=false",
        "--ip-masq=false",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    docker = Docker(cli, host=f"unix://{socket}")
    try:
        _wait_until_up(docker, process, log_path)
        print(f"started dockerd (pid {process.pid}, data root {data_root}, log {log_path})", flush=True)
        yield docker
    finally:
        _stop(process)
        undone = before.restore()
        print(f"stopped dockerd (pid {process.pid}); host network restored: {', '.join(undone) or 'nothing changed'}",
              flush=True)


def _wait_until_up(docker: Docker, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while process.poll() is None and not docker.answers():
        if time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise DockerError("dockerd did not start:\n  " + "\n  ".join(tail))
        time.sleep(0.5)
    if process.poll() is not None:  # e.g. another dockerd holds the pid file or the data root
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise DockerError(f"dockerd exited with code {process.returncode}:\n  " + "\n  ".join(tail))


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
