"""The console walkthrough in docs/deploy-verda.md is exactly what `./deploy-serverless.sh --console` prints."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

REPO = Path(__file__).resolve().parents[3]
# The example environment of docs/deploy-verda.md's Usage section.
EXAMPLE_ENV = {
    "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.1.0",
    "VERDA_MODELS_VOLUME_ID": "<models SFS volume id>",
    "VERDA_OUTPUTS_VOLUME_ID": "<outputs SFS volume id>",
    "QUEUE_MANAGER_URL": "https://queue.example.com",
}


def documented_block() -> str:
    text = (REPO / "docs" / "deploy-verda.md").read_text()
    found = re.search(r"<!-- console:begin[^>]*-->\n```text\n(.*?)\n```\n<!-- console:end -->", text, re.DOTALL)
    assert found, "the console block is missing from docs/deploy-verda.md"
    return found.group(1)


def test_the_usage_section_exports_the_example_environment():
    usage = (REPO / "docs" / "deploy-verda.md").read_text().split("## Usage", 1)[1].split("```", 2)[1]
    for name, value in EXAMPLE_ENV.items():
        assert f"{name}={value}" in usage or f'{name}="{value}"' in usage


def test_the_doc_shows_exactly_what_console_prints():
    env = {"PATH": os.environ["PATH"], **EXAMPLE_ENV}
    done = subprocess.run(
        [str(REPO / "deploy-serverless.sh"), "--console"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == documented_block()


async def test_console_covers_every_field_of_the_spec_and_sends_nothing(fake: FakeVerda, capsys):
    assert await deploy_main(["--console"], EXAMPLE_ENV) == 0
    out = capsys.readouterr().out
    assert fake.requests == []
    for expected in (
        "ghcr.io/acme/comfyui-worker-serverless:0.1.0", "H100 x1", "on, port 8000, path /health",
        "<models SFS volume id> mounted at /models", "<outputs SFS volume id> mounted at /outputs",
        "at /data", "16384 MB at /dev/shm", "secret comfyui-worker-queue-manager-token", "300 s",
    ):
        assert expected in out
    for name in ("SERVERLESS_MODE", "HEALTH_PORT", "OUTPUTS_PATH", "QUEUE_MANAGER_URL", "QUEUE_MANAGER_TOKEN"):
        assert re.search(rf"^  {name} ", out, re.MULTILINE)


async def test_console_shows_a_url_with_a_password_as_a_secret(spec_without_token, capsys):
    env = {**EXAMPLE_ENV, "QUEUE_MANAGER_URL": "https://w:console-pass-do-not-log@queue.example.com"}
    assert await deploy_main(["--console", "--spec", str(spec_without_token)], env) == 0
    out = capsys.readouterr().out
    assert "console-pass-do-not-log" not in out
    assert "secret comfyui-worker-serverless-queue-manager-url" in out


async def test_console_names_the_fields_to_fix(capsys):
    assert await deploy_main(["--console"], {}) == 2
    assert "deployment.image" in capsys.readouterr().err
