"""Run the built image the way Verda does and check what a user relies on. Every check reports PASS or FAIL with
what it saw; none stops the others unless it makes them meaningless."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from demo.replicas import free_loopback_port
from image_test.build import build_custom_nodes_image
from image_test.docker import Docker, DockerError
from standins.comfyui_nodes import Image, image_size, png_bytes

IMAGE_UID = 10001
WORKFLOWS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "workflows"
# The target is 2 s; the check allows HEALTH_MARGIN_S more, for a 2-core runner shared with other test suites
# (measured 1.75, 2.02 and 2.70 s there). What it must catch is /health waiting for ComfyUI (~30 s).
HEALTH_WITHIN_S = 2.0
HEALTH_MARGIN_S = 3.0
READY_TIMEOUT_S = 300
JOBS_TIMEOUT_S = 300
DOCKER_HEALTHY_TIMEOUT_S = 90
DOCKER_UNHEALTHY_TIMEOUT_S = 30
STOP_WITHIN_S = 30
SERVERLESS_EXIT_TIMEOUT_S = 300
JOB_USERS = ("alice", "bob", "alice")
COMFYUI_SCRATCH = "/data/comfyui"  # SCRATCH_DIR/comfyui: ComfyUI's output, temp and input (supervisor/config.py)


@dataclass
class Report:
    results: list[tuple[str, bool, str]] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    def check(self, name: str, passed: bool, detail: str) -> bool:
        self.results.append((name, passed, detail))
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}", flush=True)
        return passed

    def run(self, step: Callable[..., None], *args: Any) -> None:
        """``step(*args, self)``, which reports its own checks. One that raises (a peer that went away, a docker
        command that failed) is a FAIL line naming it, and the checks after it still run."""
        try:
            step(*args, self)
        except Exception as exc:
            self.check(step.__name__.strip("_").replace("_", " "), False, f"{type(exc).__name__}: {exc}")

    @property
    def failed(self) -> int:
        return sum(not passed for _, passed, _ in self.results)


class QueueManager:
    """`comfy-serverless queue` on the host's loopback, as a user runs it."""

    def __init__(self, workdir: Path, start_timeout_s: float = 30) -> None:
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = shutil.which("comfy-serverless") or "comfy-serverless"
        self.process = subprocess.Popen(
            [command, "queue", "--host", "127.0.0.1", "--port", str(self.port), "--db", str(workdir / "queue.db")],
            stdout=open(workdir / "queue-manager.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)
        try:
            wait_until(lambda: self._answers(), start_timeout_s, "the queue manager to answer")
        except BaseException:  # no one else holds the process to stop it
            self.close()
            raise

    def _answers(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return self.http.get("/health").status_code == 200
        return False

    def submit(self, user_id: str, workflow: dict[str, Any], metadata: dict[str, Any] | None = None) -> str:
        body = {"user_id": user_id, "workflow": workflow, "metadata": metadata or {}}
        answer = self.http.post("/api/jobs", json=body)
        answer.raise_for_status()
        return answer.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"/api/jobs/{job_id}").raise_for_status().json()

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"no {what} within {timeout_s:.0f} s")


def get_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


@contextlib.contextmanager
def outputs_dir(workdir: Path, name: str, uid: int) -> Iterator[Path]:
    path = workdir / name
    path.mkdir(mode=0o755)
    os.chown(path, uid, uid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Container:
    """One `docker run` of the image: host network, CPU ComfyUI, outputs from the host."""

    def __init__(self, docker: Docker, image: str, name: str, queue_url: str, outputs: Path,
                 extra_env: dict[str, str] | None = None, extra_volumes: tuple[str, ...] = ()) -> None:
        self.docker, self.image, self.name = docker, image, name
        self.health_port = free_loopback_port()
        self.env = {
            "QUEUE_MANAGER_URL": queue_url,
            "COMFYUI_EXTRA_ARGS": "--cpu",
            "COMFYUI_URL": f"http://127.0.0.1:{free_loopback_port()}",
            "HEALTH_HOST": "127.0.0.1",
            "HEALTH_PORT": str(self.health_port),
            "WORKER_ID": name,
            **(extra_env or {}),
        }
        self.outputs = outputs
        self.volumes = (f"{outputs}:/outputs", *extra_volumes)
        self.started_at = 0.0

    def argv(self) -> list[str]:
        env = [arg for key, value in self.env.items() for arg in ("--env", f"{key}={value}")]
        volumes = [arg for volume in self.volumes for arg in ("--volume", volume)]
        return ["run", "--name", self.name, "--network", "host", *env, *volumes, self.image]

    def start(self) -> float:
        """Start detached; seconds the `docker run` call took."""
        self.docker.remove_container(self.name)
        self.started_at = time.monotonic()
        argv = self.argv()
        self.docker.run(*argv[:1], "--detach", *argv[1:], timeout_s=60)
        return time.monotonic() - self.started_at

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.health_port}{path}"

    def logs(self) -> str:
        result = self.docker.run("logs", self.name, check=False, timeout_s=30)
        return result.stdout + result.stderr

    def state(self) -> dict[str, Any]:
        return self.docker.inspect(self.name)["State"]

    def save_logs(self, workdir: Path) -> Path:
        path = workdir / f"{self.name}.log"
        path.write_text(self.logs())
        return path

    def remove(self) -> None:
        self.docker.remove_container(self.name)


def load_workflow(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / name).read_text())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_checks(docker: Docker, image: str, workdir: Path) -> Report:
    report = Report()
    report.run(_no_apt_cache, docker, image)
    report.run(_docker_unhealthy, docker, image)
    try:
        queue = QueueManager(workdir)
    except Exception as exc:  # every check below submits jobs to it
        report.check("the queue manager answers", False, f"{type(exc).__name__}: {exc}")
        return report
    try:
        with outputs_dir(workdir, "outputs", IMAGE_UID) as outputs:
            report.run(_serve_jobs, docker, image, workdir, queue, outputs)
        with outputs_dir(workdir, "outputs-root-owned", 0) as root_owned:
            report.run(_root_owned_outputs, docker, image, queue, root_owned)
        with outputs_dir(workdir, "outputs-serverless", IMAGE_UID) as outputs:
            report.run(_serverless_idle_exit, docker, image, workdir, queue, outputs)
    finally:
        queue.close()
    return report


def _no_apt_cache(docker: Docker, image: str, report: Report) -> None:
    """apt's package cache and downloaded packages are no use at run time (a derived image runs apt-get update)."""
    name = "no apt cache in the image (/var/cache/apt: *.bin, *.deb)"
    listing = docker.run("run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "find", image,
                         "/var/cache/apt", "-type", "f", "(", "-name", "*.bin", "-o", "-name", "*.deb", ")",
                         "-printf", "%s %p\n", check=False, timeout_s=60)  # fmt: skip
    found = [line.split(" ", 1) for line in listing.stdout.splitlines()]
    size = sum(int(bytes_text) for bytes_text, _ in found)
    report.check(name, listing.returncode == 0 and not found,
                 f"find exited {listing.returncode}; {len(found)} files, {size / 1e6:.1f} MB"
                 + (f", e.g. {found[0][1]}" if found else ""))


def _serve_jobs(docker: Docker, image: str, workdir: Path, queue: QueueManager, outputs: Path,
                report: Report) -> None:
    jobs = {queue.submit(user, _quick_workflow(colour)): user for colour, user in enumerate(JOB_USERS)}
    invalid = queue.submit("mallory", load_workflow("invalid_unknown_node.json"))
    carried = queue.submit("dana", _load_image_workflow(CARRIED_NAME), {"images": [
        {"name": CARRIED_NAME, "image": base64.b64encode(_png(*CARRIED_SIZE)).decode()}
    ]})  # fmt: skip
    container = Container(docker, image, "comfyui-image-test", queue.url, outputs)
    try:
        run_s = container.start()
        try:
            wait_until(lambda: get_status(container.url("/health")) == 200, 30, "/health 200", interval_s=0.05)
            health_s = time.monotonic() - container.started_at
            report.figures["start_to_health_s"] = health_s - run_s
            report.check("/health 200 within 2 s of start", health_s - run_s <= HEALTH_WITHIN_S + HEALTH_MARGIN_S,
                         f"{health_s - run_s:.2f} s after the container started ({health_s:.2f} s after docker run)"
                         + ("" if health_s - run_s <= HEALTH_WITHIN_S else f"; over the 2 s target, within the "
                            f"{HEALTH_MARGIN_S:.0f} s allowed for a loaded machine"))
        except TimeoutError as exc:
            report.check("/health 200 within 2 s of start", False, str(exc))
        try:
            wait_until(lambda: get_status(container.url("/ready")) == 200, READY_TIMEOUT_S, "/ready 200",
                       interval_s=0.25)
            report.figures["run_to_ready_s"] = time.monotonic() - container.started_at
            report.check("/ready 200 once the real ComfyUI answers", _real_comfyui_answered(container.logs()),
                         f"{report.figures['run_to_ready_s']:.1f} s after docker run")
        except TimeoutError as exc:
            report.check("/ready 200 once the real ComfyUI answers", False, f"{exc}; state {container.state()}")
            return
        report.run(_process_owners, docker, container)
        report.run(_jobs_delivered, queue, jobs, invalid, outputs)
        report.run(_carried_image_loaded, queue, carried, outputs)
        report.run(_carried_image_deleted, docker, container)
        report.run(_comfyui_tidied, docker, container, queue, [*jobs, carried])
        report.run(_metrics_count, container)
        report.run(_docker_healthy, container)
        report.run(_stop_cleanly, docker, container)
    finally:
        log = container.save_logs(workdir)
        if report.failed:
            print(f"container log: {log}", flush=True)
        container.remove()


def _quick_workflow(colour: int) -> dict[str, Any]:
    """quick.json with its own colour: ComfyUI's cache replays nothing from the job before, so each job writes
    its own result files and the housekeeping check sees whether earlier ones were deleted."""
    workflow = load_workflow("quick.json")
    workflow["1"]["inputs"]["color"] = colour
    return workflow


def _real_comfyui_answered(logs: str) -> bool:
    """The real ComfyUI's own start-up lines, not a stand-in's."""
    return "[comfyui] " in logs and "To see the GUI go to:" in logs


def _process_owners(docker: Docker, container: Container, report: Report) -> None:
    listing = docker.run("top", container.name, "-eo", "uid,pid,args").stdout.splitlines()[1:]
    owners = [line.split(None, 2) for line in listing if line.strip()]
    commands = " | ".join(f"{uid} {args[:60]}" for uid, _, args in owners)
    has_all = any("tini" in args for *_, args in owners) and any("main.py" in args for *_, args in owners)
    report.check("every process runs as uid 10001", has_all and all(uid == str(IMAGE_UID) for uid, *_ in owners),
                 commands)


def _jobs_delivered(queue: QueueManager, jobs: dict[str, str], invalid: str, outputs: Path, report: Report) -> None:
    def all_finished() -> list[dict[str, Any]] | None:
        states = [queue.job(job_id) for job_id in [*jobs, invalid]]
        return states if all(s["status"] in ("completed", "failed", "cancelled") for s in states) else None

    try:
        finished = wait_until(all_finished, JOBS_TIMEOUT_S, "end to all four jobs", interval_s=1)
    except TimeoutError as exc:
        report.check("three real jobs complete with their files on the host", False, str(exc))
        return
    by_id = {job["id"]: job for job in finished}
    problems, files = [], 0
    for job_id, user in jobs.items():
        job = by_id[job_id]
        if job["status"] != "completed":
            problems.append(f"{job_id} {job['status']}: {job.get('error')}")
            continue
        delivered = job["result"].get("outputs", [])
        if not delivered:
            problems.append(f"{job_id} completed without outputs")
        for item in delivered:
            path = outputs / item["path"]
            if not item["path"].startswith(f"{user}/{job_id}/"):
                problems.append(f"{item['path']} is not under {user}/{job_id}/")
            elif not path.is_file():
                problems.append(f"{path} is missing on the host")
            elif sha256_of(path) != item["sha256"]:
                problems.append(f"{path} sha256 differs from the reported {item['sha256']}")
            else:
                files += 1
    report.check("three real jobs complete with their files on the host", not problems,
                 "; ".join(problems) or f"{files} files under {outputs}/<user>/<job>/ match their sha256")
    error = by_id[invalid].get("error") or ""
    readable = by_id[invalid]["status"] == "failed" and "NoSuchNode" in error and "Traceback" not in error
    report.check("an invalid job fails with a readable error", readable,
                 f"{by_id[invalid]['status']}: {error[:200]!r}")


def _comfyui_tidied(docker: Docker, container: Container, queue: QueueManager, job_ids: list[str],
                    report: Report) -> None:
    """The worker's housekeeping against the real ComfyUI (docs/worker.md): no preview of a finished job is left;
    of the results only the last success's, which ComfyUI's cache may name again (each job has its own colour, so
    without the housekeeping all three jobs' files would be there), and of the history only that success's entry,
    which names them for a restarted worker."""
    name = "the real ComfyUI keeps of finished jobs only the last result and its history entry"
    try:
        history = httpx.get(f"{container.env['COMFYUI_URL']}/history", timeout=10).json()
        found = docker.run("exec", container.name, "find", COMFYUI_SCRATCH, "-path", "*/output/*", "-type", "f",
                           "-o", "-path", "*/temp/*", "-type", "f").stdout.split()
    except (httpx.HTTPError, ValueError, DockerError) as exc:
        report.check(name, False, f"{type(exc).__name__}: {exc}")
        return
    previews = [path for path in found if "/temp/" in path]
    results = [path for path in found if "/output/" in path]
    one_job = max(len((queue.job(job_id).get("result") or {}).get("outputs", [])) for job_id in job_ids)
    named = {item.get("filename") for entry in history.values() for node in (entry.get("outputs") or {}).values()
             for item in node.get("images", [])}  # fmt: skip
    kept_entry_names_them = len(history) <= 1 and {path.rsplit("/", 1)[-1] for path in results} <= named
    report.check(name, kept_entry_names_them and not previews and len(results) <= one_job,
                 f"{len(history)} history entries naming {sorted(named)}, previews {previews}, result files {results}")


def _metrics_count(container: Container, report: Report) -> None:
    text = httpx.get(container.url("/metrics"), timeout=5).text
    counts = {
        outcome: _sample(text, f'comfy_worker_jobs_total{{outcome="{outcome}"}}') for outcome in ("completed", "failed")
    }
    report.check("/metrics counts the jobs", counts == {"completed": 4.0, "failed": 1.0},
                 f"comfy_worker_jobs_total {counts}")


def _sample(metrics_text: str, name: str) -> float | None:
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def _docker_healthy(container: Container, report: Report) -> None:
    def healthy() -> str | None:
        status = container.state().get("Health", {}).get("Status")
        return status if status == "healthy" else None

    try:
        wait_until(healthy, DOCKER_HEALTHY_TIMEOUT_S, "healthy HEALTHCHECK", interval_s=1)
        report.check("Docker HEALTHCHECK reports healthy", True, "healthy")
    except TimeoutError:
        report.check("Docker HEALTHCHECK reports healthy", False, json.dumps(container.state().get("Health")))


def _docker_unhealthy(docker: Docker, image: str, report: Report) -> None:
    """The image's HEALTHCHECK with no health server to answer (sleep in place of the supervisor), probed every
    second: Docker says unhealthy, so the "healthy" above is the probe's answer, not a HEALTHCHECK that always
    passes."""
    name = "Docker HEALTHCHECK reports unhealthy when the health server does not answer"
    container = "comfyui-image-test-no-health-server"
    docker.remove_container(container)
    try:
        docker.run("run", "--detach", "--name", container, "--network", "none", "--entrypoint", "sleep",
                   "--health-interval", "1s", "--health-start-period", "1s", "--health-retries", "1",
                   image, str(DOCKER_UNHEALTHY_TIMEOUT_S * 2), timeout_s=60)  # fmt: skip

        def health() -> dict[str, Any]:
            return docker.inspect(container)["State"].get("Health") or {}

        try:
            wait_until(lambda: health().get("Status") == "unhealthy", DOCKER_UNHEALTHY_TIMEOUT_S, "unhealthy",
                       interval_s=0.5)
        except TimeoutError:
            report.check(name, False, json.dumps(health()))
            return
        probe_said = (health().get("Log") or [{}])[-1].get("Output", "").strip()
        report.check(name, True, f"unhealthy; the probe said {probe_said[:120]!r}")
    finally:
        docker.remove_container(container)


def _stop_cleanly(docker: Docker, container: Container, report: Report) -> None:
    started = time.monotonic()
    docker.run("stop", "--time", str(STOP_WITHIN_S), container.name, timeout_s=STOP_WITHIN_S + 30)
    seconds = time.monotonic() - started
    state = container.state()
    said_goodbye = "Worker shutdown complete" in container.logs()
    report.check("docker stop: exit 0 within 30 s after 'Worker shutdown complete'",
                 state["ExitCode"] == 0 and seconds < STOP_WITHIN_S and said_goodbye and not state["OOMKilled"],
                 f"exit {state['ExitCode']} after {seconds:.1f} s; 'Worker shutdown complete' logged: {said_goodbye}")


def _root_owned_outputs(docker: Docker, image: str, queue: QueueManager, outputs: Path, report: Report) -> None:
    name = "root-owned /outputs: exit 2 with one line naming path, owner, uid and fix"
    container = Container(docker, image, "comfyui-image-test-root-outputs", queue.url, outputs)
    try:
        result = docker.run(*container.argv(), timeout_s=60, check=False)
    except DockerError as exc:  # still running after a minute: the check did not stop it
        report.check(name, False, str(exc))
        return
    finally:
        container.remove()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    expected = "OUTPUTS_PATH=/outputs is not a writable directory (Permission denied): it is owned by uid 0"
    ok = (result.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected)
          and f"runs as uid {IMAGE_UID}" in lines[0] and "chown" in lines[0] and not result.stdout)
    extra = f" (+{len(lines) - 1} more lines)" if len(lines) > 1 else ""
    report.check(name, ok, f"exit {result.returncode}: {(lines or [''])[0]!r}{extra}")


def _serverless_idle_exit(docker: Docker, image: str, workdir: Path, queue: QueueManager, outputs: Path,
                          report: Report) -> None:
    """A serverless replica of the image with a custom node added (docs/container.md, "Custom nodes") and the
    participants' uploads on a read-only volume (COMFYUI_INPUT_DIR): it runs the jobs that use them, then exits by
    itself once the queue stays empty."""
    try:
        image = build_custom_nodes_image(docker, image, workdir / "build-custom-nodes.log")
        report.check("an image derived with a custom node builds (image_test/custom_nodes/Dockerfile)", True, image)
    except DockerError as exc:
        report.check("an image derived with a custom node builds (image_test/custom_nodes/Dockerfile)", False,
                     str(exc))
    inputs = _uploads(workdir)
    loaded = queue.submit("alice", _load_image_workflow(f"alice/{UPLOAD_NAME}"))
    missing = queue.submit("bob", _load_image_workflow("bob/never-uploaded.png"))
    inverted = queue.submit("carol", _custom_node_workflow())
    env = {"SERVERLESS_MODE": "true", "SERVERLESS_MAX_IDLE_POLLS": "3", "COMFYUI_INPUT_DIR": "/inputs"}
    container = Container(docker, image, "comfyui-image-test-serverless", queue.url, outputs, env,
                          (f"{inputs}:/inputs:ro",))
    try:
        container.start()
        result = docker.run("wait", container.name, timeout_s=SERVERLESS_EXIT_TIMEOUT_S, check=False)
        seconds = time.monotonic() - container.started_at
        logs = container.logs()
        code = result.stdout.strip()
        report.check("SERVERLESS_MODE=true, SERVERLESS_MAX_IDLE_POLLS=3: exits 0 by itself on an empty queue",
                     code == "0" and "Serverless idle timeout reached" in logs,
                     f"exit {code or '?'} after {seconds:.1f} s; idle timeout logged: "
                     f"{'Serverless idle timeout reached' in logs}")
        failed_imports = [line for line in logs.splitlines() if "IMPORT FAILED" in line]
        report.check("ComfyUI loads every node with a read-only input volume", not failed_imports,
                     "; ".join(failed_imports) or "no IMPORT FAILED line")
    except Exception as exc:  # e.g. docker wait timed out: the container never exited
        report.check("SERVERLESS_MODE=true, SERVERLESS_MAX_IDLE_POLLS=3: exits 0 by itself on an empty queue",
                     False, f"{type(exc).__name__}: {exc}")
    finally:
        container.save_logs(workdir)
        container.remove()
    report.run(_uploads_loaded, queue, loaded, missing, outputs)
    report.run(_custom_node_ran, queue, inverted)


def _custom_node_ran(queue: QueueManager, job_id: str, report: Report) -> None:
    job = queue.job(job_id)
    results = (job.get("result") or {}).get("outputs", [])
    report.check("a job runs through the custom node", job["status"] == "completed" and len(results) == 1,
                 f"{job['status']}: {job.get('error') or ''}; {len(results)} result files")


def _custom_node_workflow() -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x123456}},
        "2": {"class_type": "ImageTestInvert", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}},
    }


UPLOAD_NAME = "photo.png"
UPLOAD_SIZE = (7, 5)  # not a size any workflow here makes: a result this size came from the upload


def _uploads(workdir: Path) -> Path:
    """A folder like an uploads volume: root's, readable by all, one user's subfolder holding a PNG, and the `3d`
    folder ComfyUI's 3D nodes make at start, which they cannot on a read-only volume (docs/container.md)."""
    inputs = workdir / "inputs"
    for folder in (inputs / "alice", inputs / "3d"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
    inputs.chmod(0o755)
    upload = inputs / "alice" / UPLOAD_NAME
    upload.write_bytes(_png(*UPLOAD_SIZE))
    upload.chmod(0o644)  # whatever the umask: the container reads it as uid 10001
    return inputs


def _png(width: int, height: int) -> bytes:
    """An opaque orange RGB PNG (the stand-in's writer: this environment has no imaging library)."""
    return png_bytes(Image(width, height, (0xFF, 0x80, 0x00)))


def _load_image_workflow(image: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}},
    }


CARRIED_NAME = "dana/carried.png"  # in a subfolder: ComfyUI makes it in its input folder
CARRIED_SIZE = (9, 4)


def _carried_image_loaded(queue: QueueManager, job_id: str, outputs: Path, report: Report) -> None:
    """The job carries its image in metadata.images; the worker uploads it to ComfyUI (its input folder on the
    scratch disk here) before the prompt."""
    name = "a job carrying its image in metadata.images loads it (LoadImage -> SaveImage)"
    try:
        job = wait_until(lambda: (j := queue.job(job_id))["status"] in ("completed", "failed", "cancelled") and j,
                         JOBS_TIMEOUT_S, "end to the job carrying an image", interval_s=1)  # fmt: skip
    except TimeoutError as exc:
        report.check(name, False, str(exc))
        return
    delivered = [outputs / item["path"] for item in (job.get("result") or {}).get("outputs", [])]
    sizes = [image_size(path.read_bytes()) for path in delivered if path.is_file()]
    report.check(name, job["status"] == "completed" and sizes == [CARRIED_SIZE],
                 f"{job['status']}: {job.get('error') or ''}; results {sizes} (the image is {CARRIED_SIZE})")


def _carried_image_deleted(docker: Docker, container: Container, report: Report) -> None:
    """Once the job's prompt is over, before its report, the worker deletes the image it uploaded, and the subfolder
    ComfyUI made for it: a later job on the replica naming it without carrying it cannot load it."""
    name = "the job's carried image is deleted from ComfyUI's input folder once its prompt is over"
    subfolder = CARRIED_NAME.split("/")[0]
    try:
        left = docker.run("exec", container.name, "find", f"{COMFYUI_SCRATCH}/input", "-path",
                          f"*/{subfolder}*").stdout.split()  # fmt: skip
    except DockerError as exc:
        report.check(name, False, f"{type(exc).__name__}: {exc}")
        return
    report.check(name, not left, f"left in {COMFYUI_SCRATCH}/input: {left}" if left else f"no {subfolder}/ left")


def _uploads_loaded(queue: QueueManager, loaded: str, missing: str, outputs: Path, report: Report) -> None:
    job, lost = queue.job(loaded), queue.job(missing)
    delivered = [outputs / item["path"] for item in (job.get("result") or {}).get("outputs", [])]
    sizes = [image_size(path.read_bytes()) for path in delivered if path.is_file()]
    report.check("a workflow loads an upload from COMFYUI_INPUT_DIR (a read-only volume)",
                 job["status"] == "completed" and sizes == [UPLOAD_SIZE],
                 f"{job['status']}: {job.get('error') or ''}; results {sizes} (the upload is {UPLOAD_SIZE})")
    error = lost.get("error") or ""
    report.check("a workflow loading a file that is not there fails naming it", lost["status"] == "failed"
                 and "Invalid image file: bob/never-uploaded.png" in error and "Traceback" not in error,
                 f"{lost['status']}: {error[:200]!r}")
