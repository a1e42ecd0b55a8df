"""HEALTH_PORT_FILE as the health server writes it (health.probe.write_port_file): whole, or nothing left behind."""

from __future__ import annotations

from pathlib import Path

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
