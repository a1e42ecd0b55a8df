"""`--console` prints what to type into Verda's console for apply; with `status` or `delete` it is refused, as
`--dry-run` is, rather than standing in for the action asked."""

from __future__ import annotations

import pytest

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda


@pytest.mark.parametrize("action", [["status"], ["delete", "--yes"], ["delete"]])
async def test_console_with_anything_but_apply_is_refused(
    fake: FakeVerda, deploy_env, capsys, action: list[str]
) -> None:
    """Before: the walkthrough printed, exit 0, and neither the status shown nor the deployment deleted."""
    assert await deploy_main([], deploy_env) == 0
    capsys.readouterr()
    fake.requests.clear()

    code = await deploy_main([*action, "--console"], deploy_env)

    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "--console applies to apply only" in err, err
    assert out == ""
    assert fake.requests == []


async def test_console_still_prints_the_walkthrough_for_apply(fake: FakeVerda, deploy_env, capsys) -> None:
    assert await deploy_main(["apply", "--console"], deploy_env) == 0
    assert "QUEUE_MANAGER_URL" in capsys.readouterr().out
    assert fake.requests == []
