"""Each contract in .importlinter fails on the import it forbids (./dev test runs lint-imports on the real tree)."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# contract id -> (module, the import added to it, the chain lint-imports must report)
BAD_IMPORTS = {
    "layers": ("supervisor/run.py", "demo.report", "supervisor.run -> demo.report"),
    "common": ("common/settings.py", "worker.config", "common.settings -> worker.config"),
    "worker-process": ("health/status.py", "queue_manager.models", "health.status -> queue_manager.models"),
    "worker-core": ("worker/execution.py", "health.status", "worker.execution -> health.status"),
    "scaler-health": ("scaler/queue_status.py", "health.probe", "scaler.queue_status -> health.probe"),
    "health-probe": ("health/probe.py", "structlog", "health.probe -> structlog"),
    "peers": ("standins/comfyui.py", "worker.comfyui", "standins.comfyui -> worker.comfyui"),
    "pure-policy": ("scaler/policy.py", "time", "scaler.policy -> time"),
    "scaler-layers": ("scaler/loop.py", "scaler.cli", "scaler.loop -> scaler.cli"),
    "providers": ("scaler/providers/local.py", "scaler.providers.verda.client", "scaler.providers.local ->"),
}


def broken_contract_reports(stdout: str) -> dict[str, str]:
    """The "Broken contracts" part of lint-imports' output, as contract name -> what it reported."""
    reports: dict[str, str] = {}
    lines = stdout.partition("Broken contracts")[2].splitlines()
    name = None
    for line, underline in zip(lines, [*lines[1:], ""], strict=True):
        if line and underline and set(underline) == {"-"}:
            name = line
            reports[name] = ""
        elif name:
            reports[name] += line + "\n"
    return reports


def test_every_contract_breaks_on_the_import_it_forbids(tmp_path: Path):
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    contract_names = {
        section.removeprefix("importlinter:contract:"): config[section]["name"]
        for section in config.sections()
        if section.startswith("importlinter:contract:")
    }
    assert set(contract_names) == set(BAD_IMPORTS), "every contract needs an import that breaks it"
    for package in config["importlinter"]["root_packages"].split():
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    for module, bad_import, _ in BAD_IMPORTS.values():
        path = tmp_path / module
        path.write_text(path.read_text() + f"\nimport {bad_import}  # the import under test\n")
    # A provider nobody listed in the providers contract must break it too, or nothing checks its independence.
    (tmp_path / "scaler/providers/newcloud.py").write_text('"""A provider missing from .importlinter."""\n')

    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache"],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "1000"},  # one line per contract name
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    reports = broken_contract_reports(result.stdout)
    assert set(reports) == set(contract_names.values()), result.stdout
    for contract, (_, _, chain) in BAD_IMPORTS.items():
        assert chain in reports[contract_names[contract]], f"{contract}: {reports[contract_names[contract]]}"
    assert "scaler.providers.newcloud" in reports[contract_names["providers"]]
