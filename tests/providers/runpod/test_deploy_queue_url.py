"""A QUEUE_MANAGER_URL no pod could use is refused by the RunPod deploy before anything is sent, as by Verda's: each
pod would poll in vain and exit after SERVERLESS_MAX_UNREACHABLE_S, or send its queue token in clear. The scaler's
own RunPod backend is not concerned: tests/scaler/test_fleet_runpod.py runs one against a queue on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.deploy.command import deploy_main
from standins.runpod import FakeRunPod

from .test_deploy import deploy_env, runpod_args  # noqa: F401 - the fixture

OPTIONS = [[], ["--dry-run"]]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "http://0.0.0.0:8080"]
)
async def test_a_queue_url_naming_the_pod_itself_is_refused_before_any_call(
    fake: FakeRunPod, deploy_env, capsys, url: str, options: list[str]  # noqa: F811
) -> None:
    """Before: "ready for the scaler", exit 0 (the queue manager's own default, from a shared env file)."""
    code = await deploy_main(runpod_args(*options), {**deploy_env, "QUEUE_MANAGER_URL": url})

    out, err = capsys.readouterr()
    assert code == 2, err
    assert "env_from_environment.QUEUE_MANAGER_URL: names the replica itself" in err, err
    assert out == "" and fake.requests == []


@pytest.mark.parametrize("options", OPTIONS)
async def test_a_queue_url_ending_in_api_is_refused_before_any_call(
    fake: FakeRunPod, deploy_env, capsys, options: list[str]  # noqa: F811
) -> None:
    """Before: exit 0; the worker adds /api/... itself, so every poll of every pod would be answered 404."""
    env = {**deploy_env, "QUEUE_MANAGER_URL": "https://queue.example.com/api/"}

    code = await deploy_main(runpod_args(*options), env)

    out, err = capsys.readouterr()
    assert code == 2, err
    assert "env_from_environment.QUEUE_MANAGER_URL: ends in /api" in err, err
    assert out == "" and fake.requests == []


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize(
    ("url", "spec_token"),
    [("http://queue.example.com:8080", True), ("http://worker:url-password-do-not-log@queue.example.com", False)],
)
async def test_a_plain_http_queue_url_with_a_credential_is_refused_before_any_call(
    fake: FakeRunPod, deploy_env, spec_without_token: Path, capsys,  # noqa: F811
    url: str, spec_token: bool, options: list[str],
) -> None:
    """Before: exit 0; every pod would send QUEUE_MANAGER_TOKEN (or the URL's password) in clear with each poll."""
    spec = [] if spec_token else ["--spec", str(spec_without_token)]

    code = await deploy_main(runpod_args(*options, *spec), {**deploy_env, "QUEUE_MANAGER_URL": url})

    out, err = capsys.readouterr()
    assert code == 2, err
    assert "QUEUE_MANAGER_URL: must be an https:// URL" in err, err
    assert "url-password-do-not-log" not in out + err
    assert out == "" and fake.requests == []


async def test_a_plain_http_queue_url_without_a_credential_is_deployed(
    fake: FakeRunPod, deploy_env, spec_without_token: Path, capsys  # noqa: F811
) -> None:
    env = {**deploy_env, "QUEUE_MANAGER_URL": "http://queue.example.com:8080"}
    assert await deploy_main(runpod_args("--spec", str(spec_without_token)), env) == 0, capsys.readouterr().err
