"""A QUEUE_MANAGER_URL no replica could use is refused by the Verda deploy before anything is sent: each replica
would poll in vain and exit after SERVERLESS_MAX_UNREACHABLE_S, restarted and billed while the jobs wait."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "http://0.0.0.0:8080",
     "https://localhost/", "http://127.1.2.3:8080"],
)
async def test_a_queue_url_naming_the_replica_itself_is_refused_before_any_call(
    fake: FakeVerda, deploy_env, capsys, url: str
) -> None:
    """Before: deployed, exit 0 (the queue manager's own default, carried by a shared env file)."""
    code = await deploy_main([], {**deploy_env, "QUEUE_MANAGER_URL": url})

    err = capsys.readouterr().err
    assert code == 2, err
    assert "env_from_environment.QUEUE_MANAGER_URL: names the replica itself" in err, err
    assert fake.requests == []


async def test_a_loopback_queue_url_with_a_password_is_refused_as_a_secret_too(
    fake: FakeVerda, deploy_env, spec_without_token: Path, capsys
) -> None:
    url = "http://worker:url-password-do-not-log@127.0.0.1:8080"

    code = await deploy_main(["--spec", str(spec_without_token)], {**deploy_env, "QUEUE_MANAGER_URL": url})

    err = capsys.readouterr().err
    assert code == 2, err
    assert "secrets.QUEUE_MANAGER_URL: names the replica itself" in err, err
    assert "url-password-do-not-log" not in err
    assert fake.requests == []


async def test_the_queue_managers_address_is_deployed(fake: FakeVerda, deploy_env, capsys) -> None:
    assert await deploy_main([], {**deploy_env, "QUEUE_MANAGER_URL": "https://queue.example.com:8443"}) == 0
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "spec_token"),
    [("http://queue.example.com:8080", True), ("http://203.0.113.7:8080", True),
     ("http://worker:url-password-do-not-log@queue.example.com", False)],
)
async def test_a_plain_http_queue_url_with_a_credential_is_refused_before_any_call(
    fake: FakeVerda, deploy_env, spec_path: Path, spec_without_token: Path, capsys, url: str, spec_token: bool
) -> None:
    """Before: deployed, exit 0; every replica sent QUEUE_MANAGER_TOKEN (or the URL's password) in clear across
    the internet with each poll."""
    spec = spec_path if spec_token else spec_without_token

    code = await deploy_main(["--spec", str(spec)], {**deploy_env, "QUEUE_MANAGER_URL": url})

    err = capsys.readouterr().err
    assert code == 2, err
    assert "QUEUE_MANAGER_URL: must be an https:// URL" in err, err
    assert "url-password-do-not-log" not in err
    assert fake.requests == []


async def test_a_plain_http_queue_url_without_a_credential_is_deployed(
    fake: FakeVerda, deploy_env, spec_without_token: Path, capsys
) -> None:
    env = {**deploy_env, "QUEUE_MANAGER_URL": "http://queue.example.com:8080"}
    assert await deploy_main(["--spec", str(spec_without_token)], env) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    "url", ["https://queue.example.com/api", "https://queue.example.com/api/", "https://example.com/queue/api"]
)
async def test_a_queue_url_ending_in_api_is_refused_before_any_call(
    fake: FakeVerda, deploy_env, capsys, url: str
) -> None:
    """Before: deployed, exit 0; the worker adds /api/... itself, so every poll was answered 404, counted as the
    queue manager unreachable, and each replica exited after 600 s."""
    code = await deploy_main([], {**deploy_env, "QUEUE_MANAGER_URL": url})

    err = capsys.readouterr().err
    assert code == 2, err
    assert "env_from_environment.QUEUE_MANAGER_URL: ends in /api" in err and "drop the /api" in err, err
    assert fake.requests == []


async def test_a_queue_manager_under_a_path_prefix_is_deployed(fake: FakeVerda, deploy_env, capsys) -> None:
    env = {**deploy_env, "QUEUE_MANAGER_URL": "https://example.com/apis/queue"}
    assert await deploy_main([], env) == 0, capsys.readouterr().err
