"""The compute's name is refused before any call when Verda can have no compute of that name."""

from __future__ import annotations

import pytest

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

NAME = "comfyui-worker-serverless"


@pytest.mark.parametrize("compute", [" ", " H100", "H100 "])
async def test_a_blank_compute_name_or_one_with_spaces_at_its_ends_is_refused_before_any_call(
    fake: FakeVerda, deploy_env, compute: str, capsys
) -> None:
    """Before: VERDA_COMPUTE=" " passed the spec's check; the secrets were created, then Verda refused the create
    400 (unknown compute), exit 1 after 5 requests."""
    assert await deploy_main([], {**deploy_env, "VERDA_COMPUTE": compute}) == 2
    assert "compute.name" in capsys.readouterr().err
    assert fake.requests == []
    assert fake.secrets == {}


async def test_a_compute_name_with_a_space_inside_is_deployed(fake: FakeVerda, deploy_env) -> None:
    """Verda names one of its computes "General Compute": a space inside a name is no typo."""
    assert await deploy_main([], {**deploy_env, "VERDA_COMPUTE": "General Compute"}) == 0
    assert NAME in fake.deployments
