"""HEALTH_PORT_FILE as the health server writes it (health.probe.write_port_file): whole, or nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from health.server import HealthServer

from .conftest import make_state


async def test_a_port_file_that_cannot_be_replaced_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Before: HEALTH_PORT_FILE naming a folder left a `.<name>.<pid>` file beside it at every start."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    server = HealthServer(make_state(), host="127.0.0.1", port=0, port_file=folder)
    await server.start()
    try:
        left = sorted(path.name for path in tmp_path.iterdir())
    finally:
        await server.stop()
    assert left == ["a-folder"]
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("place", ["a folder", "under a file"])
async def test_a_port_file_never_written_is_not_removed_at_stop(tmp_path: Path, place: str, capsys) -> None:
    """Before: stop() unlinked HEALTH_PORT_FILE whether or not start() had written it, and warned "Could not remove
    HEALTH_PORT_FILE" (which says the file was made unremovable after start) after the start's own error line."""
    (tmp_path / "a-file").write_text("")
    port_file = tmp_path / "a-folder" if place == "a folder" else tmp_path / "a-file" / "port"
    if place == "a folder":
        port_file.mkdir()
    server = HealthServer(make_state(), host="127.0.0.1", port=0, port_file=port_file)
    await server.start()
    await server.stop()
    said = capsys.readouterr().out
    assert "Could not write HEALTH_PORT_FILE" in said
    assert "Could not remove HEALTH_PORT_FILE" not in said
