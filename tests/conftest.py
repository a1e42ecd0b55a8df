"""Fixtures every test folder may use: the recorded data in tests/fixtures (see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORKFLOWS = FIXTURES / "workflows"
TRANSCRIPTS = FIXTURES / "comfyui-0.8.0"


@pytest.fixture(scope="session")
def workflows() -> dict[str, dict]:
    """The API-format test workflows of tests/fixtures/workflows, by file name without .json."""
    return {path.stem: json.loads(path.read_text()) for path in WORKFLOWS.glob("*.json")}
