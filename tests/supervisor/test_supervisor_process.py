"""The supervisor as the container runs it, with small programs standing in for ComfyUI where its behaviour
must be exact: one that never answers, one that ignores SIGTERM, one that crashes at start."""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from standins.comfyui import ComfyUISimulator

from ..conftest import CAP_NET_BIND_SERVICE, AuthorizationEchoingPeer, without_capabilities
from .test_supervisor_with_simulator import job_status, submit


def python_command(code: str) -> str:
    return shlex.join([sys.executable, "-c", code])


IGNORES_SIGTERM = python_command(
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('loading models', flush=True); "
    "time.sleep(60)"
)
CRASHES_AT_START = python_command("import sys; print('CUDA init failed', file=sys.stderr, flush=True); sys.exit(3)")


async def test_comfyui_that_never_answers(base_env, run_supervisor) -> None:
    """Health answers at once while ComfyUI loads; the worker gives up after its start-up timeout (exit 1,
    passed through); the child, which ignores SIGTERM, is killed after COMFYUI_STOP_TIMEOUT_S."""
    env = {
        **base_env,
        "COMFYUI_COMMAND": IGNORES_SIGTERM,
        "COMFYUI_STARTUP_TIMEOUT_S": "2",
        "COMFYUI_STOP_TIMEOUT_S": "1",
    }
    supervisor = await run_supervisor(env)

    # Health answers while ComfyUI is still loading (the /ready and /status checks below prove the order).
    # How fast it answers is a figure for ./dev image-test and docs/benchmarks.md, not a timed assertion here.
    health = await supervisor.wait_until(lambda: supervisor.get("/health"), what="/health to answer")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    ready = await supervisor.get("/ready")
    assert ready is not None and ready.status_code == 503
    assert ready.json()["reason"].startswith("starting")
    status = (await supervisor.get("/status")).json()
    assert (status["state"], status["comfyui_up"]) == ("starting", False)
    child = await supervisor.comfyui_pid()
    await supervisor.wait_until(lambda: "[comfyui] loading models" in supervisor.output, what="child output")

    # A signal while ComfyUI is being stopped must not kill the supervisor and orphan ComfyUI.
    await supervisor.wait_until(lambda: "comfyui.stopping" in supervisor.output, what="the stop of ComfyUI")
    supervisor.signal(signal.SIGTERM)

    assert await supervisor.wait() == 1
    assert not supervisor.is_running(child)
    assert "ComfyUI never came up" in supervisor.output
    events = [event["event"] for event in supervisor.log_events()]
    assert events.index("comfyui.kill") < events.index("comfyui.stopped")


async def test_comfyui_crash_at_start_exits_1_with_the_reason(base_env, run_supervisor) -> None:
    env = {**base_env, "COMFYUI_COMMAND": CRASHES_AT_START, "COMFYUI_STARTUP_TIMEOUT_S": "30"}
    supervisor = await run_supervisor(env)

    assert await supervisor.wait(timeout_s=10) == 1
    assert "[comfyui] CUDA init failed" in supervisor.stderr.decode()
    exited = [e for e in supervisor.log_events() if e["event"] == "comfyui.exited_unexpectedly"]
    assert exited and exited[0]["code"] == 3


async def test_configuration_error_exits_2_before_comfyui_starts(base_env, run_supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "comfyui-was-started"
    env = {
        **base_env,
        "COMFYUI_COMMAND": python_command(f"open({str(marker)!r}, 'w').close()"),
        "COMFYUI_EXTRA_ARGS": "--unbalanced 'quote",
        "COMFYUI_URL": "http://10.1.2.3:8188",
        "WORKER_POLL_INTERVAL": "-1",
    }
    del env["QUEUE_MANAGER_URL"]
    supervisor = await run_supervisor(env)

    assert await supervisor.wait() == 2
    stderr = supervisor.stderr.decode()
    for variable in ("COMFYUI_EXTRA_ARGS", "COMFYUI_URL", "QUEUE_MANAGER_URL", "WORKER_POLL_INTERVAL"):
        assert variable in stderr, stderr
    assert "Traceback" not in supervisor.output
    assert supervisor.stdout == b""
    assert not marker.exists()
    assert not (tmp_path / "data").exists()  # nothing prepared either


async def test_unwritable_scratch_dir_is_a_configuration_error(base_env, run_supervisor, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    supervisor = await run_supervisor({**base_env, "SCRATCH_DIR": str(blocker / "data")})

    assert await supervisor.wait() == 2
    assert "SCRATCH_DIR" in supervisor.output
    assert "Traceback" not in supervisor.output


async def test_comfyui_dies_with_a_sigkilled_supervisor_and_never_sees_the_queue_credentials(
    base_env, run_supervisor, tmp_path: Path
) -> None:
    env_dump = tmp_path / "comfyui-env.json"
    env = {
        **base_env,
        "QUEUE_MANAGER_TOKEN": "queue-token-value",
        # A secret in the query: a user and password would be refused beside the token (one Authorization header).
        "QUEUE_MANAGER_URL": f"{base_env['QUEUE_MANAGER_URL']}/?token=url-password",
        "HF_TOKEN": "for-a-model-downloader",
        "COMFYUI_COMMAND": python_command(
            f"import json, os, time; json.dump(dict(os.environ), open({str(env_dump)!r}, 'w')); time.sleep(60)"
        ),
    }
    supervisor = await run_supervisor(env)
    child = await supervisor.comfyui_pid()
    await supervisor.wait_until(lambda: env_dump.exists() and env_dump.stat().st_size, what="the env dump")

    supervisor.signal(signal.SIGKILL)
    assert await supervisor.wait() == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while supervisor.is_running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not supervisor.is_running(child), "ComfyUI outlived its supervisor"

    seen = json.loads(env_dump.read_text())
    assert "QUEUE_MANAGER_TOKEN" not in seen and "QUEUE_MANAGER_URL" not in seen
    assert "url-password" not in json.dumps(seen) and "queue-token-value" not in json.dumps(seen)
    assert seen["HF_TOKEN"] == "for-a-model-downloader", "what ComfyUI may need still reaches it"
    assert "url-password" not in supervisor.output


async def test_a_comfyui_left_over_on_the_port_gets_no_job_and_the_start_stops_with_why(
    base_env, run_supervisor, queue_manager, load_workflow, tmp_path: Path
) -> None:
    """Restarted in place outside a container (systemd, a wrapper script as COMFYUI_COMMAND that the kernel's
    parent-death signal does not reach): the earlier run's ComfyUI still holds the port. Before, the worker
    took it for its own, popped a job and sent it there while its own ComfyUI failed to bind; the job was
    handed back as a fault, costing it an attempt at every restart."""
    left_over = ComfyUISimulator(tmp_path / "left-over" / "output")
    await left_over.start(port=int(base_env["COMFYUI_URL"].rsplit(":", 1)[1]))
    its_result = tmp_path / "data" / "comfyui" / "output" / "ComfyUI_00001_.png"
    its_result.parent.mkdir(parents=True)
    its_result.write_bytes(b"still being written by the left-over ComfyUI")
    try:
        job_id = await submit(queue_manager, load_workflow("quick.json"))
        supervisor = await run_supervisor(base_env)

        assert await supervisor.wait() == 1
        assert left_over.prompts_received == []
        assert (await job_status(queue_manager, job_id))["status"] == "pending"
        [line] = [e for e in supervisor.log_events() if e["event"] == "supervisor.comfyui_port_taken"]
        assert line["port"] == left_over.port
        assert "comfyui.started" not in [e["event"] for e in supervisor.log_events()]
        assert its_result.exists(), "nothing of the scratch folders is touched either"
    finally:
        await left_over.stop()


async def test_a_queue_url_password_a_peer_echoes_never_reaches_the_log(base_env, run_supervisor) -> None:
    """A proxy's or a broken server's error page quoting the request's Authorization header: the worker quotes the
    answer in its "Poll failed" line. The queue token was masked there, but a QUEUE_MANAGER_URL's user and
    password travel as ``Basic <base64 of user:password>``, which went into the log as is (decoded by anyone)."""
    password = "url-password-echoed-4e7a"
    basic = base64.b64encode(f"worker:{password}".encode()).decode()
    async with AuthorizationEchoingPeer() as peer:
        env = {**base_env, "QUEUE_MANAGER_URL": peer.url.replace("http://", f"http://worker:{password}@")}
        supervisor = await run_supervisor(env)
        await supervisor.wait_until(lambda: "Poll failed" in supervisor.output, timeout_s=30, what="a failed poll")
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.wait() == 0
    polls = [event["error"] for event in supervisor.log_events() if event["event"].startswith("Poll failed")]
    assert polls and "you sent Basic ***" in polls[0], polls
    assert basic not in supervisor.output and password not in supervisor.output


async def test_a_comfyui_port_below_1024_without_the_right_to_bind_it_is_a_configuration_error_naming_the_cause(
    base_env, run_supervisor
) -> None:
    """COMFYUI_URL=http://127.0.0.1 means port 80, which uid 10001 (the image's) may not bind. Before: logged as
    `supervisor.comfyui_port_taken error="Permission denied"`, blaming a left-over ComfyUI, and exit 1, which the
    platform restarts for ever. Now: the cause and the fix, and exit 2."""
    first_free = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if first_free <= 80 or os.getuid() != 0:
        pytest.skip("needs root, to drop CAP_NET_BIND_SERVICE, and port 80 below ip_unprivileged_port_start")
    supervisor = await run_supervisor(
        {**base_env, "COMFYUI_URL": "http://127.0.0.1"}, without_capabilities(CAP_NET_BIND_SERVICE)
    )

    assert await supervisor.wait() == 2
    [line] = [e for e in supervisor.log_events() if e["event"] == "supervisor.comfyui_port_privileged"]
    assert line["port"] == 80 and f"below {first_free}" in line["why"], line
    assert "comfyui.started" not in [e["event"] for e in supervisor.log_events()]


async def test_a_health_port_below_1024_without_the_right_to_bind_it_is_a_configuration_error_naming_the_cause(
    base_env, run_supervisor
) -> None:
    """HEALTH_PORT=80 as uid 10001 (the image's). Before: ComfyUI started, then `Health server cannot listen`
    blamed another process holding the port, exit 1, which the platform restarts for ever. Now: the cause and the
    fix before ComfyUI starts, and exit 2."""
    first_free = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if first_free <= 80 or os.getuid() != 0:
        pytest.skip("needs root, to drop CAP_NET_BIND_SERVICE, and port 80 below ip_unprivileged_port_start")
    supervisor = await run_supervisor({**base_env, "HEALTH_PORT": "80"}, without_capabilities(CAP_NET_BIND_SERVICE))

    assert await supervisor.wait() == 2
    [line] = [e for e in supervisor.log_events() if e["event"] == "supervisor.health_port_privileged"]
    assert line["port"] == 80 and f"below {first_free}" in line["why"] and "HEALTH_PORT" in line["why"], line
    assert "comfyui.started" not in [e["event"] for e in supervisor.log_events()]
