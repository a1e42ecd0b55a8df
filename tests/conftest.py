"""Fixtures every test folder may use: the shared reference folder beside the repository (CI puts a copy there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def workflows() -> dict[str, dict]:
    """The API-format test workflows of shared/workflows, by file name without .json."""
    folder = SHARED / "workflows"
    assert folder.is_dir(), f"shared workflows not found at {folder}: the repo must sit beside shared/"
    return {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
