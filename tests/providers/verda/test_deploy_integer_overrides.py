"""A whole number given in the environment is written in digits alone: anything else is refused naming its variable."""

from __future__ import annotations

import pytest

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

NAME = "comfyui-worker-serverless"


@pytest.mark.parametrize("variable", ["VERDA_COMPUTE_SIZE", "VERDA_MIN_REPLICAS", "VERDA_MAX_REPLICAS"])
@pytest.mark.parametrize("value", ["1_0", "0_1", " 1", "1.0", "+1"])
async def test_a_whole_number_not_in_digits_alone_is_refused_naming_its_variable_before_any_call(
    fake: FakeVerda, deploy_env, variable: str, value: str, capsys
) -> None:
    """Before: pydantic read VERDA_MAX_REPLICAS=1_0 as 10 and VERDA_COMPUTE_SIZE=0_1 as 1, and the deployment was
    created with them, exit 0 (8 requests)."""
    assert await deploy_main([], {**deploy_env, variable: value}) == 2
    assert f"{variable}: must be a whole number" in capsys.readouterr().err
    assert fake.requests == []


async def test_whole_numbers_in_digits_are_deployed(fake: FakeVerda, deploy_env) -> None:
    overrides = {"VERDA_COMPUTE_SIZE": "1", "VERDA_MIN_REPLICAS": "0", "VERDA_MAX_REPLICAS": "10"}
    assert await deploy_main([], {**deploy_env, **overrides}) == 0
    assert fake.deployments[NAME].body["scaling"]["max_replica_count"] == 10
